// config/kinds/service.ts: translates a v1 Service (cluster IPs, ports, selector, traffic
// policy, weft's load-balancing and waypoint annotations). Validation and shaping only.

import {
  alternatives,
  DNS1123_LABEL_HINT,
  describe,
  isDns1123Label,
  isDns1123Subdomain,
  isIPAddress,
  isIPv4Address,
  isPortName,
  isPortNumber,
  isRecord,
  PORT_NAME_HINT,
  PORT_RANGE_HINT,
  type FieldReader,
} from '../fields.js';
import {
  DEFAULT_LOAD_BALANCING,
  LOAD_BALANCING_ANNOTATION,
  LOAD_BALANCINGS,
  USE_WAYPOINT_ANNOTATION,
  type LoadBalancing,
  type Service,
  type ServicePort,
} from '../mesh-model.js';
import type { FieldPath } from '../errors.js';
import type { KindTranslator, ObjectMeta } from './translator.js';
import { ownString } from '../strings.js';

const SERVICE_TYPES = ['ClusterIP', 'NodePort', 'LoadBalancer', 'ExternalName'];
export const PROTOCOLS = ['TCP', 'UDP', 'SCTP'] as const;
const TRAFFIC_POLICIES = ['Cluster', 'Local'] as const;

export const serviceTranslator: KindTranslator<'Service'> = {
  kind: 'Service',
  group: '',
  versions: ['v1'],
  namespaced: true,
  translate(r: FieldReader, meta: ObjectMeta): Service {
    const labels = r.stringMap(['metadata', 'labels']);
    const annotations = r.stringMap(['metadata', 'annotations']);
    const loadBalancing = readLoadBalancing(r, annotations);
    const waypoint = readWaypoint(r, annotations);

    const type = r.oneOf(['spec', 'type'], SERVICE_TYPES, 'a service type') ?? 'ClusterIP';
    const clusterIPs = type === 'ExternalName' ? [] : readClusterIPs(r);
    const ports = readPorts(r);
    const selector = r.stringMap(['spec', 'selector']);
    const internalTrafficPolicy =
      r.oneOf(['spec', 'internalTrafficPolicy'], TRAFFIC_POLICIES, 'a traffic policy') ?? 'Cluster';

    return {
      name: meta.name,
      namespace: meta.namespace!,
      labels,
      annotations,
      clusterIPs: Object.freeze(clusterIPs),
      ports: Object.freeze(ports),
      // Kubernetes drops an empty selector: the service's endpoints are managed by hand.
      ...(type !== 'ExternalName' && Object.keys(selector).length > 0 && { selector }),
      internalTrafficPolicy,
      loadBalancing,
      ...(waypoint !== undefined && { waypoint }),
    };
  },
};

function readLoadBalancing(
  r: FieldReader,
  annotations: Readonly<Record<string, string>>,
): LoadBalancing {
  const v = annotations[LOAD_BALANCING_ANNOTATION];
  if (v === undefined) return DEFAULT_LOAD_BALANCING;
  if (!(LOAD_BALANCINGS as readonly string[]).includes(v)) {
    r.fail(
      ['metadata', 'annotations', LOAD_BALANCING_ANNOTATION],
      `${JSON.stringify(v)} is not a load-balancing mode (expected ${alternatives(LOAD_BALANCINGS)})`,
    );
    return DEFAULT_LOAD_BALANCING;
  }
  return v as LoadBalancing;
}

/** A waypoint name, optionally `<namespace>/<name>`. */
function readWaypoint(
  r: FieldReader,
  annotations: Readonly<Record<string, string>>,
): string | undefined {
  const v = annotations[USE_WAYPOINT_ANNOTATION];
  if (v === undefined) return undefined;
  const slash = v.indexOf('/');
  const ok =
    slash < 0
      ? isDns1123Subdomain(v)
      : isDns1123Label(v.slice(0, slash)) && isDns1123Subdomain(v.slice(slash + 1));
  if (!ok) {
    r.fail(
      ['metadata', 'annotations', USE_WAYPOINT_ANNOTATION],
      `${JSON.stringify(v)} is not a waypoint name (a DNS-1123 subdomain, optionally prefixed by "<namespace>/")`,
    );
    return undefined;
  }
  return v;
}

