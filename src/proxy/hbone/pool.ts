// The HBONE connection pool: CONNECT streams share TLS connections keyed by (source
// identity, destination identity, destination pod IP), as ztunnel pools them; up to 100 streams
// per connection, idle connections closed after 5 minutes, dead ones dropped so the next open
// dials afresh.
import type { ClientHttp2Stream } from 'node:http2';
import type { SecureContext } from 'node:tls';
import type { Endpoint } from '../flow.js';
import {
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_PING_INTERVAL_MS,
  DEFAULT_PING_TIMEOUT_MS,
  HboneClientConnection,
  expectedList,
  type DialSocket,
} from './client.js';
import {
  HBONE_PORT,
  HboneTunnelError,
  silentHboneLogger,
  type HboneLogger,
  type VerifyPeer,
} from './protocol.js';

export interface HboneOpenRequest {
  /** The source workload's SPIFFE ID (the pooling key; its certificate is in sourceContext). */
  readonly sourceIdentity: string;
  /** The source workload's certificate and key (see createHboneSecureContext). */
  readonly sourceContext: SecureContext;
  /** The SPIFFE ID(s) the destination may present. */
  readonly expectedServerIdentity: string | readonly string[];
  readonly verifyServer: VerifyPeer;
  /** The destination pod's IP: the tunnel goes to <destinationIp>:<port>. */
  readonly destinationIp: string;
  readonly port?: number;
  /** Where the CONNECT goes: `:authority`. */
  readonly target: Endpoint;
  /** The original client, `ip:port`. */
  readonly forwardedFor: string;
  readonly traceparent?: string;
  readonly baggage?: string;
  /** Source address of the tunnel's TCP connection (part of the pooling key). */
  readonly localAddress?: string;
}

export interface HbonePoolOptions {
  readonly maxStreamsPerConnection?: number;
  readonly idleTimeoutMs?: number;
  readonly pingIntervalMs?: number;
  readonly pingTimeoutMs?: number;
  /** TCP connect + TLS handshake + server verification. */
  readonly connectTimeoutMs?: number;
  /** From sending the CONNECT to its `:status`. */
  readonly responseTimeoutMs?: number;
  /** Opens the TCP connection (default: net.connect, honouring localAddress). */
  readonly dialSocket?: DialSocket;
  readonly logger?: HboneLogger;
}

export interface HbonePoolStats {
  /** Live connections (dialling ones included). */
  readonly connections: number;
  /** Streams reserved or open. */
  readonly streams: number;
  /** Verified TLS handshakes done since the pool was made. */
  readonly handshakes: number;
  /** Dials that failed (TCP, TLS, identity). */
  readonly dialFailures: number;
}

export const DEFAULT_POOL_OPTIONS = {
  maxStreamsPerConnection: 100,
  idleTimeoutMs: 5 * 60_000,
  pingIntervalMs: DEFAULT_PING_INTERVAL_MS,
  pingTimeoutMs: DEFAULT_PING_TIMEOUT_MS,
  connectTimeoutMs: DEFAULT_CONNECT_TIMEOUT_MS,
  responseTimeoutMs: 10_000,
} as const;

/** A pooled connection, or the promise of one while it is being dialled. */
interface Slot {
  readonly key: string;
  streams: number;
  dead: boolean;
  connection?: HboneClientConnection;
  readonly ready: Promise<HboneClientConnection>;
  /** Armed while the slot may be idle; re-armed lazily (see release). */
  idleTimer?: NodeJS.Timeout;
  /** When the last stream ended; undefined while streams are open. */
  idleSince?: number;
}

export class HbonePool {
  private readonly options: Required<Omit<HbonePoolOptions, 'dialSocket' | 'logger'>>;
  private readonly logger: HboneLogger;
  /** Connections new streams may use, by pooling key. */
  private readonly slots = new Map<string, Slot[]>();
  /** Every connection still carrying streams, pooled or retired. */
  private readonly live = new Set<Slot>();
  private handshakes = 0;
  private dialFailures = 0;
  private closed = false;

  constructor(private readonly poolOptions: HbonePoolOptions = {}) {
    this.options = { ...DEFAULT_POOL_OPTIONS, ...stripUndefined(poolOptions) };
    this.logger = poolOptions.logger ?? silentHboneLogger;
  }

  /**
   * Opens a CONNECT stream to `target` through a pooled tunnel; resolves once the server
   * answered 200. Rejects with HboneStatusError (another status) or HboneTunnelError (the
   * tunnel could not be set up; code IDENTITY means the server was not who it should be,
   * and no CONNECT was sent). The stream is a Duplex: END_STREAM is its end(), a reset is
   * close(code); see relayStream.
   */
  async open(request: HboneOpenRequest): Promise<ClientHttp2Stream> {
    try {
      return await this.openOnce(request);
    } catch (error) {
      // A CONNECT the server never processed (GOAWAY race, REFUSED_STREAM) is safe to retry
      // once, on a fresh connection.
      if (error instanceof HboneTunnelError && error.retryable && !this.closed) {
        this.logger.debug({ error: error.message }, 'hbone retrying CONNECT');
        return this.openOnce(request);
      }
      throw error;
    }
  }

  stats(): HbonePoolStats {
    let connections = 0;
    let streams = 0;
    for (const s of this.live) {
      if (!s.dead) connections++;
      streams += s.streams;
    }
    return { connections, streams, handshakes: this.handshakes, dialFailures: this.dialFailures };
  }

