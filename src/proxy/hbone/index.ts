// proxy/hbone/: HBONE, the tunnel protocol between node proxies (wire-compatible with Istio's
// ztunnel): HTTP/2 CONNECT over mutual TLS 1.3 to <pod IP>:15008. The server terminates
// tunnels for local pods; the pool opens and reuses tunnels to remote ones. Certificates,
// peer verification, policy and upstream connects are injected by the caller.
// docs/hbone.md is the wire protocol.
export {
  CONNECTION_WINDOW_BYTES,
  HBONE_ALPN,
  HBONE_CIPHERSUITES,
  HBONE_PORT,
  HboneStatusError,
  HboneTunnelError,
  STREAM_WINDOW_BYTES,
  createHboneSecureContext,
  formatForwarded,
  parseForwardedFor,
  parseHostPort,
  type HboneContextOptions,
  type HboneErrorCode,
  type HboneLogger,
  type PeerVerdict,
  type VerifyPeer,
} from './protocol.js';
export { relayStream, resetSocket, type StreamRelayResult } from './relay.js';
export {
  DEFAULT_SERVER_TIMEOUTS,
  HboneServer,
  type AuthorizeVerdict,
  type HboneConnectionRejection,
  type HboneRequestInfo,
  type HboneServerObserver,
  type HboneServerOptions,
  type HboneServerStats,
  type HboneServerTimeouts,
  type HboneStreamRecord,
} from './server.js';
export {
  HboneClientConnection,
  connectTls,
  type DialSocket,
  type HboneConnectHeaders,
  type HboneDialOptions,
} from './client.js';
export {
  DEFAULT_POOL_OPTIONS,
  HbonePool,
  type HboneOpenRequest,
  type HbonePoolOptions,
  type HbonePoolStats,
} from './pool.js';
