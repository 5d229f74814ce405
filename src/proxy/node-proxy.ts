// proxy/: the node proxy's connection handling. It takes sockets accepted by the capture
// listeners and HBONE streams, works out where each connection was going, asks policy, opens
// the upstream (same-node fast path, HBONE tunnel, or plaintext) and relays. It owns the set
// of live flows (for draining and /debug). It never touches BPF maps, listeners or config
// sources; everything it needs is handed in through the interfaces below.
import type { SecureContext } from 'node:tls';
import type { Socket } from 'node:net';
import type { Workload } from '../config/model.js';
import { native } from '../bpf/ffi.js';
import type {
  Endpoint,
  Flow,
  FlowObserver,
  FlowOutcome,
  Path,
  ResponseFlag,
  ServiceRef,
} from './flow.js';
import { DirectFlows, type DirectPathControl } from './direct-flows.js';
import { relay } from './relay.js';
import { ReadBuffers } from './socket-reader.js';
import { UpstreamConnectError, connectUpstream } from './upstream.js';
import {
  HboneServer,
  HboneStatusError,
  HboneTunnelError,
  relayStream,
  resetSocket,
  type AuthorizeVerdict,
  type HbonePool,
  type HboneRequestInfo,
  type HboneStreamRecord,
  type VerifyPeer,
} from './hbone/index.js';

/** What the proxy needs to know about the cluster. */
export interface MeshDirectory {
  workloadByIp(ip: string): Workload | undefined;
  /** Whether a pod (on any node) is in the mesh, i.e. reachable only through HBONE. */
  isEnrolled(workload: Workload): boolean;
  /** The SPIFFE ID of a workload. */
  identityOf(workload: Workload): string;
}

/** A connection's destination after service resolution and load balancing. */
export interface ResolvedDestination {
  /** Where to connect: a pod IP (or the original address for passthrough) and port. */
  readonly endpoint: Endpoint;
  readonly workload?: Workload;
  readonly service?: ServiceRef;
}

/** Resolves original destinations (service VIPs, pods, anything) to endpoints. */
export interface DestinationResolver {
  /**
   * The endpoint to try for `target`, skipping `exclude` (endpoints that already failed).
   * Undefined: nothing to try (no ready endpoint left). A refusal carries a reason.
   */
  resolve(
    target: Endpoint,
    source: Workload | undefined,
    exclude: ReadonlySet<string>,
  ): ResolvedDestination | { readonly refuse: string } | undefined;
  /** Marks a connection to an endpoint as active (for load balancing); returns release. */
  track?(destination: ResolvedDestination): (() => void) | undefined;
}

export interface AuthorizationInput {
  readonly destination: Workload;
  readonly port: number;
  readonly sourceIdentity?: string;
  readonly sourceIp: string;
  readonly mtls: boolean;
}

export type AuthorizationVerdict =
  | { readonly allow: true }
  | { readonly allow: false; readonly reason: string; readonly policy?: string };

/** Destination-side authorization (policy/); allow-all when absent. */
export type Authorize = (input: AuthorizationInput) => AuthorizationVerdict;

/** The tunnel side: this node's workload certificates and how peers are verified. */
export interface TunnelCredentials {
  /** The TLS context of a local workload identity, and its certificate serial. */
  credentials(identity: string): { context: SecureContext; serial: string } | undefined;
  readonly verifyPeer: VerifyPeer;
  readonly pool: HbonePool;
}

export interface NodeProxyOptions {
  readonly nodeName: string;
  readonly directory: MeshDirectory;
  readonly resolver: DestinationResolver;
  readonly observer: FlowObserver;
  readonly connectTimeoutMs: number;
  /** Undefined without a CA: traffic that needs a tunnel is then refused (fail closed). */
  readonly tunnels?: TunnelCredentials;
  readonly authorize?: Authorize;
  readonly logger?: import('./hbone/index.js').HboneLogger;
  /** How many endpoints to try when connecting fails before any byte is sent. */
  readonly maxConnectAttempts?: number;
  /** The same-node direct path (BPF); without it every same-node connection is relayed. */
  readonly directPath?: DirectPathControl;
}

