// main.ts: a data-plane worker process, forked by the control plane (pool.ts) with an IPC
// channel. It is the composition root of one worker: its own config store (rebuilt from the
// control plane's snapshots), resolver, policy engine, metrics registry and NodeProxy, and its
// own capture listeners on ephemeral ports, which it puts into its SOCKMAP slots itself. It
// never touches config sources, certificates' keys beyond using them, BPF programs or any
// map but the listener slots; the direct-path verdicts it decides go to the control plane.
import type { LevelWithSilent } from 'pino';
import type { Socket } from 'node:net';
import { ConfigStore } from '../config/index.js';
import { ServiceResolver } from '../lb/index.js';
import { PolicyEngine } from '../policy/index.js';
import type { DirectPathControl } from '../proxy/direct-flows.js';
import type { NodeProxy } from '../proxy/node-proxy.js';
import { ListenerSlots } from '../redirect/listener-slots.js';
import { openCaptureListener, type CaptureListener } from '../redirect/listeners.js';
import { DEFAULT_HEAP_TRIM, heapTrimLogger, startHeapTrim } from '../cli/heap-trim.js';
import { StateMirror } from './state-mirror.js';
import { createLogger, type Logger } from '../telemetry/logger.js';
import { MeshMetrics, scrapeMetric } from '../telemetry/metrics.js';
import { buildNodeProxy, connectionsOf, meshDirectory } from '../cli/data-plane.js';
import type { NodeOptions } from '../cli/options.js';
import { WorkerCredentials } from './credentials.js';
import { isToWorker, type FromWorker, type QueryKind, type ToWorker } from './protocol.js';

/** How long a replaced worker keeps accepting what was queued on its listeners. */
const HANDOVER_ACCEPT_MS = 1000;
const STATE_SOURCE = 'control-plane';

type Init = Extract<ToWorker, { type: 'init' }>;

class Worker {
  private readonly store: ConfigStore;
  private readonly resolver: ServiceResolver;
  private readonly policy = new PolicyEngine();
  private readonly metrics: MeshMetrics;
  private readonly credentials?: WorkerCredentials;
  private readonly proxy: NodeProxy;
  private readonly listeners: CaptureListener[] = [];
  private slots?: ListenerSlots;
  /** The control plane's state, kept in step; its generation tags direct-path verdicts. */
  private readonly state: StateMirror;
  private stopping = false;

  constructor(
    private readonly init: Init,
    private readonly log: Logger,
  ) {
    const { options } = init;
    this.store = new ConfigStore({ logger: log.child({ component: 'config' }) });
    this.state = new StateMirror(this.store, STATE_SOURCE, init.state);
    this.resolver = new ServiceResolver(this.store, options.nodeName);
    this.metrics = new MeshMetrics({ seriesBudget: options.seriesBudget });
    if (options.ca) {
      this.credentials = new WorkerCredentials(
        init.bundles,
        options.trustDomain,
        log.child({ component: 'hbone' }),
      );
      for (const certificate of init.certificates) this.credentials.put(certificate);
    }
    this.proxy = buildNodeProxy({
      options,
      log,
      directory: meshDirectory(this.store, options.trustDomain),
      resolver: this.resolver,
      metrics: this.metrics,
      policy: this.policy,
      tunnels: this.credentials?.tunnels(),
      directPath: init.directPath ? this.directPathControl() : undefined,
    });
    this.rebuildPolicy();
    scrapeMetric(
      this.metrics.registry,
      {
        name: 'weft_hbone_pool',
        help: 'HBONE client pool: live connections, open streams, handshakes done',
        type: 'gauge',
        labelNames: ['kind'],
      },
      () =>
        Object.entries(this.proxy.tunnelStats().client ?? {}).map(([kind, value]) => ({
          labels: { kind },
          value: Number(value),
        })),
    );
    this.store.on('change', () => {
      this.resolver.retainLive();
      this.metrics.forgetWorkloadsExcept(
        new Set([...this.store.state.workloads.values()].map((w) => w.uid)),
      );
      this.rebuildPolicy();
      const closed = this.proxy.recheck();
      if (closed > 0) this.log.info({ closedConnections: closed }, 'policy re-check closed');
    });
  }

  /** Opens the listeners (ephemeral ports: the SOCKMAP routes) and fills this worker's slots. */
  async start(): Promise<void> {
    const { options, worker } = this.init;
    const listen = (name: string, handler: (s: Socket) => void) =>
      openCaptureListener(`${name} (worker ${worker})`, options.listenAddress, 0, handler);
    this.listeners.push(
      await listen('outbound', this.proxy.handleOutbound),
      await listen('inbound', this.proxy.handleInbound),
      await listen('hbone', this.proxy.handleHbone),
    );
    this.slots = ListenerSlots.openPinned(options.bpffs);
    this.slots.fill(worker, this.listeners);
    // The process exits when it stops, which ends the (unref'd) timer too.
    startHeapTrim({ ...DEFAULT_HEAP_TRIM, onTrim: heapTrimLogger(this.log) });
  }

