// The HBONE client end of one tunnel connection: TCP to <pod IP>:15008, TLS 1.3 with the
// source workload's certificate and no SNI, the server's identity checked before any HTTP/2
// byte is sent, then an HTTP/2 session carrying CONNECT streams. Pooling is pool.ts's job.
import http2, { type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import { Socket, connect as netConnect } from 'node:net';
import { connect as tlsConnect, type SecureContext, type TLSSocket } from 'node:tls';
import type { Endpoint } from '../flow.js';
import {
  CONNECTION_WINDOW_BYTES,
  H2_CANCEL,
  H2_NO_ERROR,
  H2_REFUSED_STREAM,
  HBONE_ALPN,
  HBONE_PORT,
  HboneStatusError,
  HboneTunnelError,
  MAX_HEADER_LIST_BYTES,
  SESSION_MEMORY_MB,
  STREAM_WINDOW_BYTES,
  formatForwarded,
  formatHostPort,
  handshakeProblem,
  type VerifyPeer,
} from './protocol.js';
import { keepAlive } from './keepalive.js';

/** Opens the TCP connection to the peer (e.g. bound to a transparent source address). */
export type DialSocket = (
  destinationIp: string,
  port: number,
  localAddress?: string,
) => Promise<Socket>;

export interface HboneDialOptions {
  readonly destinationIp: string;
  readonly port?: number;
  readonly localAddress?: string;
  /** The source workload's certificate and key (see createHboneSecureContext). */
  readonly sourceContext: SecureContext;
  /** The SPIFFE ID(s) the destination may present; anything else is a MITM. */
  readonly expectedServerIdentity: string | readonly string[];
  readonly verifyServer: VerifyPeer;
  /** TCP connect + TLS handshake + verification. */
  readonly connectTimeoutMs?: number;
  readonly pingIntervalMs?: number;
  readonly pingTimeoutMs?: number;
  readonly dialSocket?: DialSocket;
}

export interface HboneConnectHeaders {
  readonly target: Endpoint;
  /** The original client, `ip:port` (`[ip6]:port`); sent as `forwarded: for="..."`. */
  readonly forwardedFor: string;
  readonly traceparent?: string;
  readonly baggage?: string;
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
export const DEFAULT_PING_INTERVAL_MS = 10_000;
export const DEFAULT_PING_TIMEOUT_MS = 20_000;

/** Resolves with a verified TLS socket to the peer, or rejects with HboneTunnelError. */
export function connectTls(
  options: HboneDialOptions,
): Promise<{ tls: TLSSocket; identity: string }> {
  const port = options.port ?? HBONE_PORT;
  const where = formatHostPort(options.destinationIp, port);
  const timeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    let settled = false;
    let raw: Socket | undefined;
    let tls: TLSSocket | undefined;
    const fail = (error: HboneTunnelError) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      tls?.destroy();
      raw?.destroy();
      reject(error);
    };
    const timer = setTimeout(
      () => fail(new HboneTunnelError('TIMEOUT', `HBONE connect to ${where} timed out`)),
      timeoutMs,
    );
    const dial = options.dialSocket ?? defaultDial;
    dial(options.destinationIp, port, options.localAddress).then(
      (socket) => {
        raw = socket;
        if (settled) {
          socket.destroy();
          return;
        }
        socket.setNoDelay(true);
        tls = tlsConnect({
          socket,
          secureContext: options.sourceContext,
          ALPNProtocols: [HBONE_ALPN],
          // No SNI: Node sends none for an empty servername (or an IP host). The server
          // picks its certificate by the address we dialled.
          servername: '',
          // The chain and SPIFFE ID are checked below, against the right trust bundle.
          rejectUnauthorized: false,
        });
        tls.on('error', (error: NodeJS.ErrnoException) => {
          fail(
            new HboneTunnelError(
              'TLS',
              `HBONE TLS to ${where} failed: ${error.code ?? error.message}`,
              {
                cause: error,
              },
            ),
          );
        });
        tls.once('close', () =>
          fail(new HboneTunnelError('CLOSED', `HBONE peer ${where} closed during TLS`)),
        );
        tls.once('secureConnect', () => {
          const t = tls!;
          const problem = handshakeProblem(t);
          if (problem) {
            fail(new HboneTunnelError('PROTOCOL', `HBONE peer ${where}: ${problem}`));
            return;
          }
          let verdict;
          try {
            verdict = options.verifyServer(t);
          } catch (error) {
            verdict = { ok: false as const, reason: `verification threw: ${String(error)}` };
          }
          if (!verdict.ok) {
            fail(
              new HboneTunnelError('IDENTITY', `HBONE peer ${where} refused: ${verdict.reason}`),
            );
            return;
          }
          const expected = expectedList(options.expectedServerIdentity);
          if (!expected.includes(verdict.identity)) {
            fail(
              new HboneTunnelError(
                'IDENTITY',
                `HBONE peer ${where} is ${verdict.identity}, expected ${expected.join(' or ')}`,
              ),
            );
            return;
          }
          settled = true;
          clearTimeout(timer);
          t.removeAllListeners('error');
          t.removeAllListeners('close');
          resolve({ tls: t, identity: verdict.identity });
        });
      },
      (error: NodeJS.ErrnoException) =>
        fail(
          new HboneTunnelError(
            'CONNECT',
            `HBONE connect to ${where} failed: ${error.code ?? error.message}`,
            {
              cause: error,
            },
          ),
        ),
    );
  });
}

function defaultDial(destinationIp: string, port: number, localAddress?: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host: destinationIp, port, localAddress });
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.removeListener('error', reject);
      resolve(socket);
    });
  });
}

