// lab/cluster.ts: builds throwaway "namespace clusters" for tests, benchmarks and `weft demo`:
// a fabric namespace with a bridge, node namespaces, pod namespaces, a private bpffs and a
// scratch directory under /run/weft-lab/<prefix>. It never touches the root namespace's
// interfaces (every veth is created directly between two lab namespaces), uses addresses from
// 198.18.0.0/15 only, signals only processes it spawned (by PID), and removes only names of its
// own prefix.

import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LabProcess, runCommand, type ExitInfo, type RunResult } from './proc.js';
import {
  parseConnectResult,
  parseServeEvent,
  type AcceptedEvent,
  type ClosedEvent,
  type ConnectResult,
  type ServeEvent,
} from './protocol.js';
import {
  checkPrefix,
  isLabNetns,
  labDir,
  LAB_RUN_ROOT,
  planLab,
  type LabOptions,
  type LabPlan,
} from './topology.js';

export type { LabOptions, LabPodOverride } from './topology.js';
export type { ExitInfo, RunResult } from './proc.js';
export { LabProcess } from './proc.js';
export type { AcceptedEvent, ClosedEvent, ConnectResult, ServeEvent } from './protocol.js';

export interface LabNode {
  /** Kubernetes node name, `node-<i>`. */
  name: string;
  index: number;
  netns: string;
  /** Node IP on the uplink (198.18.0.<i+1>, /24). */
  ip: string;
  /** Uplink interface name in the node namespace (`<prefix>up`). */
  uplink: string;
  /** 198.19.<i>.0/24 */
  podCidr: string;
  /** Per-node bpffs pin directory (created): /run/weft-lab/<prefix>/bpffs/node-<i>. */
  pinDir: string;
  /** Gateway address every pod of the node uses (198.19.<i>.1, on every host-side veth). */
  gateway: string;
  uid: string;
}

export interface LabPod {
  name: string;
  namespace: string;
  serviceAccount: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  node: LabNode;
  netns: string;
  /** 198.19.<node>.<index+10> (/32 on eth0). */
  ip: string;
  /** Host-side veth in the node namespace (`<prefix>p<j>`). */
  hostVeth: string;
  /** Index of the pod on its node (j). */
  index: number;
  uid: string;
}

export interface LabExecOptions {
  /** Default 10 s; the command is SIGKILLed (by PID) when it runs longer. */
  timeoutMs?: number;
  input?: string;
  /** Resolve on a non-zero exit instead of rejecting. */
  allowFail?: boolean;
  env?: NodeJS.ProcessEnv;
}

export interface LabSpawnOptions {
  env?: NodeJS.ProcessEnv;
  /** Where stdout/stderr are appended (default: <lab.dir>/logs/<seq>-<netns>-<cmd>.log). */
  logFile?: string;
}

export interface ServeOptions {
  /** How long to wait for the "listening" line (default 10 s). */
  readyTimeoutMs?: number;
  /** Server-side idle timeout per connection (default 120 s). */
  idleTimeoutMs?: number;
}

export interface ConnectOptions {
  /** Random bytes to send per connection (default 1024; ignored with `payload`). */
  bytes?: number;
  /** Sequential connections (default 1). */
  count?: number;
  /** Default 2000 ms. */
  connectTimeoutMs?: number;
  /** Overall bound per connection (default 10 000 ms). */
  timeoutMs?: number;
  payload?: string;
  /** 'echo' (default): bytes must come back intact; 'eof': only a clean EOF is required. */
  expect?: 'echo' | 'eof';
}

export interface CleanupReport {
  /** Namespaces deleted. */
  namespaces: string[];
  /** Whether a bpffs was unmounted. */
  unmounted: boolean;
  /** Whether /run/weft-lab/<prefix> was removed. */
  removedDir: boolean;
}

/** Absolute path of the compiled podapp script, next to this module. */
export const PODAPP_PATH = fileURLToPath(new URL('./podapp.js', import.meta.url));

