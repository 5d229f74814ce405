// config/kinds/istio.ts: what Istio's security kinds share: their API group and versions,
// and the workload selector. Validation and shaping only.

import type { FieldPath } from '../errors.js';
import type { FieldReader } from '../fields.js';

export const ISTIO_SECURITY_GROUP = 'security.istio.io';
/** v1 and v1beta1 have the same schema. */
export const ISTIO_SECURITY_VERSIONS: readonly string[] = ['v1', 'v1beta1'];

/**
 * `selector.matchLabels` at `path`. Undefined when absent or empty (Istio then applies the
 * policy to every workload in scope). Wildcards and empty keys are refused, as in Istio.
 */
export function readWorkloadSelector(
  r: FieldReader,
  path: FieldPath,
): Readonly<Record<string, string>> | undefined {
  if (r.map(path) === undefined) return undefined;
  r.onlyFields(path, ['matchLabels']);
  const at = [...path, 'matchLabels'];
  const labels = r.stringMap(at);
  for (const [k, v] of Object.entries(labels)) {
    if (k === '') r.fail([...at, k], 'a label key must not be empty');
    else if (k.includes('*')) r.fail([...at, k], 'wildcards are not allowed in label keys');
    else if (v.includes('*')) r.fail([...at, k], 'wildcards are not allowed in label values');
  }
  return Object.keys(labels).length > 0 ? labels : undefined;
}
