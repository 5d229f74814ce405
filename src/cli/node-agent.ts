// The composition root of `weft node`: wires config -> enrollment/datapath -> proxy ->
// telemetry for one node and owns their lifetimes. All mutable process state lives here;
// the modules it wires keep only what they are handed.
import { existsSync, readFileSync } from 'node:fs';
import {
  interfaceIndex,
  listInterfaces,
  resolveAttachMode,
  type Interface,
} from '../bpf/attach.js';
import { ListenerSlot } from '../bpf/weft-maps.js';
import { ConfigStore, FileSource } from '../config/index.js';
import { NodeProxy } from '../proxy/node-proxy.js';
import { Datapath, removeDatapath } from '../redirect/datapath.js';
import {
  describeLocalPods,
  reconcileHostAddrs,
  reconcilePodMaps,
  type LocalPod,
} from '../redirect/enrollment.js';
import { hostAddresses } from '../redirect/interfaces.js';
import { openCaptureListener, type CaptureListener } from '../redirect/listeners.js';
import { AccessLog } from '../telemetry/access-log.js';
import type { Logger } from '../telemetry/logger.js';
import { CliError, type NodeOptions } from './options.js';

/** Fails with one clear line when the process cannot load BPF programs or change routing. */
export function assertPrivileges(): void {
  if (process.getuid?.() === 0) return;
  const capEff = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
  const caps = BigInt(`0x${capEff ?? '0'}`);
  const has = (bit: number) => (caps >> BigInt(bit)) & 1n;
  const CAP_NET_ADMIN = 12;
  const CAP_SYS_ADMIN = 21;
  const CAP_BPF = 39;
  if (has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))) return;
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
  private source?: FileSource;
  private datapath?: Datapath;
  private readonly listeners: CaptureListener[] = [];
  private proxy?: NodeProxy;
  private scanTimer?: NodeJS.Timeout;
  private localPods: LocalPod[] = [];
  private readonly reportedProblems = new Set<string>();
  private stopping = false;

  constructor(
    private readonly options: NodeOptions,
    private readonly log: Logger,
  ) {
    this.store = new ConfigStore({ logger: log.child({ component: 'config' }) });
  }

  async start(): Promise<void> {
    const { options, log } = this;
    const attachMode = resolveAttachMode(options.attachMode);
    const freshInstall = !existsSync(`${options.bpffs}/maps`);
    if (options.uplinks) for (const name of options.uplinks) interfaceIndex(name);

    this.source = new FileSource({
      path: options.config,
      store: this.store,
      logger: log.child({ component: 'config' }),
    });
    this.source.on('errors', (errors) => {
      for (const error of errors)
        log.error({ error: String(error) }, 'config rejected; last good version stays');
    });
    const report = await this.source.start();
    if (report.errors.length > 0) {
      throw new CliError(
        `${options.config} has ${report.errors.length} invalid object(s):\n  ${report.errors.map(String).join('\n  ')}\nfix them and start again`,
      );
    }

    this.proxy = new NodeProxy({
      nodeName: options.nodeName,
      workloads: this.store,
      observer: new AccessLog(log.child({ component: 'access' })),
      connectTimeoutMs: options.connectTimeoutMs,
    });
    // Listeners first: a busy port is the likeliest start-up failure, found before any
    // kernel state changes.
    this.listeners.push(
      await openCaptureListener(
        'outbound',
        options.listenAddress,
        options.outboundPort,
        this.proxy.handleOutbound,
      ),
      await openCaptureListener(
        'inbound',
        options.listenAddress,
        options.inboundPort,
        this.proxy.handleInbound,
      ),
    );

    try {
      this.datapath = Datapath.open({
        bpffsDir: options.bpffs,
        attachMode,
        routing: routingOf(options),
        hbonePort: options.hbonePort,
      });
      // The listeners go in before any interface is attached, so capture never starts
      // without somewhere to deliver.
      this.datapath.setListener(ListenerSlot.Outbound, this.listeners[0]!.fd);
      this.datapath.setListener(ListenerSlot.Inbound, this.listeners[1]!.fd);
      this.reconcile();
    } catch (error) {
      await this.closeListeners();
      this.datapath?.close();
      if (freshInstall) {
        // Nothing served before this process: leave the node as it was.
        removeDatapath({ bpffsDir: options.bpffs, attachMode, routing: routingOf(options) });
      }
      throw error;
    }

    this.store.on('change', () => this.safely(() => this.reconcile()));
    this.scanTimer = setInterval(
      () => this.safely(() => this.reconcile()),
      options.interfaceScanMs,
    );
    this.scanTimer.unref();
    log.info(
      {
        node: options.nodeName,
        attachMode,
        interfaces: this.datapath.attachedInterfaces().map((i) => i.name),
        pods: this.localPods.map((p) => ({
          pod: `${p.workload.namespace}/${p.workload.name}`,
          ip: p.workload.ip,
          enrolled: p.enrolled,
        })),
      },
      'node proxy ready',
    );
  }

  /** Stops accepting (new connections are dropped in BPF: fail closed), drains, keeps pins. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.scanTimer);
    await this.source?.stop();
    await this.closeListeners();
    const reset = (await this.proxy?.drain(this.options.drainGraceMs)) ?? 0;
    this.datapath?.close();
    this.log.info(
      { resetConnections: reset },
      'node proxy stopped; BPF state stays pinned (fail closed)',
    );
  }

  private async closeListeners(): Promise<void> {
    await Promise.all(this.listeners.splice(0).map((l) => l.close()));
  }

  private safely(action: () => void): void {
    if (this.stopping) return;
    try {
      action();
    } catch (error) {
      this.log.error({ err: error }, 'reconcile failed; will retry');
    }
  }

  /** Brings maps and attachments in line with the config and the interfaces present. */
  private reconcile(): void {
    const datapath = this.datapath!;
    const interfaces = listInterfaces();
    datapath.forgetMissing(interfaces);
    const workloads = this.store.workloadsOnNode(this.options.nodeName);
    this.localPods = describeLocalPods(workloads, (n) => this.store.namespace(n), interfaces);
    const podIfaces = new Set(this.localPods.flatMap((p) => (p.iface ? [p.iface.index] : [])));

    reconcileHostAddrs(datapath.maps, hostAddresses());
    const result = reconcilePodMaps(datapath.maps, this.localPods);
    for (const iface of interfaces) {
      if (this.shouldAttach(iface, podIfaces)) datapath.attach(iface);
    }
    for (const ip of result.enrolled)
      this.log.info({ ip }, 'pod enrolled: its TCP is now captured');
    for (const ip of result.unenrolled) this.log.info({ ip }, 'pod unenrolled');
    for (const problem of result.problems) {
      if (this.reportedProblems.has(problem)) continue;
      this.reportedProblems.add(problem);
      this.log.error({ problem }, 'pod cannot be fully captured');
    }
  }

  private shouldAttach(iface: Interface, podIfaces: ReadonlySet<number>): boolean {
    if (iface.name === 'lo') return false;
    if (!this.options.uplinks) return true;
    return podIfaces.has(iface.index) || this.options.uplinks.includes(iface.name);
  }
}