interface LiveFlow {
  readonly flow: Flow;
  readonly sockets: Socket[];
  readonly counts: () => { sent: number; received: number };
  /** Why the proxy cut it while it was open: a policy change denied it, or a drain ended. */
  cut?: { readonly reason: string; readonly flag?: ResponseFlag; readonly policy?: string };
}

class Refusal extends Error {
  /** What was known of the connection when it was refused (for the access log and metrics). */
  facts?: Omit<Flow, 'id' | 'startedAt'>;

  constructor(
    readonly reason: string,
    readonly flag: ResponseFlag,
    readonly policy?: string,
  ) {
    super(reason);
  }
}

type Upstream =
  | { readonly kind: 'socket'; readonly socket: Socket }
  | { readonly kind: 'stream'; readonly stream: import('node:http2').ClientHttp2Stream };

export class NodeProxy {
  private nextId = 1;
  private readonly live = new Map<number, LiveFlow>();
  private readonly hboneFlows = new Map<string, LiveFlow>();
  readonly hboneServer?: HboneServer;
  private readonly direct?: DirectFlows;
  /** Every relay of this proxy reads through these (one read buffer, one chunk free list). */
  private readonly readBuffers = new ReadBuffers();

  constructor(private readonly options: NodeProxyOptions) {
    if (options.directPath) {
      this.direct = new DirectFlows({
        control: options.directPath,
        observer: options.observer,
        workloadByIp: (ip) => options.directory.workloadByIp(ip),
        identityOf: (workload) => options.directory.identityOf(workload),
        stillAllowed: (flow) => this.stillAllowed(flow),
        nextId: () => this.nextId++,
        warn: (fields, message) => options.logger?.warn(fields, message),
      });
      this.direct.start();
    }
    if (options.tunnels) {
      const tunnels = options.tunnels;
      this.hboneServer = new HboneServer({
        contextForLocalAddress: (ip) => {
          const workload = this.localEnrolled(ip);
          return workload && tunnels.credentials(options.directory.identityOf(workload))?.context;
        },
        verifyPeer: tunnels.verifyPeer,
        authorize: (request) => this.authorizeTunnel(request),
        connectTarget: (target, clientAddress, request) =>
          this.connectTunnelTarget(target, clientAddress, request),
        observer: { onStreamClosed: (record) => this.tunnelStreamClosed(record) },
        logger: options.logger,
        readBuffers: this.readBuffers,
      });
    }
  }

  /** A connection from a local enrolled pod, captured on its way out. */
  handleOutbound = (socket: Socket): void => {
    socket.pause();
    socket.on('error', () => socket.destroy());
    const client = remoteEndpoint(socket);
    const target = originalDestination(socket);
    const sourceWorkload = this.options.directory.workloadByIp(client.ip);
    this.connectOutbound(socket, client, target, sourceWorkload).then(
      ({ flow, upstream }) => this.relayFlow(flow, socket, upstream),
      (error: unknown) =>
        this.refuseUnopened(socket, 'outbound', client, target, sourceWorkload, error),
    );
  };

  /** A plaintext connection to a local enrolled pod from outside the mesh (port 15006). */
  handleInbound = (socket: Socket): void => {
    socket.pause();
    socket.on('error', () => socket.destroy());
    const client = remoteEndpoint(socket);
    const target = localEndpoint(socket);
    const sourceWorkload = this.options.directory.workloadByIp(client.ip);
    const destination = this.localEnrolled(target.ip);
    const facts = {
      direction: 'inbound' as const,
      client,
      target,
      upstream: target,
      path: 'inbound-plaintext' as const,
      sourceWorkload,
      destinationWorkload: destination,
      security: 'none' as const,
    };
    const flow = this.open(socket, facts);
    if (!destination) {
      this.refuse(
        flow,
        socket,
        new Refusal(`${target.ip} is not an enrolled pod on this node`, 'NR'),
      );
      return;
    }
    const verdict = this.authorize({
      destination,
      port: target.port,
      sourceIp: client.ip,
      mtls: false,
    });
    if (!verdict.allow) {
      this.refuse(flow, socket, new Refusal(verdict.reason, 'DENY', verdict.policy));
      return;
    }
    this.plainConnect(target, client.ip).then(
      (upstream) => this.relayFlow(flow, socket, { kind: 'socket', socket: upstream }),
      (error: unknown) => this.refuse(flow, socket, asRefusal(error)),
    );
  };

