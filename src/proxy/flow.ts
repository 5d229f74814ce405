// What the proxy knows about one relayed connection, and the observer interface telemetry
// implements to see flows open and close. No I/O here.
import type { Workload } from '../config/model.js';

export interface Endpoint {
  readonly ip: string;
  readonly port: number;
}

export type Direction = 'outbound' | 'inbound';

/** How the proxy reached the target. */
export type Path =
  | 'same-node' // in-process fast path between two pods of this node
  | 'hbone' // through an HBONE tunnel (outbound) or out of one (inbound)
  | 'cross-node' // plaintext to a pod on another node that is not in the mesh
  | 'passthrough' // to an address that is neither a pod nor a service
  | 'inbound-plaintext'; // plaintext from outside the mesh to a local pod

export type SecurityPolicy = 'mutual_tls' | 'none';

/**
 * Why a connection ended badly, in the spirit of Envoy's response flags: `-` none, `DENY` an
 * authorization policy, `CONNECT` the target could not be reached, `TLS` the tunnel's TLS or
 * peer identity failed, `NR` no route (no ready endpoint, unknown destination refused).
 */
export type ResponseFlag = '-' | 'DENY' | 'CONNECT' | 'TLS' | 'NR';

export interface ServiceRef {
  readonly name: string;
  readonly namespace: string;
}

export interface Flow {
  readonly id: number;
  readonly direction: Direction;
  readonly client: Endpoint;
  /** The original destination the client asked for (a service VIP, a pod, anything). */
  readonly target: Endpoint;
  /** Where the proxy actually connected (the chosen endpoint), when known. */
  readonly upstream?: Endpoint;
  readonly sourceWorkload?: Workload;
  readonly destinationWorkload?: Workload;
  /** SPIFFE IDs, when known (verified peer on inbound HBONE; local pods' own identities). */
  readonly sourceIdentity?: string;
  readonly destinationIdentity?: string;
  readonly service?: ServiceRef;
  readonly path: Path;
  readonly security: SecurityPolicy;
  /** Let through by the BPF program without the proxy (the same-node direct path). */
  readonly direct?: boolean;
  readonly startedAt: number;
}

export type FlowOutcome =
  | {
      readonly kind: 'relayed';
      readonly sent: number;
      readonly received: number;
      readonly error?: string;
      /** Set when the proxy cut the connection (a policy change now denies it). */
      readonly flag?: ResponseFlag;
      readonly policy?: string;
      /** When it ended (ms since the epoch), if earlier than the report. */
      readonly endedAt?: number;
    }
  | {
      readonly kind: 'refused';
      readonly reason: string;
      readonly flag: ResponseFlag;
      /** `namespace/name` of the policy that denied it. */
      readonly policy?: string;
    };

export interface FlowObserver {
  opened(flow: Flow): void;
  closed(flow: Flow, outcome: FlowOutcome): void;
}

/** Fans flow events out to several observers (access log, metrics). */
export function observeAll(observers: readonly FlowObserver[]): FlowObserver {
  return {
    opened: (flow) => observers.forEach((o) => o.opened(flow)),
    closed: (flow, outcome) => observers.forEach((o) => o.closed(flow, outcome)),
  };
}

export function formatEndpoint(e: Endpoint): string {
  return `${e.ip}:${e.port}`;
}
