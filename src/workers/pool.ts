// pool.ts: the control plane's data-plane workers. It forks them (IPC with structured clone),
// hands each its start-up state, broadcasts state and certificate changes, asks them for
// metrics and connections, restarts a worker that died (bounded exponential backoff; its
// SOCKMAP slots are empty meanwhile and the BPF program sends its share to the others), and
// stops them all with the usual drain. It knows nothing of what the messages mean.
import { fork, type ChildProcess } from 'node:child_process';
import type { Logger } from '../telemetry/logger.js';
import { isFromWorker, type FromWorker, type QueryKind, type ToWorker } from './protocol.js';

type Init = Extract<ToWorker, { type: 'init' }>;

export interface WorkerPoolOptions {
  readonly count: number;
  /** The worker program (dist/src/workers/main.js). */
  readonly entry: string;
  readonly log: Logger;
  /** The start-up message of a worker, built from the state in force when it (re)starts. */
  readonly initFor: (worker: number) => Init;
  /** A direct-path verdict a worker decided. */
  readonly onAllow: (message: Extract<FromWorker, { type: 'allow' }>) => void;
  /** The whole state in force, for a worker that found a change missing. */
  readonly stateFor: () => Extract<ToWorker, { type: 'state' }>;
  readonly restartBackoff?: { readonly initialMs: number; readonly maxMs: number };
}

interface Running {
  readonly index: number;
  readonly child: ChildProcess;
  readonly startedAt: number;
  ready: boolean;
  readonly exited: Promise<void>;
}

/** A worker that lived this long is healthy again: its next crash restarts it at once. */
const HEALTHY_AFTER_MS = 30_000;

export class WorkerPool {
  private readonly running: (Running | undefined)[];
  private readonly failures: number[];
  private readonly restartTimers = new Set<NodeJS.Timeout>();
  private readonly pending = new Map<number, (value: unknown) => void>();
  private readonly readyWaiters = new Map<number, (error?: Error) => void>();
  private nextQuery = 1;
  private stopping = false;

  constructor(private readonly options: WorkerPoolOptions) {
    this.running = new Array<Running | undefined>(options.count).fill(undefined);
    this.failures = new Array<number>(options.count).fill(0);
  }

  get count(): number {
    return this.options.count;
  }

  /** Forks every worker and waits (bounded) until each has its listeners in its slots. */
  async start(timeoutMs: number): Promise<void> {
    const started = Array.from({ length: this.count }, (_, i) => this.spawn(i));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`data-plane workers not ready after ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      await Promise.race([Promise.all(started), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Workers whose listeners are in their slots. */
  serving(): number {
    return this.running.filter((r) => r?.ready).length;
  }

  /** pid per worker index (undefined while one is down). */
  pids(): (number | undefined)[] {
    return this.running.map((r) => (r?.ready ? r.child.pid : undefined));
  }

  broadcast(message: ToWorker): void {
    for (const r of this.running) {
      if (r?.child.connected) r.child.send(message);
    }
  }

  /** Asks every live worker; a worker that does not answer within `timeoutMs` is left out. */
  async query(what: QueryKind, timeoutMs = 2000): Promise<unknown[]> {
    const asks = this.running
      .filter((r): r is Running => r !== undefined && r.ready && r.child.connected)
      .map(
        (r) =>
          new Promise<unknown>((resolve) => {
            const id = this.nextQuery++;
            const timer = setTimeout(() => {
              this.pending.delete(id);
              resolve(undefined);
            }, timeoutMs);
            this.pending.set(id, (value) => {
              clearTimeout(timer);
              this.pending.delete(id);
              resolve(value);
            });
            r.child.send({ type: 'query', id, what } satisfies ToWorker);
          }),
      );
    return (await Promise.all(asks)).filter((v) => v !== undefined);
  }

  /** Every worker drains (as a single process would) and exits; bounded by the grace. */
  async stop(drainGraceMs: number): Promise<void> {
    this.stopping = true;
    for (const timer of this.restartTimers) clearTimeout(timer);
    this.restartTimers.clear();
    const live = this.running.filter((r): r is Running => r !== undefined);
    for (const r of live) {
      if (r.child.connected) r.child.send({ type: 'stop', drainGraceMs } satisfies ToWorker);
    }
    const bound = drainGraceMs + 5000;
    await Promise.all(
      live.map(async (r) => {
        const timer = setTimeout(() => r.child.kill('SIGKILL'), bound);
        await r.exited;
        clearTimeout(timer);
      }),
    );
  }

  private spawn(index: number): Promise<void> {
    const { log } = this.options;
    const child = fork(this.options.entry, [], {
      serialization: 'advanced',
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const running: Running = { index, child, startedAt: Date.now(), ready: false, exited };
    this.running[index] = running;
    const ready = new Promise<void>((resolve, reject) => {
      this.readyWaiters.set(index, (error) => (error ? reject(error) : resolve()));
    });
    child.on('message', (message: unknown) => {
      if (isFromWorker(message)) this.onMessage(running, message);
    });
    child.once('exit', (code, signal) => this.onExit(running, code, signal));
    child.send(this.options.initFor(index));
    log.debug({ worker: index, pid: child.pid }, 'data-plane worker forked');
    return ready;
  }

  private onMessage(r: Running, message: FromWorker): void {
    switch (message.type) {
      case 'ready':
        r.ready = true;
        this.options.log.info({ worker: r.index, pid: message.pid }, 'data-plane worker ready');
        this.readyWaiters.get(r.index)?.();
        this.readyWaiters.delete(r.index);
        return;
      case 'failed':
        this.options.log.error(
          { worker: r.index, error: message.message },
          'data-plane worker failed to start',
        );
        this.readyWaiters.get(r.index)?.(new Error(`worker ${r.index}: ${message.message}`));
        this.readyWaiters.delete(r.index);
        return;
      case 'allow':
        this.options.onAllow(message);
        return;
      case 'resync':
        this.options.log.warn(
          { worker: r.index, generation: message.generation },
          'a data-plane worker missed a state change: sending it the whole state',
        );
        if (r.child.connected) r.child.send(this.options.stateFor());
        return;
      case 'reply':
        this.pending.get(message.id)?.(message.value);
        return;
      case 'stopped':
        this.options.log.info(
          { worker: r.index, resetConnections: message.resetConnections },
          'data-plane worker stopped',
        );
        return;
    }
  }

  private onExit(r: Running, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.running[r.index] === r) this.running[r.index] = undefined;
    const waiter = this.readyWaiters.get(r.index);
    if (waiter) {
      this.readyWaiters.delete(r.index);
      waiter(new Error(`worker ${r.index} exited (code ${code}, signal ${signal}) before ready`));
    }
    if (this.stopping) return;
    const lived = Date.now() - r.startedAt;
    if (lived >= HEALTHY_AFTER_MS) this.failures[r.index] = 0;
    const failures = ++this.failures[r.index]!;
    const backoff = this.options.restartBackoff ?? { initialMs: 200, maxMs: 10_000 };
    const delay = Math.min(backoff.maxMs, backoff.initialMs * 2 ** Math.min(failures - 1, 20));
    this.options.log.error(
      { worker: r.index, pid: r.child.pid, code, signal, restartInMs: delay },
      'data-plane worker exited; its share of new connections goes to the others until it is back',
    );
    const timer = setTimeout(() => {
      this.restartTimers.delete(timer);
      if (this.stopping) return;
      this.spawn(r.index).catch((error: unknown) =>
        this.options.log.error(
          { worker: r.index, error: (error as Error).message },
          'data-plane worker restart failed',
        ),
      );
    }, delay);
    this.restartTimers.add(timer);
  }
}