  /** A connection to a local pod's port 15008: an HBONE tunnel from another node. */
  handleHbone = (socket: Socket): void => {
    if (!this.hboneServer) {
      socket.destroy();
      return;
    }
    this.hboneServer.handle(socket);
  };

  tunnelStats() {
    return { client: this.options.tunnels?.pool.stats(), server: this.hboneServer?.stats() };
  }

  activeFlows(): { flow: Flow; sent: number; received: number }[] {
    return [
      ...[...this.live.values(), ...this.hboneFlows.values()].map((l) => ({
        flow: l.flow,
        ...l.counts(),
      })),
      ...(this.direct?.active() ?? []),
    ];
  }

  /** Config changed: same-node verdicts recorded for the direct path must be made again. */
  invalidateDirectVerdicts(): void {
    this.direct?.invalidate();
  }

  /**
   * Re-checks every live connection to a local pod against the current policy and closes
   * those it now denies (called after a policy change).
   */
  recheck(): number {
    let closed = this.direct?.recheck() ?? 0;
    for (const live of [...this.live.values(), ...this.hboneFlows.values()]) {
      const verdict = this.stillAllowed(live.flow);
      if (verdict.allow) continue;
      live.cut = {
        reason: `policy changed: ${verdict.reason}`,
        flag: 'DENY',
        policy: verdict.policy,
      };
      for (const socket of live.sockets) socket.destroy();
      closed++;
    }
    return closed;
  }

  /**
   * Waits for live flows to finish, up to `graceMs`, then resets what is left and waits
   * (briefly) until those are logged and counted too.
   */
  async drain(graceMs: number): Promise<number> {
    const open = () => this.live.size + this.hboneFlows.size;
    const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
    const deadline = Date.now() + graceMs;
    while (open() > 0 && Date.now() < deadline) await sleep(Math.min(100, graceMs));
    this.direct?.stop();
    const left = open();
    for (const live of [...this.live.values(), ...this.hboneFlows.values()]) {
      live.cut ??= { reason: 'reset: the drain grace ended' };
      for (const socket of live.sockets) resetSocket(socket);
    }
    for (let i = 0; i < 50 && open() > 0; i++) await sleep(20);
    await this.hboneServer?.close();
    await this.options.tunnels?.pool.close();
    return left;
  }

  /** Whether policy still allows a live flow to a local pod (always, for other flows). */
  private stillAllowed(flow: Flow): AuthorizationVerdict {
    const destination = flow.destinationWorkload;
    const toLocalPod = flow.direction === 'inbound' || flow.path === 'same-node';
    if (!toLocalPod || !destination || destination.nodeName !== this.options.nodeName) {
      return { allow: true };
    }
    return this.authorize({
      destination,
      port: (flow.upstream ?? flow.target).port,
      sourceIdentity: flow.path === 'inbound-plaintext' ? undefined : flow.sourceIdentity,
      sourceIp: flow.client.ip,
      mtls: flow.path !== 'inbound-plaintext',
    });
  }

  // ---- outbound ----