export function expectedList(expected: string | readonly string[]): readonly string[] {
  return typeof expected === 'string' ? [expected] : expected;
}

/**
 * One verified HBONE connection and its HTTP/2 session. `onClosed` runs once when the
 * session is gone (GOAWAY received counts: no new stream may use it).
 */
export class HboneClientConnection {
  /** Streams reserved or open on this connection (the pool's counter). */
  streams = 0;
  /** Set once a GOAWAY arrived or the session closed: take no new streams. */
  draining = false;
  private closedCallbacks: (() => void)[] = [];
  private stopPing: () => void;

  private constructor(
    readonly session: ClientHttp2Session,
    readonly tls: TLSSocket,
    readonly serverIdentity: string,
    timing: { pingIntervalMs: number; pingTimeoutMs: number },
  ) {
    this.stopPing = keepAlive(session, timing, () => {});
    session.on('error', () => {});
    session.once('goaway', () => {
      this.draining = true;
      this.fireClosed();
    });
    session.once('close', () => {
      this.draining = true;
      this.stopPing();
      tls.destroy();
      this.fireClosed();
    });
  }

  /** Dials, verifies and starts HTTP/2; rejects with HboneTunnelError. */
  static async dial(options: HboneDialOptions): Promise<HboneClientConnection> {
    const { tls, identity } = await connectTls(options);
    const where = formatHostPort(options.destinationIp, options.port ?? HBONE_PORT);
    const session = http2.connect(`https://${where}`, {
      createConnection: () => tls,
      maxSessionMemory: SESSION_MEMORY_MB,
      settings: {
        initialWindowSize: STREAM_WINDOW_BYTES,
        maxHeaderListSize: MAX_HEADER_LIST_BYTES,
        enablePush: false,
      },
    });
    session.on('error', () => {});
    session.setLocalWindowSize(CONNECTION_WINDOW_BYTES);
    return new HboneClientConnection(session, tls, identity, {
      pingIntervalMs: options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS,
      pingTimeoutMs: options.pingTimeoutMs ?? DEFAULT_PING_TIMEOUT_MS,
    });
  }

  get usable(): boolean {
    return !this.draining && !this.session.closed && !this.session.destroyed;
  }

  /** The peer's SETTINGS_MAX_CONCURRENT_STREAMS, once its SETTINGS arrived. */
  get peerMaxStreams(): number | undefined {
    return this.session.remoteSettings.maxConcurrentStreams;
  }

  onClosed(callback: () => void): void {
    if (this.draining) callback();
    else this.closedCallbacks.push(callback);
  }

  /**
   * Sends a CONNECT; resolves with the stream once `:status` 200 arrives. Anything else
   * rejects: HboneStatusError for another status, HboneTunnelError when the stream or the
   * session goes away first (retryable if the server never processed it).
   */
  connect(headers: HboneConnectHeaders, timeoutMs: number): Promise<ClientHttp2Stream> {
    const authority = formatHostPort(headers.target.ip, headers.target.port);
    return new Promise((resolve, reject) => {
      let stream: ClientHttp2Stream;
      try {
        const h: http2.OutgoingHttpHeaders = {
          ':method': 'CONNECT',
          ':authority': authority,
          forwarded: formatForwarded(headers.forwardedFor),
        };
        if (headers.traceparent) h['traceparent'] = headers.traceparent;
        if (headers.baggage) h['baggage'] = headers.baggage;
        stream = this.session.request(h, { endStream: false });
      } catch (error) {
        reject(
          new HboneTunnelError('CLOSED', `HBONE session unusable for ${authority}`, {
            cause: error,
            retryable: true,
          }),
        );
        return;
      }
      let settled = false;
      const fail = (error: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (!stream.closed && !stream.destroyed) stream.close(H2_CANCEL);
        reject(error);
      };
      const timer = setTimeout(
        () => fail(new HboneTunnelError('TIMEOUT', `HBONE CONNECT ${authority} got no answer`)),
        timeoutMs,
      );
      stream.on('error', (error: NodeJS.ErrnoException) => {
        if (settled) return;
        fail(
          new HboneTunnelError(
            'RESET',
            `HBONE CONNECT ${authority} failed: ${error.code ?? error.message}`,
            {
              cause: error,
              retryable: error.code === 'ERR_HTTP2_GOAWAY_SESSION',
            },
          ),
        );
      });
      stream.once('close', () => {
        // Every stream closes; only one closing before its answer is an error worth building.
        if (settled) return;
        const code = stream.rstCode ?? H2_NO_ERROR;
        fail(
          new HboneTunnelError(
            'CLOSED',
            `HBONE CONNECT ${authority} closed before an answer (code ${code})`,
            {
              retryable: code === H2_REFUSED_STREAM,
            },
          ),
        );
      });
      stream.once('response', (responseHeaders) => {
        const status = Number(responseHeaders[':status']);
        if (status === 200) {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          // Our error listener stays (a no-op from now on), so an error before the caller
          // listens cannot crash the process; relayStream reports errors itself.
          resolve(stream);
          return;
        }
        // Drain the (empty) body so the stream can close, then make sure it does.
        stream.resume();
        fail(new HboneStatusError(status, authority));
      });
    });
  }

  /** GOAWAY: open streams finish, no new ones. */
  close(): void {
    this.draining = true;
    if (!this.session.closed) this.session.close();
    this.fireClosed();
  }

  destroy(): void {
    this.draining = true;
    this.session.destroy();
    this.tls.destroy();
    this.fireClosed();
  }

  private fireClosed(): void {
    const callbacks = this.closedCallbacks;
    this.closedCallbacks = [];
    for (const c of callbacks) c();
  }
}
