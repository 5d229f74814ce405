// The same-node direct path, as the proxy sees it. Once the proxy has allowed a connection
// from one local pod to another, it records that verdict so later SYNs of the same (client
// pod, server pod, port) pass straight through the kernel, never through this process. The
// flows that took that path are still the proxy's to account for: this module polls their
// entries (bytes, FIN/RST, kept by the BPF program), reports them to the same FlowObserver
// (metrics, access log) as relayed connections, re-checks them when policy changes and cuts
// those now denied. It never opens a socket and never reads a map itself: everything kernel
// side goes through DirectPathControl (implemented in redirect/direct-path.ts).
import type { Workload } from '../config/model.js';
import type { Flow, FlowObserver, ResponseFlag } from './flow.js';

export interface DirectFlowTuple {
  readonly clientIp: string;
  readonly clientPort: number;
  readonly serverIp: string;
  readonly serverPort: number;
}

/** One flow entry as the BPF program left it. Times are CLOCK_MONOTONIC nanoseconds. */
export interface DirectFlowReading {
  readonly key: DirectFlowTuple;
  readonly state: {
    /** Bit 2 (4): an RST was seen. */
    readonly state: number;
    readonly clientBytes: bigint;
    readonly serverBytes: bigint;
    readonly openedNs: bigint;
    readonly lastNs: bigint;
    /** 0 while open. */
    readonly closedNs: bigint;
  };
}

export interface DirectPathControl {
  /** False when it could not be recorded (map full): the pair is then simply relayed. */
  allow(verdict: { clientIp: string; serverIp: string; serverPort: number }): boolean;
  clearVerdicts(): number;
  flows(): readonly DirectFlowReading[];
  forget(key: DirectFlowTuple): void;
  /** Drops the flow's packets and aborts its sockets; returns why the abort failed, if it did. */
  cut(key: DirectFlowTuple): string | undefined;
}

export interface DirectFlowsOptions {
  readonly control: DirectPathControl;
  readonly observer: FlowObserver;
  readonly workloadByIp: (ip: string) => Workload | undefined;
  readonly identityOf: (workload: Workload) => string;
  /** Whether policy still allows the flow: the same check the proxied path makes. */
  readonly stillAllowed: (
    flow: Flow,
  ) => { allow: true } | { allow: false; reason: string; policy?: string };
  readonly nextId: () => number;
  readonly warn: (fields: object, message: string) => void;
  /** How often entries are read, ms. */
  readonly pollMs?: number;
}

const FLOW_RST = 1 << 2;
/** A closed flow's entry stays this long after its last packet, for the final ACKs. */
const LINGER_NS = 3_000_000_000n;
/** A cut flow whose sockets could not be aborted keeps dropping this long after its last packet. */
const CUT_HOLD_NS = 300_000_000_000n;

interface LiveDirectFlow {
  readonly flow: Flow;
  readonly key: DirectFlowTuple;
  readonly openedNs: bigint;
  sent: number;
  received: number;
  /** Closed has been reported to the observer. */
  reported: boolean;
  cut?: { readonly reason: string; readonly flag: ResponseFlag; readonly policy?: string };
  /** The cut could not abort the sockets: the entry stays (dropping) for CUT_HOLD_NS. */
  held?: boolean;
}

export class DirectFlows {
  private readonly live = new Map<string, LiveDirectFlow>();
  private timer?: NodeJS.Timeout;

  constructor(private readonly options: DirectFlowsOptions) {}