  /**
   * Resolves the destination and connects, trying another endpoint when a connect fails
   * before any byte was sent (bounded), so one dead pod costs no client connection.
   */
  private async connectOutbound(
    socket: Socket,
    client: Endpoint,
    target: Endpoint,
    sourceWorkload: Workload | undefined,
  ): Promise<{ flow: Flow; upstream: Upstream }> {
    const exclude = new Set<string>();
    const attempts = this.options.maxConnectAttempts ?? 3;
    let lastError: unknown;
    for (let attempt = 0; attempt < attempts; attempt++) {
      const resolved = this.options.resolver.resolve(target, sourceWorkload, exclude);
      if (!resolved) break;
      if ('refuse' in resolved) throw new Refusal(resolved.refuse, 'NR');
      const destination = resolved.workload;
      const path = this.pathTo(destination);
      const sourceIdentity = sourceWorkload && this.options.directory.identityOf(sourceWorkload);
      const destinationIdentity = destination && this.options.directory.identityOf(destination);
      const facts: Omit<Flow, 'id' | 'startedAt'> = {
        direction: 'outbound',
        client,
        target,
        upstream: resolved.endpoint,
        sourceWorkload,
        destinationWorkload: destination,
        sourceIdentity,
        destinationIdentity:
          path === 'same-node' || path === 'hbone' ? destinationIdentity : undefined,
        service: resolved.service,
        path,
        security: path === 'hbone' || path === 'same-node' ? 'mutual_tls' : 'none',
      };
      const release = this.options.resolver.track?.(resolved);
      try {
        const upstream = await this.connectVia(facts, sourceWorkload);
        const flow = this.open(socket, facts, release);
        return { flow, upstream };
      } catch (error) {
        release?.();
        if (error instanceof Refusal) error.facts ??= facts;
        lastError = error;
        // Policy and identity failures are final; only a target that could not be reached
        // is worth another endpoint, and only for a service with several.
        if (!(error instanceof Refusal && error.flag === 'CONNECT') || !resolved.service)
          throw error;
        exclude.add(`${resolved.endpoint.ip}:${resolved.endpoint.port}`);
      }
    }
    throw lastError ?? new Refusal(`no ready endpoint for ${target.ip}:${target.port}`, 'NR');
  }

  private pathTo(destination: Workload | undefined): Path {
    if (!destination) return 'passthrough';
    if (destination.nodeName === this.options.nodeName) return 'same-node';
    return this.options.directory.isEnrolled(destination) ? 'hbone' : 'cross-node';
  }

  private async connectVia(
    facts: Omit<Flow, 'id' | 'startedAt'>,
    source: Workload | undefined,
  ): Promise<Upstream> {
    const endpoint = facts.upstream!;
    switch (facts.path) {
      case 'same-node': {
        // In-process fast path: the destination's inbound policy applies here, with the
        // source's identity (both ends are this node's own workloads).
        const verdict = this.authorize({
          destination: facts.destinationWorkload!,
          port: endpoint.port,
          sourceIdentity: facts.sourceIdentity,
          sourceIp: facts.client.ip,
          mtls: true,
        });
        if (!verdict.allow) throw new Refusal(verdict.reason, 'DENY', verdict.policy);
        // Decided now, recorded before any await: a policy change in between clears it.
        this.direct?.remember(facts.client.ip, endpoint.ip, endpoint.port);
        return { kind: 'socket', socket: await this.plainConnect(endpoint, facts.client.ip) };
      }
      case 'hbone':
        return { kind: 'stream', stream: await this.openTunnel(facts, source) };
      default:
        // Plaintext to something outside the mesh leaves from the node's own address.
        return { kind: 'socket', socket: await this.plainConnect(endpoint, undefined) };
    }
  }