/** A `podapp serve` running in a pod; its events are parsed as they arrive. */
export class PodServer {
  readonly events: ServeEvent[] = [];
  constructor(
    readonly pod: LabPod,
    readonly ports: number[],
    readonly process: LabProcess,
  ) {
    for (const l of process.lines) this.onLine(l);
    process.on('line', (l: string) => this.onLine(l));
  }
  private onLine(line: string): void {
    const ev = parseServeEvent(line);
    if (ev) this.events.push(ev);
  }
  accepted(): AcceptedEvent[] {
    return this.events.filter((e): e is AcceptedEvent => e.event === 'accepted');
  }
  closed(): ClosedEvent[] {
    return this.events.filter((e): e is ClosedEvent => e.event === 'closed');
  }
  /** Resolves once at least `n` connections have closed (rejects after `timeoutMs`, default 5 s). */
  async waitForClosed(n: number, timeoutMs = 5000): Promise<ClosedEvent[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const c = this.closed();
      if (c.length >= n) return c;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `podapp serve in ${this.pod.name}: ${c.length} of ${n} connections closed within ${timeoutMs} ms`,
        );
      }
      if (!this.process.running) {
        throw new Error(
          `podapp serve in ${this.pod.name} exited with ${c.length} of ${n} connections closed; stderr: ${this.process.stderr.trim()}`,
        );
      }
      await new Promise((r) => setTimeout(r, Math.min(20, left)));
    }
  }
  stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 2000): Promise<ExitInfo> {
    return this.process.stop(signal, graceMs);
  }
}

async function ip(args: string[], input?: string): Promise<RunResult> {
  return runCommand(['ip', ...args], input === undefined ? {} : { input });
}

/** Runs `ip -n <netns> -batch -` with the given commands (one per line, without `ip`). */
async function ipBatch(netns: string, cmds: string[]): Promise<void> {
  if (cmds.length === 0) return;
  await runCommand(['ip', '-n', netns, '-batch', '-'], {
    input: cmds.join('\n') + '\n',
    label: `ip -n ${netns} -batch [${cmds.join('; ')}]`,
  });
}

async function listNetns(): Promise<string[]> {
  const r = await runCommand(['ip', 'netns', 'list']);
  return r.stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n.length > 0);
}

/** Mount points at or below `dir`, deepest first. */
async function mountsUnder(dir: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const out: string[] = [];
  for (const line of info.split('\n')) {
    const mp = line.split(' ')[4];
    if (!mp) continue;
    const path = mp.replace(/\\([0-7]{3})/g, (_m, o: string) =>
      String.fromCharCode(parseInt(o, 8)),
    );
    if (path === dir || path.startsWith(dir + '/')) out.push(path);
  }
  return out.sort((a, b) => b.length - a.length);
}

/** Unmounts everything at or below `dir` (bounded attempts, lazy as a last resort). */
async function unmountAll(dir: string): Promise<boolean> {
  let did = false;
  for (let attempt = 0; attempt < 8; attempt++) {
    const mps = await mountsUnder(dir);
    if (mps.length === 0) return did;
    for (const mp of mps) {
      const lazy = attempt >= 4 ? ['-l'] : [];
      const r = await runCommand(['umount', ...lazy, mp], { allowFail: true });
      if (r.code === 0) did = true;
    }
  }
  const left = await mountsUnder(dir);
  if (left.length > 0) throw new Error(`lab: could not unmount ${left.join(', ')}`);
  return did;
}

/** Deletes the given namespaces (which must all belong to `prefix`); returns the ones deleted. */
async function deleteNetns(prefix: string, names: string[]): Promise<string[]> {
  const existing = new Set(await listNetns());
  const deleted: string[] = [];
  const errors: string[] = [];
  // Pods first, then nodes, then the fabric (not required by the kernel, but tidy).
  const rank = (n: string) => (/p\d+$/.test(n) ? 0 : n.endsWith('-fab') ? 2 : 1);
  for (const n of [...new Set(names)].sort((a, b) => rank(a) - rank(b))) {
    if (!isLabNetns(prefix, n) || !existing.has(n)) continue;
    const r = await runCommand(['ip', 'netns', 'del', n], { allowFail: true });
    if (r.code === 0) deleted.push(n);
    else errors.push(`${n}: ${r.stderr.trim()}`);
  }
  if (errors.length) throw new Error(`lab: could not delete namespaces: ${errors.join('; ')}`);
  return deleted;
}

