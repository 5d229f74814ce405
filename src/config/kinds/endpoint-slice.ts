// config/kinds/endpoint-slice.ts: translates a discovery.k8s.io/v1 EndpointSlice (its
// Service, endpoints with their conditions and locality, ports). Validation and shaping only.
//
// Kubernetes defaults applied here: a missing `ready` condition is true, a missing `serving`
// equals `ready`, a missing `terminating` is false; an unnamed port is named ''. A port entry
// without `port` means "all ports" in Kubernetes; weft cannot forward to that, so the entry is
// left out of `ports` (not an error).

import { isIP } from 'node:net';
import {
  DNS1123_LABEL_HINT,
  DNS1123_SUBDOMAIN_HINT,
  describe,
  isDns1123Label,
  isDns1123Subdomain,
  isIPv4Address,
  isRecord,
  type FieldReader,
} from '../fields.js';
import {
  SERVICE_NAME_LABEL,
  type Endpoint,
  type EndpointPort,
  type EndpointSlice,
} from '../mesh-model.js';
import { PROTOCOLS } from './service.js';
import type { KindTranslator, ObjectMeta } from './translator.js';

const ADDRESS_TYPES = ['IPv4', 'IPv6', 'FQDN'] as const;
type AddressType = (typeof ADDRESS_TYPES)[number];

const ADDRESS_CHECKS: { readonly [T in AddressType]: (s: string) => string | undefined } = {
  IPv4: (s) => (isIPv4Address(s) ? undefined : `${JSON.stringify(s)} is not an IPv4 address`),
  IPv6: (s) => (isIP(s) === 6 ? undefined : `${JSON.stringify(s)} is not an IPv6 address`),
  FQDN: (s) => (isDns1123Subdomain(s) ? undefined : `${JSON.stringify(s)} is not a host name`),
};

export const endpointSliceTranslator: KindTranslator<'EndpointSlice'> = {
  kind: 'EndpointSlice',
  group: 'discovery.k8s.io',
  versions: ['v1'],
  namespaced: true,
  translate(r: FieldReader, meta: ObjectMeta): EndpointSlice {
    const labelsPath = ['metadata', 'labels'];
    const before = r.problems.length;
    const labels = r.stringMap(labelsPath);
    const serviceName = labels[SERVICE_NAME_LABEL] ?? '';
    if (serviceName === '') {
      if (r.problems.length === before) {
        r.fail(
          [...labelsPath, SERVICE_NAME_LABEL],
          'required (the name of the Service these endpoints belong to)',
        );
      }
    } else if (!isDns1123Label(serviceName)) {
      r.fail(
        [...labelsPath, SERVICE_NAME_LABEL],
        `${JSON.stringify(serviceName)} ${DNS1123_LABEL_HINT}`,
      );
    }

    let addressType = r.oneOf(['addressType'], ADDRESS_TYPES, 'an address type');
    if (addressType === undefined && r.get(['addressType']) === undefined) {
      r.fail(['addressType'], `required (${ADDRESS_TYPES.join(', ')})`);
    }
    addressType ??= 'IPv4';

    const endpoints: Endpoint[] = [];
    (r.list(['endpoints']) ?? []).forEach((entry, i) => {
      const e = readEndpoint(r, i, entry, addressType);
      if (e !== undefined) endpoints.push(e);
    });

    const ports: EndpointPort[] = [];
    (r.list(['ports']) ?? []).forEach((entry, i) => {
      const at = ['ports', i];
      if (!isRecord(entry)) {
        r.fail(at, `expected a map with "port", got ${describe(entry)}`);
        return;
      }
      const name = r.string([...at, 'name']) ?? '';
      if (name !== '' && !isDns1123Label(name)) {
        r.fail([...at, 'name'], `${JSON.stringify(name)} ${DNS1123_LABEL_HINT}`);
      }
      const port = r.port([...at, 'port']);
      const protocol = r.oneOf([...at, 'protocol'], PROTOCOLS, 'a protocol') ?? 'TCP';
      r.string([...at, 'appProtocol']);
      if (port !== undefined) ports.push(Object.freeze({ name, port, protocol }));
    });

    return {
      name: meta.name,
      namespace: meta.namespace!,
      serviceName,
      addressType,
      ports: Object.freeze(ports),
      endpoints: Object.freeze(endpoints),
    };
  },
};

function readEndpoint(
  r: FieldReader,
  i: number,
  entry: unknown,
  addressType: AddressType,
): Endpoint | undefined {
  const at = ['endpoints', i];
  if (!isRecord(entry)) {
    r.fail(at, `expected a map with "addresses", got ${describe(entry)}`);
    return undefined;
  }
  const addresses = r.stringList([...at, 'addresses'], ADDRESS_CHECKS[addressType]);
  if (addresses === undefined) r.fail([...at, 'addresses'], 'required');
  else if (addresses.length === 0 && r.list([...at, 'addresses'])?.length === 0) {
    r.fail([...at, 'addresses'], 'must hold at least one address');
  }

  r.map([...at, 'conditions']);
  const ready = r.boolean([...at, 'conditions', 'ready']) ?? true;
  const serving = r.boolean([...at, 'conditions', 'serving']) ?? ready;
  const terminating = r.boolean([...at, 'conditions', 'terminating']) ?? false;

  const nodeName = r.string([...at, 'nodeName']);
  if (nodeName !== undefined && nodeName !== '' && !isDns1123Subdomain(nodeName)) {
    r.fail([...at, 'nodeName'], `${JSON.stringify(nodeName)} ${DNS1123_SUBDOMAIN_HINT}`);
  }
  const zone = r.string([...at, 'zone']);

  let targetRef: Endpoint['targetRef'];
  if (r.map([...at, 'targetRef']) !== undefined) {
    const kind = r.string([...at, 'targetRef', 'kind'], { required: true });
    const name = r.string([...at, 'targetRef', 'name'], { required: true });
    const namespace = r.string([...at, 'targetRef', 'namespace']);
    if (kind !== undefined && name !== undefined) {
      targetRef = Object.freeze({
        kind,
        ...(namespace !== undefined && namespace !== '' && { namespace }),
        name,
      });
    }
  }

  return Object.freeze({
    addresses: addresses ?? [],
    ready,
    serving,
    terminating,
    ...(nodeName !== undefined && nodeName !== '' && { nodeName }),
    ...(zone !== undefined && zone !== '' && { zone }),
    ...(targetRef !== undefined && { targetRef }),
  });
}