  private async openTunnel(facts: Omit<Flow, 'id' | 'startedAt'>, source: Workload | undefined) {
    const tunnels = this.options.tunnels;
    if (!tunnels) {
      throw new Refusal(
        'no CA configured (--ca): cross-node mesh traffic is refused, never sent in plaintext',
        'TLS',
      );
    }
    if (!source || !facts.sourceIdentity || !facts.destinationIdentity) {
      throw new Refusal('the source is not a known workload; cannot open a tunnel for it', 'TLS');
    }
    const credentials = tunnels.credentials(facts.sourceIdentity);
    if (!credentials) throw new Refusal(`no certificate yet for ${facts.sourceIdentity}`, 'TLS');
    const endpoint = facts.upstream!;
    try {
      return await tunnels.pool.open({
        // The serial in the key: a rotated certificate is used from the next connection on.
        sourceIdentity: tunnelSourceKey(facts.sourceIdentity, credentials.serial),
        sourceContext: credentials.context,
        expectedServerIdentity: facts.destinationIdentity,
        verifyServer: tunnels.verifyPeer,
        destinationIp: endpoint.ip,
        target: endpoint,
        forwardedFor: `${facts.client.ip}:${facts.client.port}`,
      });
    } catch (error) {
      if (error instanceof HboneStatusError) {
        const flag: ResponseFlag =
          error.status === 401 ? 'DENY' : error.status === 503 ? 'CONNECT' : 'TLS';
        throw new Refusal(`tunnel answered ${error.status}`, flag);
      }
      if (error instanceof HboneTunnelError) {
        throw new Refusal(
          `tunnel failed: ${error.message}`,
          error.code === 'CONNECT' ? 'CONNECT' : 'TLS',
        );
      }
      throw error;
    }
  }

  private async plainConnect(endpoint: Endpoint, sourceIp: string | undefined): Promise<Socket> {
    try {
      return await connectUpstream({
        host: endpoint.ip,
        port: endpoint.port,
        sourceIp,
        connectTimeoutMs: this.options.connectTimeoutMs,
      });
    } catch (error) {
      if (error instanceof UpstreamConnectError) {
        throw new Refusal(
          `connect to ${endpoint.ip}:${endpoint.port} failed: ${error.code}`,
          'CONNECT',
        );
      }
      throw error;
    }
  }

  // ---- inbound HBONE ----

  private authorizeTunnel(request: HboneRequestInfo): AuthorizeVerdict {
    const destination = this.localEnrolled(request.target.ip);
    if (!destination)
      return { allow: false, reason: `${request.target.ip} is not an enrolled pod on this node` };
    const verdict = this.authorize({
      destination,
      port: request.target.port,
      sourceIdentity: request.peerIdentity,
      sourceIp: this.clientIpOf(request),
      mtls: true,
    });
    if (verdict.allow) return verdict;
    // The deciding policy leads the reason, so the stream record can name it.
    const reason = verdict.policy ? `policy ${verdict.policy}: ${verdict.reason}` : verdict.reason;
    return { allow: false, reason, status: 401 };
  }

  /**
   * The original client IP: `forwarded` is believed only when that IP belongs to a pod with
   * the peer certificate's identity; otherwise the tunnel's own source address stands.
   */
  private clientIpOf(request: HboneRequestInfo): string {
    const forwarded = request.forwardedFor;
    if (forwarded) {
      const workload = this.options.directory.workloadByIp(forwarded.ip);
      if (workload && this.options.directory.identityOf(workload) === request.peerIdentity)
        return forwarded.ip;
    }
    return request.tunnelSource.ip;
  }

  private async connectTunnelTarget(
    target: Endpoint,
    _client: Endpoint,
    request: HboneRequestInfo,
  ): Promise<Socket> {
    const clientIp = this.clientIpOf(request);
    const socket = await this.plainConnect(target, clientIp);
    const client = { ip: clientIp, port: request.forwardedFor?.port ?? request.tunnelSource.port };
    const facts: Omit<Flow, 'id' | 'startedAt'> = {
      direction: 'inbound',
      client,
      target,
      upstream: target,
      sourceWorkload: this.options.directory.workloadByIp(clientIp),
      destinationWorkload: this.options.directory.workloadByIp(target.ip),
      sourceIdentity: request.peerIdentity,
      destinationIdentity: this.localIdentity(target.ip),
      path: 'hbone',
      security: 'mutual_tls',
    };
    const flow: Flow = { ...facts, id: this.nextId++, startedAt: Date.now() };
    this.hboneFlows.set(
      tunnelFlowKey(request.peerIdentity, request.forwardedFor, request.tunnelSource, target),
      {
        flow,
        sockets: [socket],
        counts: () => ({ sent: socket.bytesWritten, received: socket.bytesRead }),
      },
    );
    this.options.observer.opened(flow);
    return socket;
  }

