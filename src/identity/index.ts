// identity/: SPIFFE workload identities for the node proxy: SPIFFE IDs, the embedded CA's
// files (Istio `cacerts` layout), X.509-SVID minting, per-trust-domain bundles, peer
// validation and the per-node certificate manager. It is handed workloads (namespace, service
// account) and trust material; it must not open sockets, touch the kernel, or read config
// sources (the --ca directory is the only thing it reads).
//
// index.ts: the public surface of identity/; nothing else.

export * from './spiffe.js';
export {
  BACKDATE_MS,
  CA_FILES,
  CaError,
  initCa,
  loadIssuer,
  type CaErrorCode,
  type CertSummary,
  type InitCaOptions,
  type InitCaResult,
  type Issuer,
  type LoadIssuerOptions,
} from './ca.js';
export { mintSvid, type MintSvidOptions, type Svid } from './svid.js';
export { TrustBundles } from './trust.js';
export {
  MAX_CHAIN_LENGTH,
  chainFromPeerCertificate,
  chainFromX509,
  peerChain,
  validatePeer,
  type PeerValidation,
} from './validate.js';
export * from './manager.js';
