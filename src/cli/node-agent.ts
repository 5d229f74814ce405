// The composition root of `weft node`: wires config -> enrollment/datapath, identity ->
// proxy -> telemetry for one node and owns their lifetimes. All mutable process state lives
// here; the modules it wires keep only what they are handed.
import { existsSync, readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { AggregatorRegistry, type Registry } from 'prom-client';
import {
  interfaceIndex,
  listInterfaces,
  resolveAttachMode,
  type Interface,
} from '../bpf/attach.js';
import {
  ConfigStore,
  FileSource,
  changedObjects,
  stateObjects,
  type Workload,
} from '../config/index.js';
import type { KubeSource } from '../config/kube-source.js';
import {
  CertificateManager,
  TrustBundles,
  loadIssuer,
  peerChain,
  validatePeer,
} from '../identity/index.js';
import { HBONE_CIPHERSUITES, HbonePool, type VerifyPeer } from '../proxy/hbone/index.js';
import type { DirectPathControl } from '../proxy/direct-flows.js';
import { ServiceResolver } from '../lb/index.js';
import { PolicyEngine } from '../policy/index.js';
import { NodeProxy, tunnelSourceKey, type TunnelCredentials } from '../proxy/node-proxy.js';
import { Datapath, predecessorServes, removeDatapath } from '../redirect/datapath.js';
import { DirectPath } from '../redirect/direct-path.js';
import {
  describeLocalPods,
  isEnrolled,
  reconcileAddressSet,
  reconcilePodMaps,
  type LocalPod,
} from '../redirect/enrollment.js';
import { hostAddresses } from '../redirect/interfaces.js';
import { openCaptureListener, type CaptureListener } from '../redirect/listeners.js';
import {
  adminHandler,
  listenReusePort,
  metricsHandler,
  readinessHandler,
  type HttpEndpoint,
} from '../telemetry/http-servers.js';
import type { Logger } from '../telemetry/logger.js';
import { MeshMetrics } from '../telemetry/metrics.js';
import { WorkerPool } from '../workers/pool.js';
import type { StateSnapshot, ToWorker, WorkerCertificate } from '../workers/protocol.js';
import {
  buildNodeProxy,
  connectionsOf,
  identityOf,
  meshDirectory,
  type ConnectionView,
} from './data-plane.js';
import { DEFAULT_HEAP_TRIM, heapTrimLogger, startHeapTrim } from './heap-trim.js';
import { registerNodeMetrics } from './node-metrics.js';
import { CliError, type NodeOptions } from './options.js';
import type { StatusDump } from './status.js';

/** The data-plane worker program, next to this file in dist/. */
const WORKER_ENTRY = fileURLToPath(new URL('../workers/main.js', import.meta.url));

const CAP_NET_ADMIN = 12;
const CAP_SYS_ADMIN = 21;
const CAP_BPF = 39;

/** Whether this process has a capability: by CapEff, since uid 0 in a container may lack some. */
function hasCapability(bit: number): boolean {
  const capEff = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
  return ((BigInt(`0x${capEff ?? '0'}`) >> BigInt(bit)) & 1n) === 1n;
}

/** Fails with one clear line when the process cannot load BPF programs or change routing. */
export function assertPrivileges(): void {
  if (hasCapability(CAP_NET_ADMIN) && (hasCapability(CAP_BPF) || hasCapability(CAP_SYS_ADMIN)))
    return;
  throw new CliError(
    'weft node needs root, or the capabilities CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN on kernels before 5.8): run it with sudo or grant them',
  );
}

function routingOf(options: NodeOptions) {
  return {
    mark: options.fwmark,
    mask: options.fwmarkMask,
    table: options.routeTable,
    rulePriority: options.rulePriority,
  };
}

/** `weft node --cleanup`: removes everything weft added on this node. */
export function cleanupNode(options: NodeOptions, log: Logger): void {
  const attachMode = resolveAttachMode(options.attachMode);
  const removed = removeDatapath({
    bpffsDir: options.bpffs,
    attachMode,
    routing: routingOf(options),
  });
  log.info({ removed }, `cleanup: removed ${removed.length} item(s) weft had added`);
}

export class NodeAgent {
  private readonly store: ConfigStore;
  private source?: FileSource | KubeSource;
  /** Pods this process has marked `weft.io/redirection: enabled` (Kubernetes source only). */
  private readonly marked = new Map<string, string | null>();
  /** The problems of the last config load, if it had any (for /config_dump and metrics). */
  private lastReloadErrors: string[] = [];
  private datapath?: Datapath;
  private directPath?: DirectPath;
  private certificates?: CertificateManager;
  private bundles?: TrustBundles;
  /** Whether allowed same-node pairs pass in BPF (decided once, at start). */
  private directPathOn = false;
  private readonly listeners: CaptureListener[] = [];
  private readonly endpoints: HttpEndpoint[] = [];
  /**
   * Relays connections with one process; with workers, only keeps the direct-path flows
   * (counted, logged, re-checked and cut in one place).
   */
  private proxy?: NodeProxy;
  /** The data-plane workers, with --workers above 1. */
  private pool?: WorkerPool;
  private stopHeapTrim?: () => void;
  private readonly metrics: MeshMetrics;
  private readonly resolver: ServiceResolver;
  private readonly policy = new PolicyEngine();
  private readonly reportedPolicyNotes = new Set<string>();
  private policyInputs?: { policies: unknown; peerAuths: unknown };
  private scanTimer?: NodeJS.Timeout;
  private localPods: LocalPod[] = [];
  private readonly reportedProblems = new Set<string>();
  private attached = false;
  private lastSignature = '';
  private stopping = false;

  constructor(
    private readonly options: NodeOptions,
    private readonly log: Logger,
  ) {
    this.store = new ConfigStore({ logger: log.child({ component: 'config' }) });
    this.metrics = new MeshMetrics({ seriesBudget: options.seriesBudget });
    this.resolver = new ServiceResolver(this.store, options.nodeName);
  }

  async start(): Promise<void> {
    const { options, log } = this;
    const attachMode = resolveAttachMode(options.attachMode);
    const freshInstall = !existsSync(`${options.bpffs}/maps`);
    if (options.uplinks) for (const name of options.uplinks) interfaceIndex(name);

    const tunnels = options.ca ? await this.loadIdentity(options.ca) : undefined;
    if (!tunnels) {
      log.warn({}, 'no --ca: traffic between nodes that needs a tunnel is refused (fail closed)');
    }

    // Loaded only against a cluster: the Kubernetes client is ~25 MB of heap a node running
    // from files never needs.
    const { KubeSource } =
      options.config === 'kube'
        ? await import('../config/kube-source.js')
        : { KubeSource: undefined };
    this.source =
      KubeSource !== undefined
        ? new KubeSource({
            store: this.store,
            logger: log.child({ component: 'config' }),
            // A cluster without Istio's CRDs simply has no such policies.
            optionalKinds: ['AuthorizationPolicy', 'PeerAuthentication'],
          })
        : new FileSource({
            path: options.config,
            store: this.store,
            logger: log.child({ component: 'config' }),
          });
    this.source.on('load', (report) => {
      this.lastReloadErrors = report.errors.map(String);
    });
    this.source.on('errors', (errors) => {
      for (const error of errors) {
        log.error({ error: String(error) }, 'config rejected; the last good version stays');
      }
    });
    const report = await this.source.start();
    if (report.errors.length > 0) {
      throw new CliError(
        `${options.config} has ${report.errors.length} invalid object(s):\n  ${report.errors.map(String).join('\n  ')}\nfix them and start again`,
      );
    }

    const multi = options.workers > 1;
    this.directPathOn = this.directPathWanted();
    this.proxy = buildNodeProxy({
      options,
      log,
      directory: meshDirectory(this.store, options.trustDomain),
      resolver: this.resolver,
      metrics: this.metrics,
      policy: this.policy,
      // With workers, this process relays nothing: the workers hold the tunnels.
      tunnels: multi ? undefined : tunnels,
      directPath: this.directPathOn ? this.directPathControl() : undefined,
    });
    this.rebuildPolicy();
    // Listeners and HTTP endpoints first: a busy port is the likeliest start-up failure, found
    // before any kernel state changes.
    const proxy = this.proxy;
    // A weft already serving this node (the old pod of a rolling update) keeps its ports;
    // this process listens elsewhere and takes over through the SOCKMAP below.
    const takeover = predecessorServes(options.bpffs);
    if (takeover) log.info({}, 'another weft node serves this node: taking over');
    const listen = (name: string, port: number, handler: (s: Socket) => void) =>
      openCaptureListener(name, options.listenAddress, port, handler, { takeover });
    try {
      // Workers open their own listeners, on ephemeral ports.
      if (!multi) {
        this.listeners.push(
          await listen('outbound', options.outboundPort, proxy.handleOutbound),
          await listen('inbound', options.inboundPort, proxy.handleInbound),
          await listen('hbone', options.hbonePort, proxy.handleHbone),
        );
      }
      await this.openHttpEndpoints();
    } catch (error) {
      await this.closeEndpoints();
      throw error;
    }

    try {
      this.datapath = Datapath.open({
        bpffsDir: options.bpffs,
        attachMode,
        routing: routingOf(options),
        hbonePort: options.hbonePort,
      });
      this.directPath = new DirectPath(this.datapath.maps);
      // Verdicts are this process's decisions; a predecessor's (other config) are not.
      this.directPath.clearVerdicts();
      this.reconcile();
      // Certificates before listeners: once a listener is in its slot, connections arrive.
      await this.certificatesReady(15_000);
      // The hand-over point: each slot switches atomically from a predecessor's listener
      // (or from empty, where SYNs were dropped: fail closed) to ours.
      if (multi) {
        // Each worker swaps its listeners into its own slots (slot by slot, atomically);
        // connections spread over all of them only once every one is in.
        this.pool = this.workerPool(options.workers);
        await this.pool.start(20_000);
      } else {
        this.datapath.slots.fill(0, this.listeners);
      }
      this.datapath.setWorkerCount(options.workers);
      this.attached = true;
    } catch (error) {
      await this.pool?.stop(0);
      await this.closeEndpoints();
      this.datapath?.close();
      if (freshInstall) {
        // Nothing served before this process: leave the node as it was.
        removeDatapath({ bpffsDir: options.bpffs, attachMode, routing: routingOf(options) });
      }
      throw error;
    }

    this.store.on('change', (state, diff) => {
      // First and on its own: a worker holds the state before this change (its start-up
      // state, then each change in order) and asks for the whole state if one goes missing.
      this.safely(() =>
        this.pool?.broadcast({
          type: 'stateChange',
          change: { generation: state.generation, ...changedObjects(state, diff) },
        }),
      );
      this.safely(() => {
        this.reconcile(Date.now());
        this.proxy?.invalidateDirectVerdicts();
        this.resolver.retainLive();
        this.rebuildPolicy();
      });
    });
    // The periodic scan only looks for interfaces (and addresses) that came or went; a full
    // reconcile, which reads every map entry, runs only when they did.
    this.scanTimer = setInterval(
      () =>
        this.safely(() => {
          if (this.interfacesSignature() !== this.lastSignature) this.reconcile();
        }),
      options.interfaceScanMs,
    );
    this.scanTimer.unref();
    log.info(
      {
        node: options.nodeName,
        attachMode,
        mtls: tunnels !== undefined,
        workers: this.pool?.pids(),
        interfaces: this.datapath.attachedInterfaces().map((i) => i.name),
        pods: this.localPods.map((p) => ({
          pod: `${p.workload.namespace}/${p.workload.name}`,
          ip: p.workload.ip,
          enrolled: p.enrolled,
          identity: p.enrolled ? this.identityOf(p.workload) : undefined,
        })),
      },
      'node proxy ready',
    );
    this.stopHeapTrim = startHeapTrim({ ...DEFAULT_HEAP_TRIM, onTrim: heapTrimLogger(this.log) });
  }

  /**
   * Stops accepting, drains, keeps pins. When a successor has taken the listener slots, the
   * queued connections of ours are accepted first (closing a listener would reset them);
   * otherwise the slots empty as our listeners close, and new connections are dropped in BPF
   * (fail closed).
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.scanTimer);
    this.stopHeapTrim?.();
    await this.source?.stop();
    const replaced =
      this.listeners.length > 0 && (this.datapath?.slots.replaced(0, this.listeners) ?? false);
    if (replaced) {
      this.log.info(
        {},
        'a successor holds the listener slots: accepting what is queued, then closing',
      );
      await new Promise((resolve) => setTimeout(resolve, HANDOVER_ACCEPT_MS));
    }
    await Promise.all(this.listeners.splice(0).map((l) => l.close()));
    const [reset] = await Promise.all([
      this.proxy?.drain(this.options.drainGraceMs) ?? 0,
      this.pool?.stop(this.options.drainGraceMs),
    ]);
    await Promise.all(this.endpoints.splice(0).map((e) => e.close()));
    this.certificates?.close();
    this.datapath?.close();
    this.log.info(
      { resetConnections: reset },
      'node proxy stopped; BPF state stays pinned (fail closed)',
    );
  }

  /** Waits (bounded) until every enrolled local pod's identity has a certificate. */
  private async certificatesReady(timeoutMs: number): Promise<void> {
    const certificates = this.certificates;
    if (!certificates) return;
    const identities = new Set(
      this.localPods.filter((p) => p.enrolled).map((p) => this.identityOf(p.workload)),
    );
    const results = await Promise.allSettled(
      [...identities].map((id) => certificates.ready(id, timeoutMs)),
    );
    const missing = [...identities].filter((_, i) => results[i]!.status === 'rejected');
    if (missing.length > 0) {
      this.log.error(
        { identities: missing },
        'no certificate yet: tunnels for these identities are refused until one is minted',
      );
    }
  }

  private async closeEndpoints(): Promise<void> {
    await Promise.all(this.listeners.splice(0).map((l) => l.close()));
    await Promise.all(this.endpoints.splice(0).map((e) => e.close()));
  }

  private async loadIdentity(caDir: string): Promise<TunnelCredentials> {
    const { options, log } = this;
    let issuer;
    try {
      issuer = await loadIssuer(caDir);
    } catch (error) {
      throw new CliError(`--ca ${caDir}: ${(error as Error).message}`);
    }
    const bundles = new TrustBundles([[options.trustDomain, issuer.roots]]);
    this.bundles = bundles;
    this.certificates = new CertificateManager({
      issuer,
      trustDomain: options.trustDomain,
      bundles,
      ttlMs: options.certTtlMs,
      logger: log.child({ component: 'identity' }),
      secureContextOptions: {
        ciphers: HBONE_CIPHERSUITES,
        honorCipherOrder: true,
        maxVersion: 'TLSv1.3',
      },
    });
    const pool = new HbonePool({ logger: log.child({ component: 'hbone' }) });
    this.certificates.on('rotated', (e) => {
      // Tunnels made with the old certificate take no new streams and close when idle.
      if (e.previousSerial) pool.retireSource(tunnelSourceKey(e.spiffeId, e.previousSerial));
      log.info(
        {
          identity: e.spiffeId,
          serial: e.serial,
          notAfter: e.notAfter,
          previous: e.previousSerial,
        },
        'certificate issued',
      );
      const certificate = this.workerCertificate(e.spiffeId, e.previousSerial);
      if (certificate) this.pool?.broadcast({ type: 'certificate', certificate });
    });
    this.certificates.on('dropped', (e) =>
      this.pool?.broadcast({ type: 'certificateDropped', spiffeId: e.spiffeId }),
    );
    this.certificates.on('mintFailed', (e) =>
      log.error(
        { identity: e.spiffeId, error: e.error.message, retryInMs: e.retryInMs },
        'certificate minting failed',
      ),
    );
    const verifyPeer: VerifyPeer = (socket) => {
      const verdict = validatePeer(peerChain(socket), bundles, new Date());
      return verdict.ok ? { ok: true, identity: verdict.spiffeId.uri } : verdict;
    };
    const certificates = this.certificates;
    return {
      credentials: (identity) => {
        const current = certificates.current(identity);
        return current && { context: current.secureContext, serial: current.svid.serial };
      },
      verifyPeer,
      pool,
    };
  }

  private identityOf(workload: Workload): string {
    return identityOf(this.options.trustDomain, workload);
  }

  /** The cluster state in force, as a worker rebuilds it. */
  private snapshot(): StateSnapshot {
    return { generation: this.store.generation, objects: stateObjects(this.store.state) };
  }

  /** A certificate as a worker needs it (key included: it never reaches a log). */
  private workerCertificate(
    spiffeId: string,
    previousSerial?: string,
  ): WorkerCertificate | undefined {
    const current = this.certificates?.current(spiffeId);
    if (!current) return undefined;
    const { svid } = current;
    return {
      spiffeId,
      serial: svid.serial,
      keyPem: svid.keyPem,
      chainPem: svid.chainPem,
      notAfter: svid.notAfter,
      previousSerial,
    };
  }

  private trustBundles(): [string, string][] {
    const bundles = this.bundles;
    if (!bundles) return [];
    return bundles.trustDomains().map((td) => [td, bundles.pem(td)!]);
  }

  private workerPool(count: number): WorkerPool {
    const initFor = (worker: number): Extract<ToWorker, { type: 'init' }> => ({
      type: 'init',
      worker,
      options: this.options,
      directPath: this.directPathOn,
      state: this.snapshot(),
      bundles: this.trustBundles(),
      certificates: (this.certificates?.list() ?? []).flatMap((c) => {
        const certificate = this.workerCertificate(c.spiffeId);
        return certificate ? [certificate] : [];
      }),
    });
    return new WorkerPool({
      count,
      entry: WORKER_ENTRY,
      log: this.log.child({ component: 'workers' }),
      initFor,
      stateFor: () => ({ type: 'state', state: this.snapshot() }),
      // A verdict decided against an older state than ours may be stale: the cleared map
      // stays clear, and the next connection of the pair is decided again.
      onAllow: (message) => {
        if (message.generation === this.store.generation && !this.stopping) {
          this.directPath?.allow(message.verdict);
        }
      },
    });
  }

  private async openHttpEndpoints(): Promise<void> {
    const { options } = this;
    this.registerScrapeMetrics();
    this.endpoints.push(
      await listenReusePort(
        'admin',
        '127.0.0.1',
        options.adminPort,
        adminHandler(
          {
            configDump: () => this.configDump(),
            connections: () => this.connections(),
            pools: () => this.allPoolStats(),
            status: () => this.status(),
            levelChanged: (level) => this.pool?.broadcast({ type: 'logLevel', level }),
          },
          this.log,
        ),
      ),
      await listenReusePort(
        'metrics',
        '0.0.0.0',
        options.metricsPort,
        metricsHandler(
          options.workers > 1
            ? this.aggregatedMetrics(this.metrics.registry)
            : this.metrics.registry,
        ),
      ),
      await listenReusePort(
        'readiness',
        '0.0.0.0',
        options.readinessPort,
        readinessHandler({ notReadyReason: () => this.notReadyReason() }),
      ),
    );
  }

  /** One exposition for the node: this process's registry summed with every worker's. */
  private aggregatedMetrics(own: Registry) {
    return {
      contentType: own.contentType,
      metrics: async () => {
        const workers = (await this.pool?.query('metrics')) ?? [];
        const all = [await own.getMetricsAsJSON(), ...workers] as object[];
        return AggregatorRegistry.aggregate(all).metrics();
      },
    };
  }

  private notReadyReason(): string | undefined {
    if (this.stopping) return 'draining';
    if (!this.attached) return 'BPF programs not attached yet';
    if (this.pool && this.pool.serving() === 0) return 'no data-plane worker is serving';
    if (this.certificates) {
      const missing = this.localPods.filter(
        (p) => p.enrolled && !this.certificates!.current(this.identityOf(p.workload)),
      );
      if (missing.length > 0)
        return `certificates not minted yet for ${missing.map((p) => p.workload.name).join(', ')}`;
    }
    return undefined;
  }

  private registerScrapeMetrics(): void {
    registerNodeMetrics(this.metrics.registry, {
      localPods: () => this.localPods.map((p) => p.workload),
      podCounters: (ip) => this.datapath?.maps.counters.get(ip),
      certificates: () => this.certificates?.list() ?? [],
      // With workers, each reports its own pool (summed at scrape).
      hbonePool:
        this.options.workers === 1 ? () => ({ ...(this.poolStats().client ?? {}) }) : undefined,
      configGeneration: () => this.store.generation,
      lastReloadErrors: () => this.lastReloadErrors.length,
    });
  }

  private poolStats(): ReturnType<NodeProxy['tunnelStats']> {
    return this.proxy?.tunnelStats() ?? { client: undefined, server: undefined };
  }

  /** /debug/pools: this process's, or every worker's. */
  private async allPoolStats(): Promise<unknown> {
    if (!this.pool) return this.poolStats();
    return { workers: await this.pool.query('pools') };
  }

  /** Live connections: this process's (direct flows, with workers) and every worker's. */
  private async connections(): Promise<ConnectionView[]> {
    const own = connectionsOf(this.proxy);
    if (!this.pool) return own;
    const theirs = (await this.pool.query('connections')) as ConnectionView[][];
    return [...own, ...theirs.flat()];
  }

  private configDump() {
    const state = this.store.state;
    return {
      node: this.options.nodeName,
      generation: state.generation,
      trustDomain: this.options.trustDomain,
      workloads: [...state.workloads.values()].map((w) => ({
        pod: `${w.namespace}/${w.name}`,
        ip: w.ip,
        node: w.nodeName,
        serviceAccount: w.serviceAccount,
        enrolled: isEnrolled(w, state.namespaces.get(w.namespace)),
        identity: this.identityOf(w),
      })),
      namespaces: [...state.namespaces.values()],
      nodes: [...state.nodes.values()],
      services: [...state.services.values()],
      endpointSlices: [...state.endpointSlices.values()],
      authorizationPolicies: [...state.authorizationPolicies.values()],
      peerAuthentications: [...state.peerAuthentications.values()].map((p) => ({
        ...p,
        portLevelModes: Object.fromEntries(p.portLevelModes),
      })),
      certificates: this.certificates?.list() ?? [],
      lastReloadErrors: this.lastReloadErrors,
    };
  }

  private async status(): Promise<StatusDump> {
    const certs = new Map((this.certificates?.list() ?? []).map((c) => [c.spiffeId, c]));
    return {
      node: this.options.nodeName,
      generation: this.store.generation,
      pods: this.localPods.map((p) => {
        const counters = this.datapath?.maps.counters.get(p.workload.ip);
        const identity = p.enrolled ? this.identityOf(p.workload) : undefined;
        return {
          pod: `${p.workload.namespace}/${p.workload.name}`,
          ip: p.workload.ip,
          enrolled: p.enrolled,
          identity,
          certificateExpires: identity ? certs.get(identity)?.notAfter : undefined,
          counters:
            counters &&
            Object.fromEntries(Object.entries(counters).map(([k, v]) => [k, Number(v)])),
        };
      }),
      services: [...this.store.state.services.values()].map((svc) => {
        const endpoints = this.store
          .endpointSlicesFor(svc.namespace, svc.name)
          .flatMap((s) => s.endpoints);
        return {
          service: `${svc.namespace}/${svc.name}`,
          vips: [...svc.clusterIPs],
          ports: svc.ports.map((p) => `${p.port}/${p.protocol}`),
          endpoints: endpoints.length,
          ready: endpoints.filter((e) => e.ready).length,
        };
      }),
      connections: await this.connections(),
    };
  }

  /**
   * The direct path needs CAP_SYS_ADMIN: cutting a flow that a policy change denies means
   * aborting its socket inside the pod's network namespace. Without it every same-node
   * connection is relayed, so enforcement never depends on it.
   */
  private directPathWanted(): boolean {
    if (!this.options.directSameNode) return false;
    if (hasCapability(CAP_SYS_ADMIN)) return true;
    this.log.warn(
      {},
      'same-node direct path off: it needs CAP_SYS_ADMIN (to abort cut flows in pod network namespaces); every same-node connection is relayed',
    );
    return false;
  }

  /** The direct path as the proxy sees it; the maps exist only once the datapath is open. */
  private directPathControl(): DirectPathControl {
    const path = () => this.directPath;
    return {
      allow: (verdict) => path()?.allow(verdict) ?? false,
      clearVerdicts: () => path()?.clearVerdicts() ?? 0,
      flows: () => path()?.flows() ?? [],
      forget: (key) => path()?.forget(key),
      cut: (key) => path()?.cut(key) ?? 'the datapath is not open',
    };
  }

  private safely(action: () => void): void {
    if (this.stopping) return;
    try {
      action();
    } catch (error) {
      this.lastSignature = ''; // the next scan retries in full
      this.log.error({ err: error }, 'reconcile failed; will retry');
    }
  }

  /**
   * Brings maps, attachments and certificates in line with the config and interfaces.
   * `changedAt`: when the config change that triggered it arrived, to log how long an
   * annotation took to become capture.
   */
  private reconcile(changedAt?: number): void {
    const datapath = this.datapath!;
    const interfaces = listInterfaces();
    this.lastSignature = this.interfacesSignature(interfaces);
    datapath.forgetMissing(interfaces);
    const workloads = this.store.workloadsOnNode(this.options.nodeName);
    this.localPods = describeLocalPods(workloads, (n) => this.store.namespace(n), interfaces);
    const podIfaces = new Set(this.localPods.flatMap((p) => (p.iface ? [p.iface.index] : [])));

    reconcileAddressSet(datapath.maps.hostAddrs, hostAddresses());
    reconcileAddressSet(
      datapath.maps.serviceVips,
      [...this.store.state.services.values()].flatMap((svc) => svc.clusterIPs),
    );
    const result = reconcilePodMaps(datapath.maps, this.localPods);
    for (const iface of interfaces) {
      if (this.shouldAttach(iface, podIfaces)) datapath.attach(iface);
    }
    // Certificates only for service accounts with an enrolled pod on this node.
    this.certificates?.setWanted(this.localPods.filter((p) => p.enrolled).map((p) => p.workload));
    this.metrics.forgetWorkloadsExcept(
      new Set([...this.store.state.workloads.values()].map((w) => w.uid)),
    );
    this.markRedirection();
    for (const ip of result.enrolled) {
      const ms = changedAt === undefined ? undefined : Date.now() - changedAt;
      this.log.info({ ip, enrolledInMs: ms }, 'pod enrolled: its TCP is now captured');
    }
    for (const ip of result.unenrolled) this.log.info({ ip }, 'pod unenrolled');
    for (const problem of result.problems) {
      if (this.reportedProblems.has(problem)) continue;
      this.reportedProblems.add(problem);
      this.log.error({ problem }, 'pod cannot be fully captured');
    }
  }

  /**
   * Recompiles authorization when policies changed, logs once what cannot be enforced as
   * written, and closes live connections the new policy denies.
   */
  private rebuildPolicy(): void {
    const state = this.store.state;
    if (
      this.policyInputs?.policies === state.authorizationPolicies &&
      this.policyInputs.peerAuths === state.peerAuthentications
    ) {
      return;
    }
    this.policyInputs = {
      policies: state.authorizationPolicies,
      peerAuths: state.peerAuthentications,
    };
    const report = this.policy.rebuild(
      [...state.authorizationPolicies.values()],
      [...state.peerAuthentications.values()],
      { rootNamespace: this.options.rootNamespace, trustDomain: this.options.trustDomain },
    );
    const notes = [
      ...report.partiallyEnforced.map((n) => ({
        ...n,
        how: 'partially enforced at L4 (fail closed)',
      })),
      ...report.ignored.map((n) => ({ ...n, how: 'not enforced by the node proxy' })),
      ...report.invalid.map((n) => ({ ...n, how: 'has values that do not parse (fail closed)' })),
    ];
    for (const note of notes) {
      const key = `${note.kind}/${note.policy}: ${note.message}`;
      if (this.reportedPolicyNotes.has(key)) continue;
      this.reportedPolicyNotes.add(key);
      this.log.warn(
        { kind: note.kind, policy: note.policy, detail: note.message },
        `policy ${note.policy} ${note.how}`,
      );
    }
    const closed = this.proxy?.recheck() ?? 0;
    this.log.info(
      { enforced: report.enforced, closedConnections: closed },
      'authorization policies applied',
    );
  }

  /**
   * Against Kubernetes, enrolled pods carry `weft.io/redirection: enabled` (as Istio marks
   * `ambient.istio.io/redirection`), so `kubectl get pods -o yaml` shows what weft did.
   */
  private markRedirection(): void {
    const source = this.source;
    if (!source || !('patchPodAnnotation' in source)) return;
    for (const pod of this.localPods) {
      const key = `${pod.workload.namespace}/${pod.workload.name}`;
      // `failed`: enrolled, but its veth could not be found, so its outbound traffic is not
      // captured (the reason is in weft's log); absent: not enrolled.
      const want = !pod.enrolled ? null : pod.iface ? 'enabled' : 'failed';
      const has = pod.workload.annotations[REDIRECTION_ANNOTATION] ?? null;
      if (want === has || this.marked.get(key) === want) continue;
      this.marked.set(key, want);
      source
        .patchPodAnnotation(pod.workload.namespace, pod.workload.name, REDIRECTION_ANNOTATION, want)
        .catch((error: unknown) => {
          this.marked.delete(key);
          this.log.warn({ pod: key, error: (error as Error).message }, 'could not annotate pod');
        });
    }
  }

  /** What the scan compares: interfaces by index and name, and the node's addresses. */
  private interfacesSignature(interfaces: readonly Interface[] = listInterfaces()): string {
    return `${interfaces.map((i) => `${i.index}:${i.name}`).join(',')}|${hostAddresses().join(',')}`;
  }

  private shouldAttach(iface: Interface, podIfaces: ReadonlySet<number>): boolean {
    if (iface.name === 'lo') return false;
    if (!this.options.uplinks) return true;
    return podIfaces.has(iface.index) || this.options.uplinks.includes(iface.name);
  }
}

const REDIRECTION_ANNOTATION = 'weft.io/redirection';
/** How long a replaced process keeps accepting what was queued on its listeners. */
const HANDOVER_ACCEPT_MS = 1000;