  private tunnelStreamClosed(record: HboneStreamRecord): void {
    if (!record.target) return;
    const key = tunnelFlowKey(
      record.peerIdentity,
      record.forwardedFor,
      record.tunnelSource,
      record.target,
    );
    const live = this.hboneFlows.get(key);
    if (live) {
      this.hboneFlows.delete(key);
      const outcome: FlowOutcome = {
        kind: 'relayed',
        sent: record.bytesIn,
        received: record.bytesOut,
        error: record.reason,
      };
      this.options.observer.closed(live.flow, withCut(outcome, live.cut));
      return;
    }
    // Refused before a target connection existed (400/401/503): report it as a flow too.
    const clientIp = this.clientIpOf({ ...record, target: record.target } as HboneRequestInfo);
    const flow: Flow = {
      id: this.nextId++,
      direction: 'inbound',
      client: { ip: clientIp, port: record.forwardedFor?.port ?? record.tunnelSource.port },
      target: record.target,
      sourceWorkload: this.options.directory.workloadByIp(clientIp),
      sourceIdentity: record.peerIdentity,
      destinationWorkload: this.options.directory.workloadByIp(record.target.ip),
      destinationIdentity: this.localIdentity(record.target.ip),
      path: 'hbone',
      security: 'mutual_tls',
      startedAt: Date.now() - record.durationMs,
    };
    const flag: ResponseFlag =
      record.status === 401 ? 'DENY' : record.status === 503 ? 'CONNECT' : 'NR';
    this.options.observer.opened(flow);
    this.options.observer.closed(flow, {
      kind: 'refused',
      reason: record.reason ?? `answered ${record.status}`,
      flag,
      policy: flag === 'DENY' ? policyOf(record.reason) : undefined,
    });
  }

  // ---- shared ----

  private authorize(input: AuthorizationInput): AuthorizationVerdict {
    return this.options.authorize?.(input) ?? { allow: true };
  }

  private localEnrolled(ip: string): Workload | undefined {
    const workload = this.options.directory.workloadByIp(ip);
    if (!workload || workload.nodeName !== this.options.nodeName) return undefined;
    return this.options.directory.isEnrolled(workload) ? workload : undefined;
  }

  private localIdentity(ip: string): string | undefined {
    const workload = this.localEnrolled(ip);
    return workload && this.options.directory.identityOf(workload);
  }

  private open(socket: Socket, facts: Omit<Flow, 'id' | 'startedAt'>, release?: () => void): Flow {
    const flow: Flow = { ...facts, id: this.nextId++, startedAt: Date.now() };
    this.live.set(flow.id, {
      flow,
      sockets: [socket],
      counts: () => ({ sent: socket.bytesRead, received: socket.bytesWritten }),
    });
    if (release) socket.once('close', release);
    this.options.observer.opened(flow);
    return flow;
  }

  private relayFlow(flow: Flow, downstream: Socket, upstream: Upstream): void {
    downstream.removeAllListeners('error');
    if (upstream.kind === 'socket') {
      this.live.get(flow.id)?.sockets.push(upstream.socket);
      // Neither relay rejects: every ending (FIN, reset, error) resolves with what was moved.
      void relay(downstream, upstream.socket, this.readBuffers).then((result) =>
        this.finish(flow, {
          kind: 'relayed',
          sent: result.sent,
          received: result.received,
          error: errorCode(result.error),
        }),
      );
      return;
    }
    void relayStream(upstream.stream, downstream, this.readBuffers).then((result) =>
      this.finish(flow, {
        kind: 'relayed',
        sent: result.fromSocket,
        received: result.fromStream,
        error: result.error,
      }),
    );
  }