export class Lab {
  readonly prefix: string;
  readonly nodes: LabNode[];
  readonly pods: LabPod[];
  /** Scratch directory /run/weft-lab/<prefix> (config files, logs/). */
  readonly dir: string;
  /** bpffs mount point /run/weft-lab/<prefix>/bpffs. */
  readonly bpffs: string;
  readonly fabricNetns: string;

  private readonly plan: LabPlan;
  private readonly processes = new Set<LabProcess>();
  private readonly createdNetns: string[] = [];
  private createdDir = false;
  private mounted = false;
  private destroyed: Promise<void> | null = null;
  private spawnSeq = 0;

  private constructor(plan: LabPlan) {
    this.plan = plan;
    this.prefix = plan.prefix;
    this.dir = labDir(plan.prefix);
    this.bpffs = join(this.dir, 'bpffs');
    this.fabricNetns = plan.fabricNetns;
    this.nodes = plan.nodes.map((n) => ({
      name: n.name,
      index: n.index,
      netns: n.netns,
      ip: n.ip,
      uplink: n.uplink,
      podCidr: n.podCidr,
      pinDir: join(this.bpffs, n.name),
      gateway: n.gateway,
      uid: n.uid,
    }));
    this.pods = plan.pods.map((p) => ({
      name: p.name,
      namespace: p.namespace,
      serviceAccount: p.serviceAccount,
      labels: p.labels,
      annotations: p.annotations,
      node: this.nodes[p.nodeIndex]!,
      netns: p.netns,
      ip: p.ip,
      hostVeth: p.hostVeth,
      index: p.index,
      uid: p.uid,
    }));
  }