  handle(message: ToWorker): void {
    switch (message.type) {
      case 'stateChange':
        if (!this.state.apply(message.change)) {
          this.log.warn(
            { held: this.state.generation, change: message.change.generation },
            'a state change does not follow the state held here: asking for the whole state',
          );
          void send({ type: 'resync', generation: this.state.generation });
        }
        return;
      case 'state':
        this.state.reset(message.state);
        return;
      case 'certificate':
        this.credentials?.put(message.certificate);
        return;
      case 'certificateDropped':
        this.credentials?.drop(message.spiffeId);
        return;
      case 'query':
        this.answer(message.what).then(
          (value) => void send({ type: 'reply', id: message.id, value }),
          (error: unknown) =>
            void send({ type: 'reply', id: message.id, value: { error: String(error) } }),
        );
        return;
      case 'logLevel':
        this.log.level = message.level;
        return;
      case 'stop':
        void this.stop(message.drainGraceMs);
        return;
      case 'init':
        return;
    }
  }

  private async answer(what: QueryKind): Promise<unknown> {
    switch (what) {
      case 'metrics':
        return this.metrics.registry.getMetricsAsJSON();
      case 'connections':
        return connectionsOf(this.proxy, this.init.worker);
      case 'pools':
        return { worker: this.init.worker, ...this.proxy.tunnelStats() };
    }
  }

  /** The same drain as a single-process proxy's (see NodeAgent.stop), for this worker's slots. */
  async stop(drainGraceMs: number): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.slots?.replaced(this.init.worker, this.listeners)) {
      this.log.info(
        {},
        'a successor holds the listener slots: accepting what is queued, then closing',
      );
      await new Promise((resolve) => setTimeout(resolve, HANDOVER_ACCEPT_MS));
    }
    await Promise.all(this.listeners.splice(0).map((l) => l.close()));
    const reset = await this.proxy.drain(drainGraceMs);
    this.slots?.close();
    await send({ type: 'stopped', resetConnections: reset });
    process.exit(0);
  }

  /** The control plane gone (crashed or killed): stop accepting and leave at once. */
  abandon(): void {
    if (this.stopping) return;
    this.stopping = true;
    for (const listener of this.listeners) void listener.close();
    process.exit(1);
  }

  private rebuildPolicy(): void {
    const state = this.store.state;
    this.policy.rebuild(
      [...state.authorizationPolicies.values()],
      [...state.peerAuthentications.values()],
      {
        rootNamespace: this.init.options.rootNamespace,
        trustDomain: this.init.options.trustDomain,
      },
    );
  }

  /** Verdicts go to the control plane, which owns the verdict map and the flow poller. */
  private directPathControl(): DirectPathControl {
    return {
      allow: (verdict) => {
        void send({ type: 'allow', generation: this.state.generation, verdict });
        return true;
      },
      clearVerdicts: () => 0,
      flows: () => [],
      forget: () => undefined,
      cut: () => 'direct flows are the control plane’s',
    };
  }
}

/** Sends to the control plane; resolves once the message is handed to the channel. */
function send(message: FromWorker): Promise<void> {
  return new Promise((resolve) => {
    if (!process.connected || !process.send) return resolve();
    process.send(message, undefined, {}, () => resolve());
  });
}

async function fail(message: string): Promise<never> {
  await send({ type: 'failed', message });
  process.exit(1);
}

function main(): void {
  if (!process.send) {
    process.stderr.write('weft worker: must be started by `weft node --workers N`\n');
    process.exit(2);
  }
  // The control plane decides when workers stop: a signal sent to the whole process group
  // (Ctrl-C) must not cut them short of the drain it runs.
  process.on('SIGINT', () => undefined);
  process.on('SIGTERM', () => undefined);
  let worker: Worker | undefined;
  process.on('disconnect', () => (worker ? worker.abandon() : process.exit(1)));
  process.on('message', (message: unknown) => {
    if (!isToWorker(message)) return;
    if (message.type !== 'init') {
      worker?.handle(message);
      return;
    }
    if (worker) return;
    const options: NodeOptions = message.options;
    const log = createLogger(options.logLevel as LevelWithSilent, 'node', options.logBatchMs).child(
      {
        worker: message.worker,
      },
    );
    try {
      worker = new Worker(message, log);
    } catch (error) {
      void fail((error as Error).message);
      return;
    }
    worker.start().then(
      () => void send({ type: 'ready', pid: process.pid }),
      (error: unknown) => void fail((error as Error).message),
    );
  });
}

main();
