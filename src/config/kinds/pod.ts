// config/kinds/pod.ts: translates a v1 Pod into a Workload. Only validation and shaping
// here; enrollment decisions belong to redirect/, and nothing here touches the network.

import {
  checkDataplaneMode,
  DNS1123_SUBDOMAIN_HINT,
  describe,
  isDns1123Subdomain,
  isIPAddress,
  isIPv4Address,
  isRecord,
  type FieldReader,
} from '../fields.js';
import { DEFAULT_SERVICE_ACCOUNT, type Workload } from '../model.js';
import type { KindTranslator, ObjectMeta } from './translator.js';

const PHASES = ['Pending', 'Running', 'Succeeded', 'Failed', 'Unknown'];

export const podTranslator: KindTranslator<'Pod'> = {
  kind: 'Pod',
  group: '',
  versions: ['v1'],
  namespaced: true,
  translate(r: FieldReader, meta: ObjectMeta): Workload {
    const namespace = meta.namespace!;
    const labels = r.stringMap(['metadata', 'labels']);
    const annotations = r.stringMap(['metadata', 'annotations']);
    checkDataplaneMode(r, annotations);

    const uid = r.string(['metadata', 'uid']) || `${namespace}/${meta.name}`;
    const hostNetwork = r.boolean(['spec', 'hostNetwork']) ?? false;

    const nodeName = r.string(['spec', 'nodeName'], { required: true }) ?? '';
    if (nodeName !== '' && !isDns1123Subdomain(nodeName)) {
      r.fail(['spec', 'nodeName'], `${JSON.stringify(nodeName)} ${DNS1123_SUBDOMAIN_HINT}`);
    }

    let serviceAccount = DEFAULT_SERVICE_ACCOUNT;
    let saPath = ['spec', 'serviceAccountName'];
    let sa = r.string(saPath);
    if (sa === undefined || sa === '') {
      // `serviceAccount` is the deprecated alias Kubernetes still accepts.
      saPath = ['spec', 'serviceAccount'];
      sa = r.string(saPath);
    }
    if (sa !== undefined && sa !== '') {
      if (isDns1123Subdomain(sa)) serviceAccount = sa;
      else r.fail(saPath, `${JSON.stringify(sa)} ${DNS1123_SUBDOMAIN_HINT}`);
    }

    const ip =
      r.string(
        ['status', 'podIP'],
        hostNetwork ? undefined : { required: true, hint: 'unless spec.hostNetwork is true' },
      ) ?? '';
    if (ip !== '' && !isIPv4Address(ip)) {
      r.fail(['status', 'podIP'], `${JSON.stringify(ip)} is not an IPv4 address`);
    }

    const ips: string[] = ip !== '' ? [ip] : [];
    const podIPs = r.list(['status', 'podIPs']) ?? [];
    podIPs.forEach((entry, i) => {
      if (!isRecord(entry)) {
        r.fail(['status', 'podIPs', i], `expected a map with "ip", got ${describe(entry)}`);
        return;
      }
      const v = r.string(['status', 'podIPs', i, 'ip'], { required: true });
      if (v === undefined) return;
      if (!isIPAddress(v)) {
        r.fail(['status', 'podIPs', i, 'ip'], `${JSON.stringify(v)} is not an IP address`);
      } else if (!ips.includes(v)) {
        ips.push(v);
      }
    });

    const phase = r.string(['status', 'phase']) ?? 'Running';
    if (!PHASES.includes(phase)) {
      r.fail(
        ['status', 'phase'],
        `${JSON.stringify(phase)} is not a pod phase (expected one of ${PHASES.join(', ')})`,
      );
    }

    return {
      uid,
      name: meta.name,
      namespace,
      nodeName,
      serviceAccount,
      ip,
      ips: Object.freeze(ips),
      labels,
      annotations,
      hostNetwork,
      phase,
    };
  },
};
