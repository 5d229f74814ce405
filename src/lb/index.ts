// lb/ picks endpoints; it must not open sockets or read config sources (it is handed
// services/endpoints/nodes).
//
// index.ts: the public surface of lb/; nothing else.

export * from './endpoints.js';
export * from './balancer.js';
export { defaultRandom, seededRandom, weightedIndex, type Random } from './random.js';
export { ServiceResolver, type ClusterView, type Resolved } from './resolver.js';