  /**
   * Builds a lab. Validates everything first (nothing is built for invalid options); on a failure
   * mid-way, tears down what it built and rethrows.
   */
  static async create(opts: LabOptions): Promise<Lab> {
    if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
      throw new Error('lab: must run as root (network namespaces, veth pairs, bpffs mount)');
    }
    const lab = new Lab(planLab(opts));
    try {
      await lab.build();
    } catch (err) {
      try {
        await lab.teardown(false);
      } catch (cleanupErr) {
        (err as Error).message += ` (and teardown failed: ${(cleanupErr as Error).message})`;
      }
      throw err;
    }
    return lab;
  }

  /**
   * Removes leftovers of one prefix only: its namespaces (fabric, nodes, pods), its bpffs mount and
   * /run/weft-lab/<prefix>. Processes still inside those namespaces are not signalled (they are
   * not this process's children); deleting the names leaves them without any route out.
   */
  static async cleanupPrefix(prefix: string): Promise<CleanupReport> {
    checkPrefix(prefix);
    const dir = labDir(prefix);
    const errors: string[] = [];
    let namespaces: string[] = [];
    let unmounted = false;
    let removedDir = false;
    try {
      const mine = (await listNetns()).filter((n) => isLabNetns(prefix, n));
      namespaces = await deleteNetns(prefix, mine);
    } catch (e) {
      errors.push((e as Error).message);
    }
    try {
      unmounted = await unmountAll(dir);
      const existed = await stat(dir).then(
        () => true,
        () => false,
      );
      await rm(dir, { recursive: true, force: true, maxRetries: 2 });
      removedDir = existed;
    } catch (e) {
      errors.push((e as Error).message);
    }
    if (errors.length) throw new Error(`lab ${prefix}: cleanup failed: ${errors.join('; ')}`);
    return { namespaces, unmounted, removedDir };
  }

  pod(name: string): LabPod {
    const p = this.pods.find((x) => x.name === name || `${x.namespace}/${x.name}` === name);
    if (!p) throw new Error(`lab ${this.prefix}: no pod ${name}`);
    return p;
  }

  node(name: string): LabNode {
    const n = this.nodes.find((x) => x.name === name);
    if (!n) throw new Error(`lab ${this.prefix}: no node ${name}`);
    return n;
  }

  /** Creates (if needed) and returns the bpffs pin directory of a node. */
  async pinDir(nodeName: string): Promise<string> {
    const n = this.node(nodeName);
    await mkdir(n.pinDir, { recursive: true });
    return n.pinDir;
  }

  /** Accepts a lab namespace name, a pod name (or ns/name) or a node name; returns the netns. */
  resolveNetns(target: string): string {
    if (this.allNetns().includes(target)) return target;
    const pod = this.pods.find((x) => x.name === target || `${x.namespace}/${x.name}` === target);
    if (pod) return pod.netns;
    const node = this.nodes.find((x) => x.name === target);
    if (node) return node.netns;
    throw new Error(
      `lab ${this.prefix}: ${target} is neither a namespace, pod nor node of this lab`,
    );
  }

  /** Runs argv inside a lab namespace via `ip netns exec`; bounded; rejects on non-zero unless allowFail. */
  async exec(netns: string, argv: string[], opts: LabExecOptions = {}): Promise<RunResult> {
    this.assertAlive();
    const ns = this.resolveNetns(netns);
    if (argv.length === 0) throw new Error('lab.exec: empty argv');
    return runCommand(['ip', 'netns', 'exec', ns, ...argv], {
      ...opts,
      label: `[netns ${ns}] ${argv.join(' ')}`,
    });
  }

  /** Starts a tracked long-running process inside a lab namespace (its PID is the command's). */
  spawn(netns: string, argv: string[], opts: LabSpawnOptions = {}): LabProcess {
    this.assertAlive();
    const ns = this.resolveNetns(netns);
    if (argv.length === 0) throw new Error('lab.spawn: empty argv');
    const seq = ++this.spawnSeq;
    const cmdName = basename(argv[0] === process.execPath && argv[1] ? argv[1] : argv[0]!);
    const logFile = opts.logFile ?? join(this.dir, 'logs', `${seq}-${ns}-${cmdName}.log`);
    const p = new LabProcess(['ip', 'netns', 'exec', ns, ...argv], {
      env: opts.env ?? process.env,
      logFile,
      label: `[netns ${ns}] ${argv.join(' ')}`,
    });
    this.processes.add(p);
    void p.exited.then(() => this.processes.delete(p));
    return p;
  }

  /** Starts `podapp serve` in a pod and resolves once it listens on every port (bounded wait). */
  async serve(
    podName: string,
    ports: number | number[],
    mode: 'echo' | 'sink' = 'echo',
    opts: ServeOptions = {},
  ): Promise<PodServer> {
    const pod = this.pod(podName);
    const list = Array.isArray(ports) ? ports : [ports];
    const args = [process.execPath, PODAPP_PATH, 'serve', '--mode', mode];
    for (const p of list) args.push('--port', String(p));
    if (opts.idleTimeoutMs !== undefined) {
      args.push('--idle-timeout-ms', String(opts.idleTimeoutMs));
    }
    const proc = this.spawn(pod.netns, args);
    const server = new PodServer(pod, list, proc);
    try {
      await proc.waitForLine(
        (l) => parseServeEvent(l)?.event === 'listening',
        opts.readyTimeoutMs ?? 10_000,
      );
    } catch (err) {
      await proc.stop('SIGKILL', 1000);
      throw err;
    }
    return server;
  }

  /**
   * Runs `podapp connect` in a pod (host: an IP or a pod name of this lab) and returns one result
   * per connection. Rejects only when podapp itself failed (bad arguments, no output).
   */
  async connect(
    fromPod: string,
    host: string,
    port: number,
    opts: ConnectOptions = {},
  ): Promise<ConnectResult[]> {
    const pod = this.pod(fromPod);
    const target = this.pods.find((p) => p.name === host || `${p.namespace}/${p.name}` === host);
    const count = opts.count ?? 1;
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const args = [
      process.execPath,
      PODAPP_PATH,
      'connect',
      '--host',
      target ? target.ip : host,
      '--port',
      String(port),
      '--count',
      String(count),
      '--timeout-ms',
      String(timeoutMs),
    ];
    if (opts.bytes !== undefined) args.push('--bytes', String(opts.bytes));
    if (opts.connectTimeoutMs !== undefined) {
      args.push('--connect-timeout-ms', String(opts.connectTimeoutMs));
    }
    if (opts.payload !== undefined) args.push('--payload', opts.payload);
    if (opts.expect !== undefined) args.push('--expect', opts.expect);
    const r = await this.exec(pod.netns, args, {
      allowFail: true,
      timeoutMs: count * (timeoutMs + 500) + 5000,
    });
    const results = r.stdout
      .split('\n')
      .map(parseConnectResult)
      .filter((x): x is ConnectResult => x !== undefined);
    if ((r.code !== 0 && r.code !== 1) || results.length !== count) {
      throw new Error(
        `podapp connect from ${pod.name} to ${host}:${port} failed (code ${r.code}, ${results.length}/${count} results): ${r.stderr.trim()}`,
      );
    }
    return results;
  }

  /** Kubernetes-shaped v1 Pod objects for every lab pod. */
  podObjects(): object[] {
    return this.pods.map((p) => ({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: p.name,
        namespace: p.namespace,
        uid: p.uid,
        labels: { ...p.labels },
        annotations: { ...p.annotations },
        resourceVersion: '1',
      },
      spec: {
        nodeName: p.node.name,
        serviceAccountName: p.serviceAccount,
        containers: [{ name: 'app', image: 'weft-lab/podapp' }],
      },
      status: {
        phase: 'Running',
        hostIP: p.node.ip,
        hostIPs: [{ ip: p.node.ip }],
        podIP: p.ip,
        podIPs: [{ ip: p.ip }],
        conditions: [{ type: 'Ready', status: 'True' }],
      },
    }));
  }

  /** Kubernetes-shaped v1 Node objects for every lab node. */
  nodeObjects(): object[] {
    return this.nodes.map((n) => ({
      apiVersion: 'v1',
      kind: 'Node',
      metadata: {
        name: n.name,
        uid: n.uid,
        labels: { 'kubernetes.io/hostname': n.name, 'kubernetes.io/os': 'linux' },
        resourceVersion: '1',
      },
      spec: { podCIDR: n.podCidr, podCIDRs: [n.podCidr] },
      status: {
        addresses: [
          { type: 'InternalIP', address: n.ip },
          { type: 'Hostname', address: n.name },
        ],
        conditions: [{ type: 'Ready', status: 'True' }],
      },
    }));
  }

  /**
   * Idempotent: stops every tracked process (SIGTERM, SIGKILL after 2 s), deletes every namespace
   * of this prefix, unmounts the bpffs and removes /run/weft-lab/<prefix>. Throws (after trying
   * every step) if something could not be removed.
   */
  destroy(): Promise<void> {
    this.destroyed ??= this.teardown(true);
    return this.destroyed;
  }

  /** Every namespace name of this lab (fabric, nodes, pods). */
  allNetns(): string[] {
    return [this.fabricNetns, ...this.nodes.map((n) => n.netns), ...this.pods.map((p) => p.netns)];
  }

  private assertAlive(): void {
    if (this.destroyed) throw new Error(`lab ${this.prefix}: already destroyed`);
  }

  /**
   * full=true (destroy): everything of this prefix. full=false (failed create): only what this
   * instance built (it may have failed because a name already existed).
   */
  private async teardown(full: boolean): Promise<void> {
    const errors: string[] = [];
    await Promise.all([...this.processes].map((p) => p.stop('SIGTERM', 2000)));
    for (const p of this.processes) {
      if (p.running) errors.push(`process ${p.pid} (${p.label}) did not exit`);
    }
    try {
      const names = full
        ? [...new Set([...this.createdNetns, ...(await listNetns())])].filter((n) =>
            isLabNetns(this.prefix, n),
          )
        : this.createdNetns;
      await deleteNetns(this.prefix, names);
    } catch (e) {
      errors.push((e as Error).message);
    }
    if (full || this.createdDir) {
      try {
        if (full || this.mounted) await unmountAll(this.dir);
        this.mounted = false;
        await rm(this.dir, { recursive: true, force: true, maxRetries: 2 });
      } catch (e) {
        errors.push((e as Error).message);
      }
    }
    if (errors.length) throw new Error(`lab ${this.prefix}: teardown: ${errors.join('; ')}`);
  }

  private async addNetns(name: string): Promise<void> {
    await ip(['netns', 'add', name]);
    this.createdNetns.push(name);
  }

  private async build(): Promise<void> {
    const plan = this.plan;
    await mkdir(LAB_RUN_ROOT, { recursive: true, mode: 0o755 });
    try {
      await mkdir(this.dir, { mode: 0o755 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new Error(`lab: ${this.dir} already exists (prefix in use, or a leftover run)`);
      }
      throw e;
    }
    this.createdDir = true;
    await mkdir(join(this.dir, 'logs'));
    await mkdir(this.bpffs);
    await runCommand(['mount', '-t', 'bpf', 'bpf', this.bpffs]);
    this.mounted = true;
    for (const n of this.nodes) await mkdir(n.pinDir);

    // Fabric: one bridge joining every node's uplink.
    const fab = plan.fabricNetns;
    await this.addNetns(fab);
    await ipBatch(fab, [
      'link set lo up',
      `link add ${plan.bridge} type bridge stp_state 0`,
      `link set ${plan.bridge} up`,
    ]);

    // Nodes: uplink veth created directly between the fabric and the node namespace.
    for (const n of plan.nodes) {
      await this.addNetns(n.netns);
      await runCommand([
        'ip',
        '-n',
        fab,
        'link',
        'add',
        n.fabricPort,
        'type',
        'veth',
        'peer',
        'name',
        n.uplink,
        'netns',
        n.netns,
      ]);
      await ipBatch(fab, [
        `link set ${n.fabricPort} master ${plan.bridge}`,
        `link set ${n.fabricPort} up`,
      ]);
      await this.exec(n.netns, [
        'sysctl',
        '-q',
        '-w',
        'net.ipv4.ip_forward=1',
        'net.ipv4.conf.all.rp_filter=0',
        'net.ipv4.conf.default.rp_filter=0',
      ]);
      await ipBatch(n.netns, [
        'link set lo up',
        `link set ${n.uplink} up`,
        `addr add ${n.ip}/24 dev ${n.uplink}`,
      ]);
    }
    for (const n of plan.nodes) {
      await ipBatch(
        n.netns,
        plan.nodes
          .filter((o) => o.index !== n.index)
          .map((o) => `route add ${o.podCidr} via ${o.ip} dev ${n.uplink}`),
      );
    }

    // Pods: veth created directly between the node and the pod namespace.
    for (const p of plan.pods) {
      const n = plan.nodes[p.nodeIndex]!;
      await this.addNetns(p.netns);
      await runCommand([
        'ip',
        '-n',
        n.netns,
        'link',
        'add',
        p.hostVeth,
        'type',
        'veth',
        'peer',
        'name',
        'eth0',
        'netns',
        p.netns,
      ]);
      await ipBatch(n.netns, [
        `link set ${p.hostVeth} up`,
        `addr add ${n.gateway}/32 dev ${p.hostVeth}`,
        `route add ${p.ip}/32 dev ${p.hostVeth} scope link`,
      ]);
      await ipBatch(p.netns, [
        'link set lo up',
        'link set eth0 up',
        `addr add ${p.ip}/32 dev eth0`,
        `route add ${n.gateway} dev eth0 scope link`,
        `route add default via ${n.gateway} dev eth0`,
      ]);
    }

    // rp_filter off on every node interface (effective value is max(all, iface)).
    for (const n of plan.nodes) {
      const ifaces = [
        n.uplink,
        ...plan.pods.filter((p) => p.nodeIndex === n.index).map((p) => p.hostVeth),
      ];
      await this.exec(n.netns, [
        'sysctl',
        '-q',
        '-w',
        ...ifaces.map((i) => `net.ipv4.conf.${i}.rp_filter=0`),
      ]);
    }
  }
}
