// config/kinds/namespace.ts: translates a v1 Namespace (and checks weft's dataplane-mode and
// outbound-policy annotations). Validation and shaping only.

import { alternatives, checkDataplaneMode, type FieldReader } from '../fields.js';
import { OUTBOUND_POLICIES, OUTBOUND_POLICY_ANNOTATION } from '../mesh-model.js';
import type { Namespace } from '../model.js';
import type { KindTranslator, ObjectMeta } from './translator.js';

export const namespaceTranslator: KindTranslator<'Namespace'> = {
  kind: 'Namespace',
  group: '',
  versions: ['v1'],
  namespaced: false,
  translate(r: FieldReader, meta: ObjectMeta): Namespace {
    const labels = r.stringMap(['metadata', 'labels']);
    const annotations = r.stringMap(['metadata', 'annotations']);
    checkDataplaneMode(r, annotations);
    const outbound = annotations[OUTBOUND_POLICY_ANNOTATION];
    if (outbound !== undefined && !OUTBOUND_POLICIES.includes(outbound)) {
      r.fail(
        ['metadata', 'annotations', OUTBOUND_POLICY_ANNOTATION],
        `${JSON.stringify(outbound)} is not an outbound policy (expected ${alternatives(OUTBOUND_POLICIES)}, or no annotation)`,
      );
    }
    return { name: meta.name, labels, annotations };
  },
};
