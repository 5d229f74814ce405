// config/kinds/node.ts: translates a v1 Node (name, IP addresses, labels for locality).
// Validation and shaping only.

import { describe, isIPAddress, isRecord, type FieldReader } from '../fields.js';
import type { Node } from '../model.js';
import type { KindTranslator, ObjectMeta } from './translator.js';

/** Address types that carry an IP, in the order weft prefers them. */
const IP_TYPES = ['InternalIP', 'ExternalIP'];

export const nodeTranslator: KindTranslator<'Node'> = {
  kind: 'Node',
  group: '',
  versions: ['v1'],
  namespaced: false,
  translate(r: FieldReader, meta: ObjectMeta): Node {
    const labels = r.stringMap(['metadata', 'labels']);
    const byType = new Map<string, string[]>(IP_TYPES.map((t) => [t, []]));
    const entries = r.list(['status', 'addresses']) ?? [];
    entries.forEach((entry, i) => {
      const at = ['status', 'addresses', i];
      if (!isRecord(entry)) {
        r.fail(at, `expected a map with "type" and "address", got ${describe(entry)}`);
        return;
      }
      const type = r.string([...at, 'type'], { required: true });
      const address = r.string([...at, 'address'], { required: true });
      if (type === undefined || address === undefined) return;
      const bucket = byType.get(type);
      if (bucket === undefined) return; // Hostname, InternalDNS, ExternalDNS: not IPs
      if (!isIPAddress(address)) {
        r.fail([...at, 'address'], `${JSON.stringify(address)} is not an IP address`);
        return;
      }
      if (!bucket.includes(address)) bucket.push(address);
    });
    const addresses = IP_TYPES.flatMap((t) => byType.get(t)!);
    return { name: meta.name, addresses: Object.freeze(addresses), labels };
  },
};
