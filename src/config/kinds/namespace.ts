// config/kinds/namespace.ts: translates a v1 Namespace. Validation and shaping only.

import { checkDataplaneMode, type FieldReader } from '../fields.js';
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
    return { name: meta.name, labels, annotations };
  },
};
