// config/kinds/translator.ts: the contract every per-kind translator implements. A translator
// turns one raw object (already identified: kind, name, namespace) into its model type,
// recording problems on the FieldReader; it must not log, keep state, or see other objects.

import type { FieldReader } from '../fields.js';
import type { Kind, KindMap } from '../model.js';

export interface ObjectMeta {
  readonly name: string;
  /** Set for namespaced kinds (defaulted to `default`). */
  readonly namespace?: string;
}

export interface KindTranslator<K extends Kind> {
  readonly kind: K;
  /** API group: '' for the core group. */
  readonly group: string;
  /** Accepted versions within the group (e.g. ['v1']). */
  readonly versions: readonly string[];
  readonly namespaced: boolean;
  /** The translated value. Only used when the reader recorded no problem. */
  translate(r: FieldReader, meta: ObjectMeta): KindMap[K];
}