/** spec.clusterIPs (or spec.clusterIP): IPv4 entries in order; IPv6 skipped; None: []. */
function readClusterIPs(r: FieldReader): string[] {
  const single = r.string(['spec', 'clusterIP']);
  const list = r.list(['spec', 'clusterIPs']);
  const entries: Array<{ path: FieldPath; value: unknown }> =
    list !== undefined
      ? list.map((value, i) => ({ path: ['spec', 'clusterIPs', i], value }))
      : single !== undefined
        ? [{ path: ['spec', 'clusterIP'], value: single }]
        : [];
  if (list !== undefined && single !== undefined && single !== '' && list[0] !== single) {
    r.fail(
      ['spec', 'clusterIP'],
      `${JSON.stringify(single)} must equal spec.clusterIPs[0] (${typeof list[0] === 'string' ? JSON.stringify(list[0]) : describe(list[0])})`,
    );
  }
  const out: string[] = [];
  for (const { path, value } of entries) {
    if (typeof value !== 'string') {
      r.fail(path, `expected a string, got ${describe(value)}`);
    } else if (value === 'None') {
      if (entries.length > 1) r.fail(path, '"None" (headless) must be the only cluster IP');
    } else if (value === '') {
      // not allocated yet (a manifest before the API server saw it)
    } else if (isIPv4Address(value)) {
      if (!out.includes(value)) out.push(ownString(value));
    } else if (!isIPAddress(value)) {
      r.fail(
        path,
        `${JSON.stringify(value)} is not an IP address (or "None" for a headless service)`,
      );
    } // IPv6: weft's data plane is IPv4 only
  }
  return out;
}

function readPorts(r: FieldReader): ServicePort[] {
  const entries = r.list(['spec', 'ports']) ?? [];
  const out: ServicePort[] = [];
  const names = new Map<string, number>();
  entries.forEach((entry, i) => {
    const at = ['spec', 'ports', i];
    if (!isRecord(entry)) {
      r.fail(at, `expected a map with "port", got ${describe(entry)}`);
      return;
    }
    const before = r.problems.length;
    const name = r.string([...at, 'name']) ?? '';
    if (name === '') {
      if (entries.length > 1) r.fail([...at, 'name'], 'required when a service has several ports');
    } else if (!isDns1123Label(name)) {
      r.fail([...at, 'name'], `${JSON.stringify(name)} ${DNS1123_LABEL_HINT}`);
    } else if (names.has(name)) {
      r.fail(
        [...at, 'name'],
        `${JSON.stringify(name)} is already used by spec.ports[${names.get(name)}]`,
      );
    } else {
      names.set(name, i);
    }
    const port = r.port([...at, 'port'], { required: true });
    const protocol = r.oneOf([...at, 'protocol'], PROTOCOLS, 'a protocol') ?? 'TCP';
    const targetPort = readTargetPort(r, [...at, 'targetPort'], port);
    const appProtocol = r.string([...at, 'appProtocol']);
    if (r.problems.length > before || port === undefined || targetPort === undefined) return;
    out.push(
      Object.freeze({
        name,
        port,
        targetPort,
        protocol,
        ...(appProtocol !== undefined && appProtocol !== '' && { appProtocol }),
      }),
    );
  });
  return out;
}

/** A port number or an IANA_SVC_NAME; the service port when absent (or 0, as Kubernetes). */
function readTargetPort(
  r: FieldReader,
  path: FieldPath,
  port: number | undefined,
): number | string | undefined {
  const v = r.get(path);
  if (v === undefined || v === 0 || v === '') return port;
  if (typeof v === 'number') {
    if (isPortNumber(v)) return v;
    r.fail(path, `${v} ${PORT_RANGE_HINT}`);
    return undefined;
  }
  if (typeof v === 'string') {
    if (isPortName(v)) return ownString(v);
    const hint = /^[0-9]+$/.test(v) ? '; write a port number without quotes' : '';
    r.fail(path, `${JSON.stringify(v)} ${PORT_NAME_HINT}${hint}`);
    return undefined;
  }
  r.fail(path, `expected a port number or name, got ${describe(v)}`);
  return undefined;
}