  private refuseUnopened(
    socket: Socket,
    direction: 'outbound',
    client: Endpoint,
    target: Endpoint,
    sourceWorkload: Workload | undefined,
    error: unknown,
  ): void {
    const refusal = asRefusal(error);
    const flow = this.open(
      socket,
      refusal.facts ?? {
        direction,
        client,
        target,
        sourceWorkload,
        sourceIdentity: sourceWorkload && this.options.directory.identityOf(sourceWorkload),
        destinationWorkload: this.options.directory.workloadByIp(target.ip),
        path: this.pathTo(this.options.directory.workloadByIp(target.ip)),
        security: 'none',
      },
    );
    this.refuse(flow, socket, refusal);
  }

  private refuse(flow: Flow, downstream: Socket, refusal: Refusal): void {
    // A reset tells the client at once, as a refused connection would.
    if (!downstream.destroyed) downstream.resetAndDestroy();
    this.finish(flow, {
      kind: 'refused',
      reason: refusal.reason,
      flag: refusal.flag,
      policy: refusal.policy,
    });
  }

  private finish(flow: Flow, outcome: FlowOutcome): void {
    const live = this.live.get(flow.id);
    if (!live) return;
    this.live.delete(flow.id);
    this.options.observer.closed(flow, withCut(outcome, live.cut));
  }
}

/** The pool key of a source: its identity and the serial of the certificate it presents. */
export function tunnelSourceKey(identity: string, serial: string): string {
  return `${identity}#${serial}`;
}

function withCut(outcome: FlowOutcome, cut: LiveFlow['cut']): FlowOutcome {
  if (!cut || outcome.kind !== 'relayed') return outcome;
  return { ...outcome, error: cut.reason, flag: cut.flag, policy: cut.policy };
}

function asRefusal(error: unknown): Refusal {
  if (error instanceof Refusal) return error;
  return new Refusal(error instanceof Error ? error.message : String(error), 'CONNECT');
}

/** The HBONE server's 401 reason starts with the deciding policy: "policy ns/name: ...". */
function policyOf(reason: string | undefined): string | undefined {
  return /^policy ([^:\s]+)/.exec(reason ?? '')?.[1];
}

function tunnelFlowKey(
  identity: string,
  forwarded: Endpoint | undefined,
  source: Endpoint,
  target: Endpoint,
): string {
  const f = forwarded ? `${forwarded.ip}:${forwarded.port}` : '-';
  return `${identity}|${f}|${source.ip}:${source.port}|${target.ip}:${target.port}`;
}

function remoteEndpoint(socket: Socket): Endpoint {
  return { ip: stripMapped(socket.remoteAddress ?? ''), port: socket.remotePort ?? 0 };
}

function localEndpoint(socket: Socket): Endpoint {
  return { ip: stripMapped(socket.localAddress ?? ''), port: socket.localPort ?? 0 };
}

function stripMapped(ip: string): string {
  return ip.startsWith('::ffff:') ? ip.slice(7) : ip;
}

/**
 * The destination the client dialled. With sk_assign it is the accepted socket's local
 * address, except where kube-proxy DNATed a service VIP after tc ingress: conntrack then
 * still knows the pre-DNAT address, and that is the one the client meant.
 */
function originalDestination(socket: Socket): Endpoint {
  // net.Socket exposes no fd; libuv's handle does (Unix only, which weft is).
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (fd !== undefined && fd >= 0) {
    const ip = Buffer.alloc(16);
    const port = [0];
    if (native.originalDst(fd, ip, ip.length, port) === 0) {
      return { ip: ip.toString('latin1', 0, ip.indexOf(0)), port: port[0]! };
    }
  }
  return localEndpoint(socket);
}

function errorCode(error: Error | undefined): string | undefined {
  if (!error) return undefined;
  return (error as NodeJS.ErrnoException).code ?? error.message;
}
