// The node proxy's connection handling: takes sockets accepted by the capture listeners,
// works out where each was going, opens the upstream connection and relays. It owns the set
// of live flows (for draining). It never touches BPF maps or listeners itself.
import type { Socket } from 'node:net';
import type { Workload } from '../config/model.js';
import { native } from '../bpf/ffi.js';
import type { Endpoint, Flow, FlowObserver, Path, ResponseFlag } from './flow.js';
import { relay } from './relay.js';
import { UpstreamConnectError, connectUpstream } from './upstream.js';

export interface WorkloadLookup {
  workloadByIp(ip: string): Workload | undefined;
}

export interface NodeProxyOptions {
  readonly nodeName: string;
  readonly workloads: WorkloadLookup;
  readonly observer: FlowObserver;
  readonly connectTimeoutMs: number;
}

interface LiveFlow {
  readonly flow: Flow;
  readonly sockets: Socket[];
}

export class NodeProxy {
  private nextId = 1;
  private readonly live = new Map<number, LiveFlow>();

  constructor(private readonly options: NodeProxyOptions) {}

  /** A connection from a local enrolled pod, captured on its way out. */
  handleOutbound = (socket: Socket): void => {
    const client = remoteEndpoint(socket);
    const target = originalDestination(socket);
    const sourceWorkload = this.options.workloads.workloadByIp(client.ip);
    const destinationWorkload = this.options.workloads.workloadByIp(target.ip);
    const sameNode = destinationWorkload?.nodeName === this.options.nodeName;
    const path: Path = sameNode ? 'same-node' : destinationWorkload ? 'cross-node' : 'passthrough';
    const flow = this.open(socket, {
      direction: 'outbound',
      client,
      target,
      path,
      sourceWorkload,
      destinationWorkload,
      security: 'none',
    });
    // Same node: deliver from the client's own address so the pod sees its real peer. Other
    // nodes and passthrough leave from the node's address, like any node-originated traffic.
    this.connectAndRelay(flow, socket, sameNode ? client.ip : undefined);
  };

  /** A plaintext connection to a local enrolled pod from outside the mesh. */
  handleInbound = (socket: Socket): void => {
    const client = remoteEndpoint(socket);
    const target = localEndpoint(socket);
    const destinationWorkload = this.options.workloads.workloadByIp(target.ip);
    const sourceWorkload = this.options.workloads.workloadByIp(client.ip);
    const flow = this.open(socket, {
      direction: 'inbound',
      client,
      target,
      path: 'inbound-plaintext',
      sourceWorkload,
      destinationWorkload,
      security: 'none',
    });
    if (destinationWorkload?.nodeName !== this.options.nodeName) {
      this.refuse(flow, socket, `${target.ip} is not a pod on this node`, 'NR');
      return;
    }
    this.connectAndRelay(flow, socket, client.ip);
  };

  activeFlows(): Flow[] {
    return [...this.live.values()].map((l) => l.flow);
  }

  /** Waits for live flows to finish, up to `graceMs`, then resets what is left. */
  async drain(graceMs: number): Promise<number> {
    const deadline = Date.now() + graceMs;
    while (this.live.size > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(100, graceMs)));
    }
    const left = this.live.size;
    for (const { sockets } of this.live.values()) for (const s of sockets) s.destroy();
    return left;
  }

  private open(socket: Socket, facts: Omit<Flow, 'id' | 'startedAt'>): Flow {
    const flow: Flow = { ...facts, id: this.nextId++, startedAt: Date.now() };
    this.live.set(flow.id, { flow, sockets: [socket] });
    // Errors before the relay starts (a reset from the client) must not crash the process.
    socket.on('error', () => socket.destroy());
    this.options.observer.opened(flow);
    return flow;
  }

  private connectAndRelay(flow: Flow, downstream: Socket, sourceIp: string | undefined): void {
    downstream.pause();
    connectUpstream({
      host: flow.target.ip,
      port: flow.target.port,
      sourceIp,
      connectTimeoutMs: this.options.connectTimeoutMs,
    }).then(
      async (upstream) => {
        this.live.get(flow.id)?.sockets.push(upstream);
        downstream.removeAllListeners('error');
        const result = await relay(downstream, upstream);
        this.finish(flow, {
          kind: 'relayed',
          sent: result.sent,
          received: result.received,
          error: errorCode(result.error),
        });
      },
      (error: unknown) => {
        const reason = error instanceof UpstreamConnectError ? error.code : String(error);
        this.refuse(flow, downstream, `upstream connect failed: ${reason}`, 'CONNECT');
      },
    );
  }

  private refuse(flow: Flow, downstream: Socket, reason: string, flag: ResponseFlag): void {
    // A reset tells the client at once, as a refused connection would.
    if (!downstream.destroyed) downstream.resetAndDestroy();
    this.finish(flow, { kind: 'refused', reason, flag });
  }

  private finish(flow: Flow, outcome: Parameters<FlowObserver['closed']>[1]): void {
    if (!this.live.delete(flow.id)) return;
    this.options.observer.closed(flow, outcome);
  }
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
