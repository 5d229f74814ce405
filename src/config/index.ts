// config/: parses and validates cluster objects (Pods, Namespaces, Nodes, Services,
// EndpointSlices, Istio AuthorizationPolicies and PeerAuthentications) from its sources and
// publishes them through ConfigStore. It must not touch the kernel or the network, exit the
// process, or create a logger of its own.

export * from './model.js';
export * from './mesh-model.js';
export {
  ConfigError,
  formatFieldPath,
  type ConfigErrorInit,
  type FieldPath,
  type PathSegment,
} from './errors.js';
export { silentLogger, type Logger } from './logger.js';
export { TypedEmitter, type ListenerErrorHandler } from './emitter.js';
export { parseManifests, type ParsedDocument, type ParseResult } from './parse.js';
export {
  TRANSLATORS,
  translateDocument,
  translateRaw,
  type TranslateOptions,
  type TranslateResult,
} from './translate.js';
export type { KindTranslator, ObjectMeta } from './kinds/translator.js';
export {
  ConfigStore,
  changedObjects,
  stateObjects,
  type ConfigStoreEvents,
  type ConfigStoreOptions,
} from './store.js';
export {
  FileSource,
  loadPath,
  MANIFEST_EXTENSIONS,
  type FileSourceEvents,
  type FileSourceOptions,
  type LoadOptions,
  type LoadReport,
  type LoadResult,
} from './file-source.js';