  start(): void {
    this.timer ??= setInterval(() => this.poll(), this.options.pollMs ?? 200);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** The proxy allowed client -> server:port: let later connections of that pair go direct. */
  remember(clientIp: string, serverIp: string, serverPort: number): void {
    this.options.control.allow({ clientIp, serverIp, serverPort });
  }

  /** Config changed (policy, identities, enrollment): every verdict must be made again. */
  invalidate(): number {
    return this.options.control.clearVerdicts();
  }

  active(): { flow: Flow; sent: number; received: number }[] {
    return [...this.live.values()]
      .filter((l) => !l.reported)
      .map((l) => ({ flow: l.flow, sent: l.sent, received: l.received }));
  }

  /** Re-checks open direct flows against policy and cuts the denied ones; returns how many. */
  recheck(): number {
    this.poll();
    let cut = 0;
    for (const live of this.live.values()) {
      if (live.reported || live.cut) continue;
      const verdict = this.options.stillAllowed(live.flow);
      if (verdict.allow) continue;
      live.cut = {
        reason: `policy changed: ${verdict.reason}`,
        flag: 'DENY',
        policy: verdict.policy,
      };
      const failure = this.options.control.cut(live.key);
      if (failure) {
        // Its packets are dropped, so it is over for both ends even if they do not know yet.
        this.options.warn(
          { flow: live.flow.id, error: failure },
          'cut a direct flow without aborting its sockets',
        );
        live.held = true;
        this.report(live, undefined);
      }
      cut++;
    }
    // The aborts above sent their RSTs synchronously: report those closes now.
    this.poll();
    return cut;
  }

  /** Reads every entry: reports new flows, closed flows, and deletes entries no longer needed. */
  poll(): void {
    const now = process.hrtime.bigint();
    const seen = new Set<string>();
    for (const { key, state } of this.options.control.flows()) {
      const id = tupleId(key);
      seen.add(id);
      let live = this.live.get(id);
      if (live && live.openedNs !== state.openedNs) {
        // The tuple was reused by a new connection before the old entry was deleted.
        if (!live.reported) this.report(live, undefined);
        live = undefined;
      }
      if (!live) {
        live = this.open(key, state.openedNs, now);
        this.live.set(id, live);
      }
      live.sent = Number(state.clientBytes);
      live.received = Number(state.serverBytes);
      if (!live.reported && state.closedNs !== 0n) {
        this.report(live, state);
      }
      const hold = live.held ? CUT_HOLD_NS : LINGER_NS;
      if (live.reported && now - state.lastNs > hold) {
        this.options.control.forget(key);
        this.live.delete(id);
      } else if (!live.reported && this.podsGone(live.key)) {
        this.report(live, undefined, 'the pods of this flow were deleted');
        this.options.control.forget(key);
        this.live.delete(id);
      }
    }
    for (const [id, live] of this.live) {
      if (seen.has(id)) continue;
      // A new connection on the same tuple went through the proxy and the program dropped
      // this entry: whatever cut was left for it must go too.
      if (!live.reported) this.report(live, undefined, 'its entry was removed');
      this.options.control.forget(live.key);
      this.live.delete(id);
    }
  }

  private open(key: DirectFlowTuple, openedNs: bigint, now: bigint): LiveDirectFlow {
    const source = this.options.workloadByIp(key.clientIp);
    const destination = this.options.workloadByIp(key.serverIp);
    const target = { ip: key.serverIp, port: key.serverPort };
    const flow: Flow = {
      id: this.options.nextId(),
      direction: 'outbound',
      client: { ip: key.clientIp, port: key.clientPort },
      target,
      upstream: target,
      sourceWorkload: source,
      destinationWorkload: destination,
      sourceIdentity: source && this.options.identityOf(source),
      destinationIdentity: destination && this.options.identityOf(destination),
      path: 'same-node',
      security: 'mutual_tls',
      direct: true,
      startedAt: Date.now() - Number((now - openedNs) / 1_000_000n),
    };
    this.options.observer.opened(flow);
    return { flow, key, openedNs, sent: 0, received: 0, reported: false };
  }

  private report(
    live: LiveDirectFlow,
    state: DirectFlowReading['state'] | undefined,
    error?: string,
  ): void {
    live.reported = true;
    const reset = state !== undefined && (state.state & FLOW_RST) !== 0;
    const endedAt =
      state && state.closedNs !== 0n
        ? live.flow.startedAt + Number((state.closedNs - live.openedNs) / 1_000_000n)
        : undefined;
    this.options.observer.closed(live.flow, {
      kind: 'relayed',
      sent: live.sent,
      received: live.received,
      error: live.cut?.reason ?? error ?? (reset ? 'ECONNRESET' : undefined),
      flag: live.cut?.flag,
      policy: live.cut?.policy,
      endedAt,
    });
  }

  private podsGone(key: DirectFlowTuple): boolean {
    return !this.options.workloadByIp(key.clientIp) && !this.options.workloadByIp(key.serverIp);
  }
}

function tupleId(key: DirectFlowTuple): string {
  return `${key.clientIp}:${key.clientPort}>${key.serverIp}:${key.serverPort}`;
}
