// The HBONE server: terminates tunnels that other node proxies (or ztunnels) open to a local
// pod's <ip>:15008. Per accepted socket: TLS 1.3 with the destination pod's certificate, peer
// verification before any HTTP/2 byte is read, then an HTTP/2 session whose CONNECT streams
// are checked, authorized, connected to the target and relayed. Certificates, verification,
// policy and the upstream connect are injected; this file owns only the protocol.
import http2, {
  type IncomingHttpHeaders,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from 'node:http2';
import type { Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import type { Endpoint } from '../flow.js';
import {
  CONNECTION_WINDOW_BYTES,
  HBONE_ALPN,
  MAX_HEADER_LIST_BYTES,
  SESSION_MEMORY_MB,
  STREAM_WINDOW_BYTES,
  handshakeProblem,
  headerValue,
  parseForwardedFor,
  parseHostPort,
  silentHboneLogger,
  stripMapped,
  type HboneLogger,
  type VerifyPeer,
} from './protocol.js';
import { keepAlive } from './keepalive.js';
import { relayStream, resetSocket } from './relay.js';
import { ReadBuffers } from '../socket-reader.js';

/** What authorize() and the observer learn about one CONNECT. */
export interface HboneRequestInfo {
  /** The client's SPIFFE ID, from its verified certificate. */
  readonly peerIdentity: string;
  /** The `:authority` of the CONNECT: where the client wants to go. */
  readonly target: Endpoint;
  /** `forwarded: for=` (port 0 when the header gave none); the original client. */
  readonly forwardedFor?: Endpoint;
  /** The TCP peer of the tunnel connection. */
  readonly tunnelSource: Endpoint;
  /** The address the tunnel was dialled on (a local pod's IP, port 15008). */
  readonly tunnelDestination: Endpoint;
  readonly traceparent?: string;
  readonly baggage?: string;
}

export type AuthorizeVerdict =
  | { readonly allow: true }
  | { readonly allow: false; readonly reason: string; readonly status?: 401 };

export interface HboneStreamRecord {
  readonly peerIdentity: string;
  readonly tunnelSource: Endpoint;
  readonly tunnelDestination: Endpoint;
  /** The raw `:authority` (also when it did not parse). */
  readonly authority: string;
  /** The parsed target; undefined when the request was malformed. */
  readonly target?: Endpoint;
  readonly forwardedFor?: Endpoint;
  readonly traceparent?: string;
  readonly baggage?: string;
  /** The `:status` answered: 200, 400, 401 or 503; 0 when the stream went away first. */
  readonly status: number;
  /** Bytes from the tunnel client delivered to the target. */
  readonly bytesIn: number;
  /** Bytes from the target sent back through the tunnel. */
  readonly bytesOut: number;
  /** Why the stream was refused or ended abnormally; undefined for a clean relay. */
  readonly reason?: string;
  readonly durationMs: number;
}

export interface HboneConnectionRejection {
  readonly tunnelSource: Endpoint;
  readonly tunnelDestination: Endpoint;
  readonly reason: string;
}

export interface HboneServerObserver {
  onStreamClosed?(record: HboneStreamRecord): void;
  /** A tunnel connection refused before HTTP/2 (no certificate, bad peer, timeout...). */
  onConnectionRejected?(rejection: HboneConnectionRejection): void;
}

export interface HboneServerTimeouts {
  /** TCP accept to verified peer. */
  readonly handshakeMs: number;
  /** Verified peer to its first CONNECT. */
  readonly firstStreamMs: number;
  /** No open stream for this long closes the connection (GOAWAY). Longer than the pool's. */
  readonly idleMs: number;
  readonly pingIntervalMs: number;
  readonly pingTimeoutMs: number;
}

export const DEFAULT_SERVER_TIMEOUTS: HboneServerTimeouts = {
  handshakeMs: 10_000,
  firstStreamMs: 10_000,
  idleMs: 10 * 60_000,
  pingIntervalMs: 10_000,
  pingTimeoutMs: 20_000,
};

export interface HboneServerOptions {
  /** The secure context of the local pod owning `ip`; undefined when there is none. */
  contextForLocalAddress(ip: string): SecureContext | undefined;
  /** Verifies the client certificate (chain, SPIFFE rules) and names the peer. */
  readonly verifyPeer: VerifyPeer;
  authorize(request: HboneRequestInfo): AuthorizeVerdict | Promise<AuthorizeVerdict>;
  /**
   * Connects to the target. `clientAddress` is the original client (`forwarded: for` when
   * given, else the tunnel's TCP peer), for a transparent source bind. Rejection -> 503.
   */
  connectTarget(
    target: Endpoint,
    clientAddress: Endpoint,
    request: HboneRequestInfo,
  ): Promise<Socket>;
  readonly observer?: HboneServerObserver;
  readonly logger?: HboneLogger;
  readonly timeouts?: Partial<HboneServerTimeouts>;
  /** SETTINGS_MAX_CONCURRENT_STREAMS announced to clients (ztunnel: 200). */
  readonly maxConcurrentStreams?: number;
  /** Read buffers shared with the rest of the proxy (the server makes its own without). */
  readonly readBuffers?: ReadBuffers;
}

export interface HboneServerStats {
  /** Verified connections with a live HTTP/2 session. */
  readonly connections: number;
  /** Streams being set up or relayed. */
  readonly streams: number;
  /** TLS handshakes completed (before peer verification). */
  readonly handshakes: number;
  /** Connections refused before HTTP/2. */
  readonly rejected: number;
  /** CONNECT requests received. */
  readonly requests: number;
}

interface ServerConnection {
  readonly tls: TLSSocket;
  session?: ServerHttp2Session;
  streams: number;
}

export class HboneServer {
  private readonly timeouts: HboneServerTimeouts;
  private readonly logger: HboneLogger;
  private readonly connections = new Set<ServerConnection>();
  private counters = { handshakes: 0, rejected: 0, requests: 0, streams: 0 };
  private closing = false;

  private readonly readBuffers: ReadBuffers;

  constructor(private readonly options: HboneServerOptions) {
    this.timeouts = { ...DEFAULT_SERVER_TIMEOUTS, ...options.timeouts };
    this.logger = options.logger ?? silentHboneLogger;
    this.readBuffers = options.readBuffers ?? new ReadBuffers();
  }

  /**
   * Takes an accepted TCP socket whose local address is the pod IP the peer dialled. Call it
   * from the listener's 'connection' event, before any data is read from the socket.
   */
  handle = (socket: Socket): void => {
    const tunnelDestination = endpointOf(socket.localAddress, socket.localPort);
    const tunnelSource = endpointOf(socket.remoteAddress, socket.remotePort);
    socket.on('error', () => socket.destroy());
    if (this.closing) {
      socket.destroy();
      return;
    }
    let rejected = false;
    const reject = (reason: string) => {
      if (rejected) return;
      rejected = true;
      this.counters.rejected++;
      this.logger.debug({ tunnelSource, tunnelDestination, reason }, 'hbone connection refused');
      this.options.observer?.onConnectionRejected?.({ tunnelSource, tunnelDestination, reason });
    };
    const context = this.options.contextForLocalAddress(tunnelDestination.ip);
    if (!context) {
      socket.destroy();
      reject(`no local pod owns ${tunnelDestination.ip}`);
      return;
    }
    socket.setNoDelay(true);
    // With no SNI, Node never calls SNICallback: wrapping the socket ourselves is the only way
    // to pick the certificate by the dialled address. Protocol limits live in the context
    // (createHboneSecureContext) and are re-checked after the handshake.
    const tls = new TLSSocket(socket, {
      isServer: true,
      secureContext: context,
      requestCert: true,
      rejectUnauthorized: false,
      ALPNProtocols: [HBONE_ALPN],
    });
    const connection: ServerConnection = { tls, streams: 0 };
    this.connections.add(connection);
    let secure = false;
    const timer = setTimeout(() => {
      reject('TLS handshake timeout');
      tls.destroy();
    }, this.timeouts.handshakeMs);
    tls.on('error', (error: NodeJS.ErrnoException) => {
      if (!secure) reject(`TLS: ${error.code ?? error.message}`);
      tls.destroy();
    });
    tls.once('close', () => {
      clearTimeout(timer);
      if (!secure) reject('closed during the TLS handshake');
      this.connections.delete(connection);
      socket.destroy();
    });
    tls.once('secure', () => {
      secure = true;
      clearTimeout(timer);
      this.counters.handshakes++;
      const verdict = this.checkPeer(tls);
      if (verdict.ok) {
        this.startSession(connection, verdict.identity, tunnelSource, tunnelDestination);
      } else {
        reject(verdict.reason);
        // Nothing the client sent after its Finished (the HTTP/2 preface) has been read.
        tls.destroy();
      }
    });
  };

  stats(): HboneServerStats {
    let connections = 0;
    for (const c of this.connections) if (c.session) connections++;
    return {
      connections,
      streams: this.counters.streams,
      handshakes: this.counters.handshakes,
      rejected: this.counters.rejected,
      requests: this.counters.requests,
    };
  }

  /**
   * Stops taking connections, sends GOAWAY on every session so clients dial elsewhere, waits
   * up to `graceMs` for streams to finish, then destroys what is left.
   */
  async close(graceMs = 0): Promise<void> {
    this.closing = true;
    for (const c of this.connections) {
      if (c.session && !c.session.closed) c.session.close();
      else if (!c.session) c.tls.destroy();
    }
    const deadline = Date.now() + graceMs;
    while (this.connections.size > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(50, graceMs)));
    }
    for (const c of this.connections) {
      c.session?.destroy();
      c.tls.destroy();
    }
    this.connections.clear();
  }

  private checkPeer(
    tls: TLSSocket,
  ): { ok: true; identity: string } | { ok: false; reason: string } {
    const problem = handshakeProblem(tls);
    if (problem) return { ok: false, reason: problem };
    // Not getPeerX509Certificate(): on a Node 20 server socket, calling it first leaves
    // getPeerCertificate(true) without the peer's intermediates, and the chain then fails.
    if (Object.keys(tls.getPeerCertificate()).length === 0) {
      return { ok: false, reason: 'no client certificate' };
    }
    let verdict;
    try {
      verdict = this.options.verifyPeer(tls);
    } catch (error) {
      return { ok: false, reason: `peer verification threw: ${String(error)}` };
    }
    return verdict.ok ? verdict : { ok: false, reason: `peer refused: ${verdict.reason}` };
  }

  private startSession(
    connection: ServerConnection,
    peerIdentity: string,
    tunnelSource: Endpoint,
    tunnelDestination: Endpoint,
  ): void {
    const { tls } = connection;
    // Node quirk: only tls.Server clears `secureConnecting` on a server-side socket. Left true
    // on our bare TLSSocket, http2 would wait for a 'secureConnect' that never comes (a client
    // event) and the session would never start.
    (tls as TLSSocket & { secureConnecting: boolean }).secureConnecting = false;
    const session = http2.performServerHandshake(tls, {
      maxSessionMemory: SESSION_MEMORY_MB,
      settings: {
        initialWindowSize: STREAM_WINDOW_BYTES,
        maxConcurrentStreams: this.options.maxConcurrentStreams ?? 200,
        maxHeaderListSize: MAX_HEADER_LIST_BYTES,
        enablePush: false,
      },
    });
    connection.session = session;
    // The connection window is not a SETTING: raise it with a WINDOW_UPDATE on stream 0.
    session.setLocalWindowSize(CONNECTION_WINDOW_BYTES);
    this.logger.debug({ peerIdentity, tunnelSource, tunnelDestination }, 'hbone connection');

    // One lazily re-armed timer rather than a clearTimeout + setTimeout per stream (a pooled
    // tunnel carries one stream per proxied connection). On expiry it re-arms for what is
    // left of the idle period if streams came and went meanwhile.
    let idleTimer: NodeJS.Timeout | undefined;
    let idleSince: number | undefined = Date.now();
    let idleLimitMs = this.timeouts.firstStreamMs;
    const onIdleTimer = () => {
      idleTimer = undefined;
      if (idleSince === undefined || session.closed) return;
      const left = idleSince + idleLimitMs - Date.now();
      if (left > 0) {
        idleTimer = setTimeout(onIdleTimer, left);
        return;
      }
      this.logger.debug({ peerIdentity, tunnelSource }, 'hbone connection idle, closing');
      session.close();
      // A peer that ignores the GOAWAY and keeps no stream open is cut after a grace time.
      setTimeout(() => session.destroy(), 5000).unref();
    };
    idleTimer = setTimeout(onIdleTimer, idleLimitMs);
    const stopPing = keepAlive(session, this.timeouts, () => {
      this.logger.debug({ peerIdentity, tunnelSource }, 'hbone ping timeout');
    });

    session.on('error', (error: NodeJS.ErrnoException) => {
      this.logger.debug(
        { peerIdentity, error: error.code ?? error.message },
        'hbone session error',
      );
    });
    session.once('close', () => {
      clearTimeout(idleTimer);
      stopPing();
      connection.session = undefined;
      this.connections.delete(connection);
      tls.destroy();
    });
    session.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
      connection.streams++;
      this.counters.streams++;
      this.counters.requests++;
      idleSince = undefined;
      idleLimitMs = this.timeouts.idleMs;
      stream.once('close', () => {
        connection.streams--;
        this.counters.streams--;
        if (connection.streams > 0 || session.closed) return;
        idleSince = Date.now();
        idleTimer ??= setTimeout(onIdleTimer, idleLimitMs);
      });
      this.serveStream(stream, headers, peerIdentity, tunnelSource, tunnelDestination);
    });
  }

  private serveStream(
    stream: ServerHttp2Stream,
    headers: IncomingHttpHeaders,
    peerIdentity: string,
    tunnelSource: Endpoint,
    tunnelDestination: Endpoint,
  ): void {
    const startedAt = Date.now();
    const authority = headerValue(headers[':authority']) ?? '';
    const forwardedFor = parseForwardedFor(headers['forwarded']);
    const traceparent = headerValue(headers['traceparent']);
    const baggage = headerValue(headers['baggage']);
    stream.on('error', () => {});
    let bytesIn = 0;
    let bytesOut = 0;
    let finished = false;
    const finish = (status: number, reason: string | undefined, target?: Endpoint) => {
      if (finished) return;
      finished = true;
      const record: HboneStreamRecord = {
        peerIdentity,
        tunnelSource,
        tunnelDestination,
        authority,
        target,
        forwardedFor,
        traceparent,
        baggage,
        status,
        bytesIn,
        bytesOut,
        reason,
        durationMs: Date.now() - startedAt,
      };
      this.logger.debug(record, 'hbone stream closed');
      this.options.observer?.onStreamClosed?.(record);
    };
    const refuse = (status: 400 | 401 | 503, reason: string, target?: Endpoint) => {
      if (!stream.destroyed && !stream.closed) {
        stream.respond({ ':status': status }, { endStream: true });
        // Whatever the client still sends is not wanted; its END_STREAM or our reset closes it.
        stream.resume();
      }
      finish(status, reason, target);
    };
    const method = headerValue(headers[':method']);
    if (method !== 'CONNECT') {
      refuse(400, `method ${method ?? 'none'} is not CONNECT`);
      return;
    }
    const target = parseHostPort(authority);
    if (!target || headers[':path'] !== undefined || headers[':scheme'] !== undefined) {
      refuse(400, `malformed CONNECT authority ${JSON.stringify(authority)}`);
      return;
    }
    if (target.ip !== tunnelDestination.ip) {
      refuse(
        400,
        `authority ${target.ip} is not the dialled address ${tunnelDestination.ip}`,
        target,
      );
      return;
    }
    const info: HboneRequestInfo = {
      peerIdentity,
      target,
      forwardedFor,
      tunnelSource,
      tunnelDestination,
      traceparent,
      baggage,
    };
    // Nothing is read from the stream before the 200: the client must wait for it anyway.
    stream.pause();
    let gone = false;
    let relaying = false;
    stream.once('close', () => {
      gone = true;
      if (!finished && !relaying) finish(0, 'stream closed before the answer', target);
    });
    void (async () => {
      let verdict: AuthorizeVerdict;
      try {
        verdict = await this.options.authorize(info);
      } catch (error) {
        verdict = { allow: false, reason: `authorization failed: ${String(error)}` };
      }
      if (gone) return;
      if (!verdict.allow) {
        refuse(verdict.status ?? 401, verdict.reason, target);
        return;
      }
      let upstream: Socket;
      try {
        upstream = await this.options.connectTarget(target, forwardedFor ?? tunnelSource, info);
      } catch (error) {
        refuse(503, `target connect failed: ${errorText(error)}`, target);
        return;
      }
      if (gone) {
        resetSocket(upstream);
        return;
      }
      relaying = true;
      upstream.setNoDelay(true);
      stream.respond({ ':status': 200 });
      const result = await relayStream(stream, upstream, this.readBuffers);
      bytesIn = result.fromStream;
      bytesOut = result.fromSocket;
      finish(200, result.error, target);
    })();
  }
}

function endpointOf(address: string | undefined, port: number | undefined): Endpoint {
  return { ip: stripMapped(address ?? ''), port: port ?? 0 };
}

function errorText(error: unknown): string {
  if (error && typeof error === 'object') {
    const e = error as { code?: unknown; message?: unknown };
    if (typeof e.code === 'string') return e.code;
    if (typeof e.message === 'string') return e.message;
  }
  return String(error);
}