  /** Closes every connection now (open streams are reset). */
  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.live];
    this.slots.clear();
    this.live.clear();
    for (const s of all) {
      s.dead = true;
      clearTimeout(s.idleTimer);
      s.connection?.destroy();
    }
    await Promise.allSettled(all.map((s) => s.ready));
  }

  private async openOnce(request: HboneOpenRequest): Promise<ClientHttp2Stream> {
    if (this.closed) throw new HboneTunnelError('CLOSED', 'HBONE pool is closed');
    const slot = this.reserve(request);
    let connection: HboneClientConnection;
    try {
      connection = await slot.ready;
    } catch (error) {
      this.release(slot);
      throw error;
    }
    let stream: ClientHttp2Stream;
    try {
      stream = await connection.connect(
        {
          target: request.target,
          forwardedFor: request.forwardedFor,
          traceparent: request.traceparent,
          baggage: request.baggage,
        },
        this.options.responseTimeoutMs,
      );
    } catch (error) {
      this.release(slot);
      if (error instanceof HboneTunnelError && error.retryable) this.retire(slot);
      throw error;
    }
    stream.once('close', () => this.release(slot));
    return stream;
  }

  /** Takes a stream slot on a live or dialling connection for the key, or dials one. */
  private reserve(request: HboneOpenRequest): Slot {
    const key = poolKey(request);
    const list = this.slots.get(key) ?? [];
    this.slots.set(key, list);
    for (const slot of list) {
      if (slot.dead || slot.streams >= this.limit(slot)) continue;
      if (slot.connection && !slot.connection.usable) continue;
      slot.streams++;
      slot.idleSince = undefined;
      return slot;
    }
    const slot: Slot = {
      key,
      streams: 1,
      dead: false,
      ready: this.dial(request).then(
        (connection) => {
          slot.connection = connection;
          connection.onClosed(() => this.retire(slot));
          if (slot.dead) connection.destroy();
          return connection;
        },
        (error: unknown) => {
          this.retire(slot);
          throw error;
        },
      ),
    };
    // Waiters handle the rejection; this keeps an unobserved one from crashing the process.
    slot.ready.catch(() => {});
    list.push(slot);
    this.live.add(slot);
    return slot;
  }

  private async dial(request: HboneOpenRequest): Promise<HboneClientConnection> {
    try {
      const connection = await HboneClientConnection.dial({
        destinationIp: request.destinationIp,
        port: request.port ?? HBONE_PORT,
        localAddress: request.localAddress,
        sourceContext: request.sourceContext,
        expectedServerIdentity: request.expectedServerIdentity,
        verifyServer: request.verifyServer,
        connectTimeoutMs: this.options.connectTimeoutMs,
        pingIntervalMs: this.options.pingIntervalMs,
        pingTimeoutMs: this.options.pingTimeoutMs,
        dialSocket: this.poolOptions.dialSocket,
      });
      this.handshakes++;
      this.logger.debug(
        { destination: request.destinationIp, serverIdentity: connection.serverIdentity },
        'hbone connection established',
      );
      return connection;
    } catch (error) {
      this.dialFailures++;
      this.logger.warn(
        { destination: request.destinationIp, error: (error as Error).message },
        'hbone dial failed',
      );
      throw error;
    }
  }

  /**
   * Stops giving new streams to the connections opened for `sourceIdentity` (e.g. with a
   * certificate that has since been rotated): each closes once its last stream ends.
   */
  retireSource(sourceIdentity: string): number {
    const prefix = `${sourceIdentity}|`;
    let retired = 0;
    for (const [key, list] of [...this.slots]) {
      if (!key.startsWith(prefix)) continue;
      for (const slot of [...list]) {
        this.retire(slot);
        retired++;
      }
    }
    return retired;
  }

  private limit(slot: Slot): number {
    const peer = slot.connection?.peerMaxStreams;
    const max = this.options.maxStreamsPerConnection;
    return peer === undefined ? max : Math.min(max, peer);
  }

  private release(slot: Slot): void {
    slot.streams--;
    if (slot.streams > 0) return;
    if (slot.dead) {
      this.live.delete(slot);
      slot.connection?.close();
      return;
    }
    slot.idleSince = Date.now();
    // One timer per idle period, re-armed on expiry for what is left of it, instead of a
    // clearTimeout + setTimeout for every stream (one per proxied connection).
    if (!slot.idleTimer) this.armIdle(slot, this.options.idleTimeoutMs);
  }

  private armIdle(slot: Slot, ms: number): void {
    slot.idleTimer = setTimeout(() => {
      slot.idleTimer = undefined;
      if (slot.dead || slot.streams > 0 || slot.idleSince === undefined) return;
      const left = slot.idleSince + this.options.idleTimeoutMs - Date.now();
      if (left > 0) {
        this.armIdle(slot, left);
        return;
      }
      this.logger.debug({ key: slot.key }, 'hbone connection idle, closing');
      this.retire(slot);
      slot.connection?.close();
    }, ms);
    slot.idleTimer.unref();
  }

  /** Takes the slot out of the pool: new opens dial afresh. Open streams carry on. */
  private retire(slot: Slot): void {
    slot.dead = true;
    clearTimeout(slot.idleTimer);
    const list = this.slots.get(slot.key);
    const i = list ? list.indexOf(slot) : -1;
    if (list && i >= 0) list.splice(i, 1);
    if (list?.length === 0) this.slots.delete(slot.key);
    if (slot.streams === 0) {
      // A connection nobody uses any more is closed at once.
      this.live.delete(slot);
      slot.connection?.close();
    }
  }
}

function poolKey(r: HboneOpenRequest): string {
  const destinationIds = [...expectedList(r.expectedServerIdentity)].sort().join(',');
  return [
    r.sourceIdentity,
    destinationIds,
    r.destinationIp,
    r.port ?? HBONE_PORT,
    r.localAddress ?? '',
  ].join('|');
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
