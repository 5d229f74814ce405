// workers/: the data plane in several processes. With `weft node --workers N` the node agent
// process stays the control plane (config, certificates, BPF, direct-path flows, HTTP
// endpoints) and forks N worker processes that each accept and relay connections from their
// own SOCKMAP slots. This folder owns that split: the messages between the two sides
// (protocol.ts), the control plane's pool of workers (pool.ts), the worker's view of the
// certificates it is sent (credentials.ts) and the worker process itself (main.ts). It never
// decides policy or routing; it carries the control plane's state to where connections are.
//
// protocol.ts: every IPC message, typed. The channel uses `serialization: 'advanced'`
// (structured clone), so Maps, Dates and bigints cross as they are.
import type { ObjectRef, TranslatedObject } from '../config/index.js';
import type { NodeOptions } from '../cli/options.js';

/** A workload certificate as a worker needs it. The key is never logged. */
export interface WorkerCertificate {
  readonly spiffeId: string;
  readonly serial: string;
  readonly keyPem: string;
  readonly chainPem: string;
  readonly notAfter: Date;
  /** The serial this one replaces (its tunnels take no new streams). */
  readonly previousSerial?: string;
}

/** The cluster state in force, as objects, and the control plane's generation of it. */
export interface StateSnapshot {
  readonly generation: number;
  readonly objects: readonly TranslatedObject[];
}

/**
 * One change of the cluster state: the objects added or updated, the refs removed, and the
 * generation it made. Only what changed crosses the channel (a full state is ~10 MB at
 * 10,000 pods), and a worker compares only those objects.
 */
export interface StateChange {
  readonly generation: number;
  readonly upserts: readonly TranslatedObject[];
  readonly removed: readonly ObjectRef[];
}

export type QueryKind = 'metrics' | 'connections' | 'pools';

export type ToWorker =
  | {
      readonly type: 'init';
      readonly worker: number;
      readonly options: NodeOptions;
      /** Whether the control plane runs the same-node direct path (verdicts go to it). */
      readonly directPath: boolean;
      readonly state: StateSnapshot;
      /** Trust domain -> PEM roots. */
      readonly bundles: readonly (readonly [string, string])[];
      readonly certificates: readonly WorkerCertificate[];
    }
  /** What the last config change did (every worker has the state before it). */
  | { readonly type: 'stateChange'; readonly change: StateChange }
  /** The whole state, to a worker that asked for it (it found a change missing). */
  | { readonly type: 'state'; readonly state: StateSnapshot }
  | { readonly type: 'certificate'; readonly certificate: WorkerCertificate }
  | { readonly type: 'certificateDropped'; readonly spiffeId: string }
  | { readonly type: 'query'; readonly id: number; readonly what: QueryKind }
  | { readonly type: 'logLevel'; readonly level: string }
  /** Drain and exit: accept what is queued if a successor took the slots, then close. */
  | { readonly type: 'stop'; readonly drainGraceMs: number };

export type FromWorker =
  /** The worker's listeners are in its slots: it serves. */
  | { readonly type: 'ready'; readonly pid: number }
  | { readonly type: 'failed'; readonly message: string }
  /** A same-node verdict, decided against state `generation`, for the direct path. */
  | {
      readonly type: 'allow';
      readonly generation: number;
      readonly verdict: { clientIp: string; serverIp: string; serverPort: number };
    }
  | { readonly type: 'reply'; readonly id: number; readonly value: unknown }
  /** A change did not follow the state this worker holds: send the whole state. */
  | { readonly type: 'resync'; readonly generation: number }
  | { readonly type: 'stopped'; readonly resetConnections: number };

export function isFromWorker(message: unknown): message is FromWorker {
  return typeof message === 'object' && message !== null && 'type' in message;
}

export function isToWorker(message: unknown): message is ToWorker {
  return typeof message === 'object' && message !== null && 'type' in message;
}
