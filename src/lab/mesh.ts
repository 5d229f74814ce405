// lab/mesh.ts: runs weft node proxies on a Lab (one per node namespace) from manifests written
// into the lab's scratch directory, and reads back what they did (access log lines, BPF
// counters). Shared by the end-to-end tests, the benchmarks and `weft demo`. It starts and
// stops only the processes it spawned, by PID.
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { openPinnedCounters, type PodCounters } from '../bpf/weft-maps.js';
import { initCa } from '../identity/index.js';
import type { Lab, LabNode, LabProcess } from './cluster.js';

/** Node.js flags weft runs with in production (the DaemonSet's NODE_OPTIONS). */
export const WEFT_NODE_FLAGS = ['--max-semi-space-size=1'] as const;

export const WEFT_CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));

export interface AccessEntry {
  event: 'connection';
  id: number;
  direction: 'outbound' | 'inbound';
  path: string;
  datapath?: string;
  durationMs?: number;
  src: string;
  dst: string;
  srcWorkload?: string;
  dstWorkload?: string;
  srcIdentity?: string;
  dstIdentity?: string;
  service?: string;
  upstream?: string;
  security?: string;
  responseFlags?: string;
  policy?: string;
  bytesSent?: number;
  bytesReceived?: number;
  refused?: string;
  error?: string;
  /** The data-plane worker that relayed it (with --workers above 1). */
  worker?: number;
}

export interface MeshOptions {
  /** Annotations per Kubernetes namespace (e.g. enroll a whole namespace). */
  readonly namespaceAnnotations?: Record<string, Record<string, string>>;
  /** Extra `weft node` flags for every node. */
  readonly nodeArgs?: readonly string[];
  readonly logLevel?: string;
  /**
   * `--log-batch` for every node. Default `0` (each line written at once), so tests can count
   * access-log lines right after a connection closed; benchmarks pass the node's own default.
   */
  readonly logBatch?: string;
  /**
   * Run with a CA (`weft ca init` into the lab's directory, `--ca` on every node): cross-node
   * mesh traffic goes through HBONE. Default true. A per-node override lets a test give one
   * node a foreign CA.
   */
  readonly ca?: boolean;
  /** Extra flags per node name. */
  readonly perNodeArgs?: Record<string, readonly string[]>;
}

export class LabMesh {
  readonly configDir: string;
  private readonly proxies = new Map<string, LabProcess>();

  private constructor(
    readonly lab: Lab,
    private readonly options: MeshOptions,
  ) {
    this.configDir = `${lab.dir}/cluster`;
  }

  /** Writes the manifests and starts a node proxy on every node. */
  static async start(lab: Lab, options: MeshOptions = {}): Promise<LabMesh> {
    const mesh = new LabMesh(lab, options);
    if (options.ca !== false) await mesh.makeCa(mesh.caDir);
    await mesh.writeManifests();
    await Promise.all(lab.nodes.map((n) => mesh.startNode(n.name)));
    return mesh;
  }

  /** The lab's CA directory (Istio cacerts layout). */
  get caDir(): string {
    return `${this.lab.dir}/ca`;
  }

  /** Creates a CA in `dir` (a second one in another dir is a foreign CA). */
  async makeCa(dir: string, trustDomain = 'cluster.local'): Promise<string> {
    await initCa(dir, { trustDomain, force: true });
    return dir;
  }

  /** Rewrites the cluster manifests from the lab's pods (after changing their annotations). */
  async writeManifests(dir = this.configDir): Promise<void> {
    await mkdir(dir, { recursive: true });
    const namespaces = [...new Set(this.lab.pods.map((p) => p.namespace))].map((name) => ({
      apiVersion: 'v1',
      kind: 'Namespace',
      metadata: { name, annotations: this.options.namespaceAnnotations?.[name] ?? {} },
    }));
    const docs = [...namespaces, ...this.lab.nodeObjects(), ...this.lab.podObjects()];
    const text = docs.map((d) => stringify(d)).join('---\n');
    // Write then rename: the proxy's watcher must never read a half-written file.
    const tmp = `${dir}/.cluster.yaml.tmp`;
    await writeFile(tmp, text);
    await rename(tmp, `${dir}/cluster.yaml`);
  }

