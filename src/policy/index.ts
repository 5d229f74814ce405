// policy/: L4 authorization at the node proxy with Istio semantics (AuthorizationPolicy,
// PeerAuthentication). policy/ decides allow/deny from a connection's facts and the policies;
// it must not do I/O, hold sockets, or log per connection (it returns reasons; callers log).

export {
  DEFAULT_ROOT_NAMESPACE,
  DEFAULT_TRUST_DOMAIN,
  PolicyEngine,
  type ConnectionFacts,
  type Decision,
  type PolicyNote,
  type PolicyOptions,
  type RebuildReport,
} from './engine.js';
export type { EffectiveMtlsMode } from './peer-auth.js';
export { parseCidr, parseIp, cidrContains, type Cidr, type Ip } from './ip.js';
