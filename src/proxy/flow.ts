// What the proxy knows about one relayed connection, and the observer interface telemetry
// implements to see flows open and close. No I/O here.
import type { Workload } from '../config/model.js';

export interface Endpoint {
  readonly ip: string;
  readonly port: number;
}

export type Direction = 'outbound' | 'inbound';

/** How the proxy reached the target: same-node fast path, to another node, or untouched. */
export type Path = 'same-node' | 'cross-node' | 'passthrough' | 'inbound-plaintext';

export interface Flow {
  readonly id: number;
  readonly direction: Direction;
  readonly client: Endpoint;
  /** The original destination the client asked for. */
  readonly target: Endpoint;
  readonly sourceWorkload?: Workload;
  readonly destinationWorkload?: Workload;
  readonly path: Path;
  readonly startedAt: number;
}

export type FlowOutcome =
  | {
      readonly kind: 'relayed';
      readonly sent: number;
      readonly received: number;
      readonly error?: string;
    }
  | { readonly kind: 'refused'; readonly reason: string };

export interface FlowObserver {
  opened(flow: Flow): void;
  closed(flow: Flow, outcome: FlowOutcome): void;
}

export function formatEndpoint(e: Endpoint): string {
  return `${e.ip}:${e.port}`;
}