  /**
   * Starts (or restarts) the proxy of one node and waits until it reports ready. `overrides`
   * give this start its own CA or config directory (a foreign CA, a diverging config).
   */
  async startNode(
    nodeName: string,
    extraArgs: readonly string[] = [],
    overrides: {
      readonly caDir?: string;
      readonly configDir?: string;
      /** A command that execs the proxy (e.g. setpriv, to run it with fewer capabilities). */
      readonly wrapper?: readonly string[];
    } = {},
  ): Promise<LabProcess> {
    const node = this.lab.node(nodeName);
    const caDir = overrides.caDir ?? (this.options.ca !== false ? this.caDir : undefined);
    const proxy = this.lab.spawn(node.netns, [
      ...(overrides.wrapper ?? []),
      process.execPath,
      // As the DaemonSet runs it (its NODE_OPTIONS): a 1 MB young generation.
      ...WEFT_NODE_FLAGS,
      WEFT_CLI,
      'node',
      '--config',
      overrides.configDir ?? this.configDir,
      '--node-name',
      node.name,
      '--bpffs',
      node.pinDir,
      '--drain-grace',
      '1s',
      '--interface-scan',
      '500ms',
      '--log-level',
      this.options.logLevel ?? 'info',
      '--log-batch',
      this.options.logBatch ?? '0',
      ...(caDir ? ['--ca', caDir] : []),
      ...(this.options.nodeArgs ?? []),
      ...(this.options.perNodeArgs?.[nodeName] ?? []),
      ...extraArgs,
    ]);
    this.proxies.set(nodeName, proxy);
    await proxy.waitForLine((line) => line.includes('"node proxy ready"'), 20_000);
    return proxy;
  }

  proxy(nodeName: string): LabProcess {
    const proxy = this.proxies.get(nodeName);
    if (!proxy) throw new Error(`no proxy started on ${nodeName}`);
    return proxy;
  }

  async stopNode(nodeName: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await this.proxies.get(nodeName)?.stop(signal, 5000);
  }

  /** The access log lines a node's proxy has printed so far. */
  accessLog(nodeName: string): AccessEntry[] {
    const out: AccessEntry[] = [];
    for (const line of this.proxies.get(nodeName)?.lines ?? []) {
      if (!line.includes('"event":"connection"')) continue;
      out.push(JSON.parse(line) as AccessEntry);
    }
    return out;
  }

  /** Waits until a node's access log has at least `count` lines (bounded). */
  async waitForAccessLog(
    nodeName: string,
    count: number,
    timeoutMs = 5000,
  ): Promise<AccessEntry[]> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const entries = this.accessLog(nodeName);
      if (entries.length >= count) return entries;
      await new Promise((r) => setTimeout(r, 50));
    }
    return this.accessLog(nodeName);
  }

  /** BPF counters for one pod IP on its node ('0.0.0.0' for traffic with no pod). */
  counters(node: LabNode, podIp: string): PodCounters | undefined {
    const pinned = openPinnedCounters(node.pinDir);
    try {
      return pinned.counters.get(podIp);
    } finally {
      pinned.close();
    }
  }

  /** GETs a path of a node proxy's HTTP endpoint (metrics 15020, admin 15000, readiness 15021). */
  async fetchFromNode(nodeName: string, path: string, port = 15020): Promise<string> {
    const url = `http://127.0.0.1:${port}${path}`;
    const run = await this.lab.exec(this.lab.node(nodeName).netns, [
      process.execPath,
      '-e',
      `fetch(${JSON.stringify(url)}).then(r=>r.text()).then(t=>process.stdout.write(t))`,
    ]);
    return run.stdout;
  }

  async stop(): Promise<void> {
    await Promise.all([...this.proxies.keys()].map((n) => this.stopNode(n)));
  }
}

/**
 * Starts tcpdump on an interface of a lab namespace, writing every TCP packet to `file`, and
 * resolves once it is listening. Stop it with `.stop('SIGINT')` so it flushes.
 */
export async function startCapture(
  lab: Lab,
  netns: string,
  iface: string,
  file: string,
): Promise<LabProcess> {
  const capture = lab.spawn(netns, [
    'tcpdump',
    '--immediate-mode',
    '-i',
    iface,
    '-U',
    '-s',
    '0',
    '-w',
    file,
    'tcp',
  ]);
  for (let i = 0; i < 100 && !capture.stderr.includes('listening on'); i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  return capture;
}
