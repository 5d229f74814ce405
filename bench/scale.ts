// bench/scale.ts: the scale of the control side. Generates a cluster of 10,000 pods, 2,000
// services (with their EndpointSlices) and 5,000 AuthorizationPolicies as manifest files in a
// temporary directory (bench/scale-gen.ts: 100 namespaces, 50 nodes, this node holding 1/50 of
// the pods), then measures, in one run:
//
//  in process (the bench's own process, no kernel):
//    - loading the files into the store and the policy engine: YAML parse, translation and
//      validation, store publish, policy compile and index; the heap they retain;
//    - applying one changed object through a FileSource (edit a file, reload): one policy, one
//      pod of another node, one pod of this node;
//    - per-connection policy evaluation with 0, 50 and 5,000 unrelated policies (warm: the
//      workload's applicable set cached; cold: first connection after a rebuild);
//  a real `weft node` in a lab node namespace (198.18.0.0/15 only), on those files, with a CA:
//    - time to ready (/healthz/ready answers 200), split from its log into boot, config load,
//      policy compile, datapath (listeners, BPF, map reconcile) and certificate minting;
//    - RSS at ready and its peak, and idle CPU afterwards;
//    - time from writing one changed file to the change being visible (weft_config_generation
//      moves on /metrics; the proxy's 'config: reloaded' log line gives its own view);
//    - that it holds certificates only for the service accounts of its own node's enrolled pods
//      and BPF pod entries only for its own node's pods.
//
// Run as root after `bash scripts/build.sh`:
//   node dist/bench/scale.js [--quick] [--json FILE] [--no-node] [--pods N --services N
//                            --policies N --nodes N --namespaces N]
//                            [--proxy-node-options=FLAGS] [--cpu-prof DIR]  (diagnosis)
// Prints progress on stderr, then markdown tables and a JSON blob on stdout.
//
// Safety: the only network things are the lab's (one node namespace, 198.18.0.0/15), torn
// down in `finally` and on SIGINT/SIGTERM with the temporary directory; every wait is bounded;
// only processes this script started are signalled, by PID (through LabProcess).

import { execFileSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { check } from '../src/bpf/errors.js';
import { libbpf, libc } from '../src/bpf/ffi.js';
import { ipv4Codec, TypedMap, u32Codec, type Codec } from '../src/bpf/maps.js';
import {
  ConfigStore,
  FileSource,
  parseManifests,
  silentLogger,
  translateDocument,
  type AuthorizationPolicy,
  type ClusterState,
  type TranslatedObject,
  type Workload,
} from '../src/config/index.js';
import { initCa } from '../src/identity/index.js';
import { Lab, type LabNode, type LabProcess } from '../src/lab/cluster.js';
import { WEFT_CLI } from '../src/lab/mesh.js';
import { ServiceResolver } from '../src/lb/index.js';
import { PolicyEngine, type ConnectionFacts } from '../src/policy/index.js';
import {
  FULL_SHAPE,
  generateCluster,
  renderYaml,
  ROOT_NAMESPACE,
  SMALL_SHAPE,
  TRUST_DOMAIN,
  type GeneratedCluster,
  type GenPod,
  type ScaleShape,
} from './scale-gen.js';

const PROBE = fileURLToPath(new URL('./scale-probe.js', import.meta.url));
const CPUPROF_PRELOAD = new URL('./cpuprof-preload.js', import.meta.url).href;
const LOCAL_NODE = 'node-0';
const READY_TIMEOUT_MS = 90_000;
const APPLY_TIMEOUT_MS = 60_000;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

// ---------------------------------------------------------------------------------------
// settings

interface Settings {
  readonly quick: boolean;
  readonly shape: ScaleShape;
  /** In-process load repetitions. */
  readonly loadReps: number;
  /** Edits per kind of change, in process and against the real proxy. */
  readonly applyReps: number;
  /** `weft node` starts. */
  readonly nodeReps: number;
  readonly evalIterations: number;
  readonly evalRuns: number;
  readonly idleSeconds: number;
  readonly node: boolean;
  readonly jsonFile?: string;
  /** Diagnosis: extra NODE_OPTIONS for the weft node process. */
  readonly proxyNodeOptions?: string;
  /** Diagnosis: a V8 CPU profile of weft node from ready to exit (bench/cpuprof-preload.ts). */
  readonly cpuProfDir?: string;
}

function settings(): Settings {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      json: { type: 'string' },
      'no-node': { type: 'boolean', default: false },
      'proxy-node-options': { type: 'string' },
      'cpu-prof': { type: 'string' },
      pods: { type: 'string' },
      services: { type: 'string' },
      policies: { type: 'string' },
      nodes: { type: 'string' },
      namespaces: { type: 'string' },
    },
  });
  const num = (v: string | undefined, d: number): number => {
    if (v === undefined) return d;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`not a positive integer: ${v}`);
    return n;
  };
  const quick = values.quick === true;
  return {
    quick,
    shape: {
      pods: num(values.pods, FULL_SHAPE.pods),
      services: num(values.services, FULL_SHAPE.services),
      policies: num(values.policies, FULL_SHAPE.policies),
      nodes: num(values.nodes, FULL_SHAPE.nodes),
      namespaces: num(values.namespaces, FULL_SHAPE.namespaces),
    },
    loadReps: quick ? 1 : 3,
    applyReps: quick ? 3 : 7,
    nodeReps: quick ? 1 : 3,
    evalIterations: quick ? 100_000 : 300_000,
    evalRuns: quick ? 3 : 7,
    idleSeconds: quick ? 4 : 10,
    node: values['no-node'] !== true,
    ...(values.json !== undefined && { jsonFile: values.json }),
    ...(values['cpu-prof'] !== undefined && { cpuProfDir: values['cpu-prof'] }),
    ...(values['proxy-node-options'] !== undefined && {
      proxyNodeOptions: values['proxy-node-options'],
    }),
  };
}

// ---------------------------------------------------------------------------------------
// helpers

function progress(msg: string): void {
  process.stderr.write(`[scale] ${msg}\n`);
}

function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function ms(t0: bigint): number {
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

const sleep = (t: number): Promise<void> => new Promise((r) => setTimeout(r, t));

function heapMb(): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed / 2 ** 20;
}

/** Writes through a temporary file and a rename, as editors and ConfigMap volumes do. */
async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = join(path, '..', `.${Date.now()}-${Math.random().toString(36).slice(2)}.tmp`);
  await writeFile(tmp, text);
  await rename(tmp, path);
}

// ---------------------------------------------------------------------------------------
// edits: one changed object per call, each call a distinct change

type EditKind = 'policy' | 'remote-pod' | 'local-pod';
const EDIT_KINDS: readonly EditKind[] = ['policy', 'remote-pod', 'local-pod'];

class Editor {
  private seq = 0;
  constructor(
    private readonly dir: string,
    private readonly gen: GeneratedCluster,
  ) {}

  /** Changes one object and returns its file and a description. */
  async edit(kind: EditKind): Promise<{ file: string; what: string }> {
    const n = ++this.seq;
    const ns = this.gen.namespaces[(n * 7) % this.gen.namespaces.length]!;
    if (kind === 'policy') {
      const file = `${ns}-policies.yaml`;
      const list = this.gen.objects.get(file)!;
      const target = list.find(
        (o) => o['kind'] === 'AuthorizationPolicy' && String(name(o)).endsWith('-allow-callers'),
      )!;
      const spec = target['spec'] as {
        rules: { from: { source: { principals: string[] } }[] }[];
      };
      const principals = spec.rules[0]!.from[0]!.source.principals;
      principals.splice(3, principals.length, `${TRUST_DOMAIN}/ns/${ns}/sa/edit-${n}`);
      await writeAtomic(join(this.dir, file), renderYaml(list));
      return { file, what: `AuthorizationPolicy ${ns}/${String(name(target))}` };
    }
    // An enrolled pod of this node or of another one, a different one each time.
    const wantLocal = kind === 'local-pod';
    const pool = this.gen.pods.filter((p) => p.enrolled && (p.node === LOCAL_NODE) === wantLocal);
    const pod = pool[(n * 7919) % pool.length];
    if (pod === undefined) throw new Error(`no ${kind} to edit`);
    const file = `${pod.namespace}-pods.yaml`;
    const list = this.gen.objects.get(file)!;
    const obj = list.find((o) => name(o) === pod.name)!;
    const meta = obj['metadata'] as { labels: Record<string, string> };
    meta.labels['bench-revision'] = String(n);
    await writeAtomic(join(this.dir, file), renderYaml(list));
    return { file, what: `Pod ${pod.namespace}/${pod.name} (${pod.node})` };
  }
}

function name(o: Record<string, unknown>): unknown {
  return (o['metadata'] as { name?: unknown } | undefined)?.name;
}

// ---------------------------------------------------------------------------------------
// in process

interface LoadFigures {
  readFilesMs: number;
  parseMs: number;
  translateMs: number;
  storeMs: number;
  policyMs: number;
  totalMs: number;
  objects: number;
}

/** The steps of a load (what FileSource.start() does, minus its bookkeeping), timed apart. */
async function loadSteps(dir: string): Promise<LoadFigures> {
  const t0 = process.hrtime.bigint();
  let t = t0;
  const names = (await readdir(dir)).filter((n) => /\.(ya?ml|json)$/.test(n)).sort();
  const texts: [string, string][] = [];
  for (const n of names) texts.push([n, await readFile(join(dir, n), 'utf8')]);
  const readFilesMs = ms(t);
  t = process.hrtime.bigint();
  const parsed = texts.map(([file, text]) => ({ file, docs: parseManifests(text, file) }));
  const parseMs = ms(t);
  t = process.hrtime.bigint();
  const objects: TranslatedObject[] = [];
  for (const { file, docs } of parsed) {
    if (docs.errors.length > 0) throw new Error(`generated config invalid: ${docs.errors[0]}`);
    for (const doc of docs.documents) {
      const r = translateDocument(doc, { file, source: 'file' });
      if (r.errors.length > 0) throw new Error(`generated config invalid: ${r.errors[0]}`);
      objects.push(...r.objects);
    }
  }
  const translateMs = ms(t);
  parsed.length = 0;
  t = process.hrtime.bigint();
  const store = new ConfigStore();
  store.replaceFromSource('file', objects);
  const storeMs = ms(t);
  t = process.hrtime.bigint();
  new PolicyEngine().rebuild(
    [...store.state.authorizationPolicies.values()],
    [...store.state.peerAuthentications.values()],
    { rootNamespace: ROOT_NAMESPACE, trustDomain: TRUST_DOMAIN },
  );
  const policyMs = ms(t);
  return {
    readFilesMs,
    parseMs,
    translateMs,
    storeMs,
    policyMs,
    totalMs: ms(t0),
    objects: objects.length,
  };
}

/**
 * The heap a loaded cluster keeps, as weft node holds it: a FileSource (its last good state
 * and file cache), the store, and the compiled policies. Returns MiB and the state.
 */
async function retainedHeap(
  dir: string,
): Promise<{ heapMb: number; startMs: number; state: ClusterState }> {
  const before = heapMb();
  const store = new ConfigStore();
  const source = new FileSource({ path: dir, store, logger: silentLogger, pollIntervalMs: 0 });
  try {
    const t = process.hrtime.bigint();
    await source.start();
    const startMs = ms(t);
    const engine = new PolicyEngine(
      [...store.state.authorizationPolicies.values()],
      [...store.state.peerAuthentications.values()],
      { rootNamespace: ROOT_NAMESPACE, trustDomain: TRUST_DOMAIN },
    );
    const after = heapMb();
    if (engine.generation < 0) throw new Error('unreachable'); // keeps the engine alive
    return { heapMb: after - before, startMs, state: store.state };
  } finally {
    await source.stop();
  }
}

interface ApplyFigures {
  /** FileSource.check() after one file changed: scan, read, parse, combine, publish, listeners. */
  reloadMs: number;
  /** Of which the store's change listeners (policy rebuild as weft node does it, lb retain). */
  listenersMs: number;
  /** Objects the store reported changed (must be 1). */
  changed: number;
  /** Files read, and parsed, by the reload. */
  read: number;
  parsed: number;
}

async function applyInProcess(
  dir: string,
  editor: Editor,
  reps: number,
): Promise<Record<EditKind, ApplyFigures[]>> {
  const store = new ConfigStore();
  const engine = new PolicyEngine();
  const resolver = new ServiceResolver(store, LOCAL_NODE);
  let inputs: unknown;
  let listenersMs = 0;
  store.on('change', (state: ClusterState) => {
    const t = process.hrtime.bigint();
    resolver.retainLive();
    if (inputs !== state.authorizationPolicies) {
      inputs = state.authorizationPolicies;
      engine.rebuild(
        [...state.authorizationPolicies.values()],
        [...state.peerAuthentications.values()],
        { rootNamespace: ROOT_NAMESPACE, trustDomain: TRUST_DOMAIN },
      );
    }
    listenersMs = ms(t);
  });
  // No watcher-triggered loads during the measurement: a long debounce and no poll.
  const source = new FileSource({
    path: dir,
    store,
    logger: silentLogger,
    debounceMs: 3_600_000,
    pollIntervalMs: 0,
  });
  const out: Record<EditKind, ApplyFigures[]> = { policy: [], 'remote-pod': [], 'local-pod': [] };
  try {
    await source.start();
    for (let r = 0; r < reps; r++) {
      for (const kind of EDIT_KINDS) {
        await editor.edit(kind);
        listenersMs = 0;
        const t = process.hrtime.bigint();
        const report = await source.check();
        const reloadMs = ms(t);
        if (report === undefined) throw new Error('the edit was not seen');
        const changed = Object.values(report.diff).reduce(
          (n, d) => n + d.added.length + d.updated.length + d.removed.length,
          0,
        );
        out[kind].push({
          reloadMs,
          listenersMs,
          changed,
          read: report.read.length,
          parsed: report.parsed.length,
        });
      }
    }
  } finally {
    await source.stop();
  }
  return out;
}

// ---- policy evaluation against unrelated policies

interface EvalFigures {
  unrelated: number;
  applicable: number;
  warmNs: number;
  coldNs: number;
  /** A fresh engine compiling and indexing the set. */
  buildMs: number;
  /** A rebuild after one policy object changed. */
  rebuildMs: number;
}

function evalBench(
  state: ClusterState,
  settings: Settings,
  counts: readonly number[],
): EvalFigures[] {
  const all = [...state.authorizationPolicies.values()];
  const peerAuths = [...state.peerAuthentications.values()];
  const opts = { rootNamespace: ROOT_NAMESPACE, trustDomain: TRUST_DOMAIN };
  // The destination: a local pod of an ambient namespace with the most applicable policies.
  const full = new PolicyEngine(all, peerAuths, opts);
  const local = [...state.workloads.values()].filter((w) => w.nodeName === LOCAL_NODE);
  let dest: Workload = local[0]!;
  let best = -1;
  for (const w of local.slice(0, 50)) {
    const n = Object.values(full.policiesFor(w)).flat().length;
    if (n > best) {
      best = n;
      dest = w;
    }
  }
  const applies = new Set(Object.values(full.policiesFor(dest)).flat());
  const related = all.filter((p) => applies.has(`${p.namespace}/${p.name}`));
  const unrelatedPool = all.filter((p) => !applies.has(`${p.namespace}/${p.name}`));
  const unrelated = (n: number): AuthorizationPolicy[] => {
    const out: AuthorizationPolicy[] = [];
    for (let i = 0; out.length < n; i++) {
      const p = unrelatedPool[i % unrelatedPool.length]!;
      const round = Math.floor(i / unrelatedPool.length);
      out.push(round === 0 ? p : { ...p, name: `${p.name}-copy-${round}` });
    }
    return out;
  };
  // A caller allowed by the destination's `-allow-callers` policy (so DENYs, then ALLOWs, run).
  const callers = related
    .filter((p) => p.name.endsWith('-allow-callers'))
    .flatMap((p) => p.rules[0]?.from?.[0]?.principals ?? []);
  const identity = `spiffe://${callers[0] ?? `${TRUST_DOMAIN}/ns/${dest.namespace}/sa/default`}`;
  const facts = (w: Workload): ConnectionFacts => ({
    destination: w,
    destinationPort: 8080,
    source: { identity, ip: '198.19.3.14' },
    mtls: true,
  });
  const expected = new PolicyEngine(all, peerAuths, opts).evaluate(facts(dest));

  // Build each set, then measure them interleaved round by round (a noisy neighbour then
  // hits every set alike).
  const sets = counts.map((count) => {
    const policies = [...related, ...unrelated(count)];
    const engine = new PolicyEngine();
    let t = process.hrtime.bigint();
    engine.rebuild(policies, peerAuths, opts);
    const buildMs = ms(t);
    const first = engine.evaluate(facts(dest));
    if (first.allow !== expected.allow || first.policy !== expected.policy)
      throw new Error(`decision changed with ${count} unrelated policies`);
    // One policy object replaced (an edit), then put back: what a reload costs the engine.
    const i = policies.length - 1;
    const edited = policies.map((p, j) => (j === i ? { ...p, rules: [...p.rules] } : p));
    t = process.hrtime.bigint();
    engine.rebuild(edited, peerAuths);
    const rebuildMs = ms(t);
    engine.rebuild(policies, peerAuths);
    return {
      count,
      policies,
      engine,
      buildMs,
      rebuildMs,
      warm: [] as number[],
      cold: [] as number[],
    };
  });
  let sink = 0;
  const input = facts(dest);
  const coldCount = 2000;
  for (let r = 0; r < settings.evalRuns; r++) {
    for (const set of sets) {
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < settings.evalIterations; i++)
        if (set.engine.evaluate(input).allow) sink++;
      set.warm.push(Number(process.hrtime.bigint() - t0) / settings.evalIterations);
    }
    for (const set of sets) {
      // Distinct workloads (uids) with the destination's labels: each misses the cache once.
      const inputs = Array.from({ length: coldCount }, (_, i) =>
        facts({ ...dest, uid: `${dest.uid}-${r}-${i}` }),
      );
      set.engine.rebuild(set.policies, peerAuths); // empties the per-workload cache
      const t0 = process.hrtime.bigint();
      for (const c of inputs) if (set.engine.evaluate(c).allow) sink++;
      set.cold.push(Number(process.hrtime.bigint() - t0) / coldCount);
    }
  }
  const rows: EvalFigures[] = sets.map((set) => ({
    unrelated: set.count,
    applicable: Object.values(set.engine.policiesFor(dest)).flat().length,
    warmNs: median(set.warm),
    coldNs: median(set.cold),
    buildMs: set.buildMs,
    rebuildMs: set.rebuildMs,
  }));
  if (sink < 0) throw new Error('unreachable');
  return rows;
}

// ---------------------------------------------------------------------------------------
// the real node proxy

interface LogLine {
  readonly msg?: string;
  readonly time?: string;
  readonly [k: string]: unknown;
}

function parseLog(lines: readonly string[]): { at: number; line: LogLine }[] {
  const out: { at: number; line: LogLine }[] = [];
  for (const l of lines) {
    if (!l.startsWith('{')) continue;
    try {
      const line = JSON.parse(l) as LogLine;
      if (typeof line.time === 'string') out.push({ at: Date.parse(line.time), line });
    } catch {
      // not a log line
    }
  }
  return out;
}

function procStatus(pid: number): { rssMb: number; hwmMb: number } {
  try {
    const text = execFileSync('cat', [`/proc/${pid}/status`], { encoding: 'utf8' });
    const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0);
    return { rssMb: kb('VmRSS') / 1024, hwmMb: kb('VmHWM') / 1024 };
  } catch {
    return { rssMb: NaN, hwmMb: NaN };
  }
}

/** utime + stime of a process, in seconds. */
function cpuSeconds(pid: number): number {
  const stat = execFileSync('cat', [`/proc/${pid}/stat`], { encoding: 'utf8' });
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return ticks / Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
}

interface ProbeEvent {
  readonly event: string;
  readonly at?: number;
  readonly [k: string]: unknown;
}

async function runProbe(
  lab: Lab,
  node: LabNode,
  args: string[],
  timeoutMs: number,
): Promise<ProbeEvent[]> {
  const r = await lab.exec(node.netns, [process.execPath, PROBE, ...args], {
    timeoutMs: timeoutMs + 10_000,
    allowFail: true,
  });
  return r.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as ProbeEvent);
}

interface StartFigures {
  readyMs: number;
  bootMs: number;
  configMs: number;
  policyMs: number;
  datapathMs: number;
  certsMs: number;
  restMs: number;
  certificates: number;
  rssMb: number;
  hwmMb: number;
}

interface ApplyNodeFigures {
  kind: EditKind;
  /** write -> weft_config_generation moved on /metrics (probe polling every 10 ms). */
  visibleMs: number;
  /** write -> the proxy's 'config: reloaded' log line (after its debounce of 100 ms). */
  loggedMs: number;
  /** Files the reload read, and parsed (from that log line). */
  read: number;
  parsed: number;
}

interface NodeRun {
  start: StartFigures;
  apply: ApplyNodeFigures[];
  idleCpuPct?: number;
  /** RSS after the idle period (V8 gives back some of the load's heap by then). */
  rssIdleMb?: number;
  rssAfterApplyMb?: number;
  check?: OwnNodeCheck;
}

interface OwnNodeCheck {
  certificates: string[];
  expectedCertificates: string[];
  bpfPods: string[];
  expectedBpfPods: string[];
  bpfIfaces: number;
  bpfServiceVips: number;
  statusPods: number;
  configDumpBytes: number;
  configDumpMs: number;
  ok: boolean;
}

/**
 * `weft node --cleanup` in the node namespace: removes the previous run's pins, links and
 * routes, and doubles as the boot figure (ip netns exec, node, and every module `weft node`
 * imports, plus a cleanup that finds little to do). Returns its wall time in ms.
 */
async function cleanupNode(lab: Lab, node: LabNode): Promise<number> {
  const t = Date.now();
  await lab.exec(
    node.netns,
    [process.execPath, WEFT_CLI, 'node', '--cleanup', '--bpffs', node.pinDir],
    { timeoutMs: 20_000 },
  );
  return Date.now() - t;
}

/** Keys of a pinned map (values are not read). */
function pinnedKeys<K>(pinDir: string, map: string, keyCodec: Codec<K>): K[] {
  const path = `${pinDir}/maps/${map}`;
  const fd = check(libbpf.objGet(path), `open pinned map ${path}`);
  try {
    const unread: Codec<number> = { size: 4, encode: () => {}, decode: () => 0 };
    return new TypedMap(map, fd, keyCodec, unread).keys();
  } finally {
    libc.close(fd);
  }
}

async function checkOwnNode(lab: Lab, node: LabNode, gen: GeneratedCluster): Promise<OwnNodeCheck> {
  const [d] = (
    await runProbe(lab, node, ['dump', 'http://127.0.0.1:15000', '20000'], 20_000)
  ).filter((e) => e.event === 'dump');
  if (d === undefined) throw new Error('admin endpoint did not answer /config_dump');
  const certificates = (d['certificates'] as { id: string }[]).map((c) => c.id).sort();
  const local = gen.pods.filter((p: GenPod) => p.node === LOCAL_NODE);
  const expectedCertificates = [
    ...new Set(
      local
        .filter((p) => p.enrolled)
        .map((p) => `spiffe://${TRUST_DOMAIN}/ns/${p.namespace}/sa/${p.serviceAccount}`),
    ),
  ].sort();
  const bpfPods = pinnedKeys(node.pinDir, 'weft_pods', ipv4Codec).sort();
  const expectedBpfPods = local
    .filter((p) => p.enrolled)
    .map((p) => p.ip)
    .sort();
  const same = (a: string[], b: string[]) => a.length === b.length && a.every((x, i) => x === b[i]);
  return {
    certificates,
    expectedCertificates,
    bpfPods,
    expectedBpfPods,
    bpfIfaces: pinnedKeys(node.pinDir, 'weft_ifaces', u32Codec).length,
    bpfServiceVips: pinnedKeys(node.pinDir, 'weft_service_vips', ipv4Codec).length,
    statusPods: (d['pods'] as unknown[]).length,
    configDumpBytes: Number(d['configDumpBytes']),
    configDumpMs: Number(d['configDumpMs']),
    ok: same(certificates, expectedCertificates) && same(bpfPods, expectedBpfPods),
  };
}

async function startNode(
  lab: Lab,
  node: LabNode,
  dir: string,
  caDir: string,
  boot: number,
  s: Settings,
): Promise<{ proc: LabProcess; figures: StartFigures }> {
  // A fresh node each time: remove the previous run's pins, links and routes.
  await cleanupNode(lab, node);
  const t0 = Date.now();
  const options = [
    s.proxyNodeOptions ?? '',
    ...(s.cpuProfDir !== undefined ? [`--import=${CPUPROF_PRELOAD}`] : []),
  ].join(' ');
  const env = {
    ...process.env,
    ...(options.trim() !== '' && { NODE_OPTIONS: options }),
    ...(s.cpuProfDir !== undefined && {
      WEFT_BENCH_PROFILE_DIR: s.cpuProfDir,
      WEFT_BENCH_CPU_PROFILE: '1',
    }),
  };
  const proc = lab.spawn(
    node.netns,
    [
      process.execPath,
      WEFT_CLI,
      'node',
      '--config',
      dir,
      '--node-name',
      node.name,
      '--bpffs',
      node.pinDir,
      '--ca',
      caDir,
      '--drain-grace',
      '1s',
      '--log-level',
      'info',
    ],
    { env },
  );
  const events = await runProbe(
    lab,
    node,
    ['ready', 'http://127.0.0.1:15021/healthz/ready', String(READY_TIMEOUT_MS)],
    READY_TIMEOUT_MS,
  );
  const ready = events.find((e) => e.event === 'ready');
  if (ready?.at === undefined) {
    throw new Error(
      `weft node never became ready: ${JSON.stringify(events)}; stderr: ${proc.stderr.slice(-2000)}`,
    );
  }
  const { rssMb, hwmMb } = procStatus(proc.pid);
  // The profiler may only start once the BPF program is loaded (see cpuprof-preload.ts).
  if (s.cpuProfDir !== undefined) proc.signal('SIGUSR2');
  await proc.waitForLine((l) => l.includes('"node proxy ready"'), 10_000);
  const log = parseLog(proc.lines);
  const at = (msg: string, last = false): number => {
    const hits = log.filter((e) => e.line.msg === msg);
    const hit = last ? hits.at(-1) : hits[0];
    if (hit === undefined) throw new Error(`no '${msg}' log line`);
    return hit.at;
  };
  const loaded = at('config: loaded');
  const policies = at('authorization policies applied');
  const issued = log.filter((e) => e.line.msg === 'certificate issued');
  const enrolled = log.filter((e) => e.line.msg?.startsWith('pod enrolled'));
  const datapathEnd = enrolled.at(-1)?.at ?? policies;
  const certsEnd = issued.at(-1)?.at ?? datapathEnd;
  return {
    proc,
    figures: {
      readyMs: ready.at - t0,
      bootMs: boot,
      configMs: loaded - t0 - boot,
      policyMs: policies - loaded,
      datapathMs: datapathEnd - policies,
      certsMs: certsEnd - datapathEnd,
      restMs: ready.at - certsEnd,
      certificates: new Set(issued.map((e) => e.line['identity'] ?? e.line['spiffeId'])).size,
      rssMb,
      hwmMb,
    },
  };
}

async function applyOnNode(
  lab: Lab,
  node: LabNode,
  proc: LabProcess,
  editor: Editor,
  kind: EditKind,
): Promise<ApplyNodeFigures> {
  const gen = async (): Promise<number> => {
    const events = await runProbe(
      lab,
      node,
      ['generation', 'http://127.0.0.1:15020/metrics', '-1', String(APPLY_TIMEOUT_MS)],
      APPLY_TIMEOUT_MS,
    );
    const value = Number(events.find((e) => e.event === 'generation')?.['value']);
    if (!Number.isInteger(value))
      throw new Error(`no weft_config_generation: ${JSON.stringify(events)}`);
    return value;
  };
  const before = await gen();
  const reloadsBefore = parseLog(proc.lines).filter((e) => e.line.msg === 'config: reloaded');
  // The probe starts polling before the write (its own start-up is not counted).
  const probe = lab.spawn(node.netns, [
    process.execPath,
    PROBE,
    'generation',
    'http://127.0.0.1:15020/metrics',
    String(before),
    String(APPLY_TIMEOUT_MS),
  ]);
  try {
    await probe.waitForLine((l) => l.includes('"started"'), 10_000);
    await sleep(50);
    const t0 = performance.timeOrigin + performance.now();
    await editor.edit(kind);
    const line = await probe.waitForLine(
      (l) => l.includes('"generation"') || l.includes('"timeout"'),
      APPLY_TIMEOUT_MS + 5000,
    );
    const ev = JSON.parse(line) as ProbeEvent;
    if (ev.event !== 'generation') {
      const config = proc.lines.filter((l) => l.includes('"component":"config"')).slice(-10);
      throw new Error(
        `change not visible: ${line}; the proxy's last config lines:\n${config.join('\n')}`,
      );
    }
    await proc.waitForLine(
      (() => {
        let seen = 0;
        return (l: string) => l.includes('"config: reloaded"') && ++seen > reloadsBefore.length;
      })(),
      APPLY_TIMEOUT_MS,
    );
    const reloads = parseLog(proc.lines).filter((e) => e.line.msg === 'config: reloaded');
    const logged = reloads[reloadsBefore.length]!;
    return {
      kind,
      visibleMs: ev.at! - t0,
      loggedMs: logged.at - t0,
      read: Number(logged.line['filesRead'] ?? NaN),
      parsed: Number(logged.line['filesParsed'] ?? NaN),
    };
  } finally {
    await probe.stop('SIGTERM', 2000);
  }
}

async function nodeRuns(
  dir: string,
  smallDir: string,
  gen: GeneratedCluster,
  s: Settings,
  editor: Editor,
  register: (cleanup: () => Promise<void>) => void,
): Promise<{ boot: number; runs: NodeRun[]; small: StartFigures }> {
  progress('building a lab node namespace');
  const lab = await Lab.create({ nodes: 1, podsPerNode: 0 });
  register(() => lab.destroy());
  try {
    const node = lab.node(LOCAL_NODE);
    const caDir = join(lab.dir, 'ca');
    await initCa(caDir, { trustDomain: TRUST_DOMAIN, force: true });
    const boots: number[] = [];
    for (let i = 0; i < 3; i++) boots.push(await cleanupNode(lab, node));
    const boot = median(boots);
    progress('weft node start on the small cluster (the baseline)');
    const smallStart = await startNode(lab, node, smallDir, caDir, boot, s);
    await smallStart.proc.stop('SIGTERM', 5000);
    const runs: NodeRun[] = [];
    for (let r = 0; r < s.nodeReps; r++) {
      progress(`weft node start ${r + 1}/${s.nodeReps}`);
      const { proc, figures } = await startNode(lab, node, dir, caDir, boot, s);
      const run: NodeRun = { start: figures, apply: [] };
      try {
        progress(`  ready in ${figures.readyMs.toFixed(0)} ms, RSS ${figures.rssMb.toFixed(0)} MB`);
        if (r === 0) {
          // Idle CPU with everything loaded (file poll every 2 s, interface scan).
          await sleep(1000);
          const c0 = cpuSeconds(proc.pid);
          const w0 = Date.now();
          await sleep(s.idleSeconds * 1000);
          run.idleCpuPct = ((cpuSeconds(proc.pid) - c0) / ((Date.now() - w0) / 1000)) * 100;
          run.rssIdleMb = procStatus(proc.pid).rssMb;
          run.check = await checkOwnNode(lab, node, gen);
          progress(`  own-node check: ${run.check.ok ? 'ok' : 'FAILED'}`);
        }
        const reps = r === 0 ? s.applyReps : Math.ceil(s.applyReps / 2);
        for (let i = 0; i < reps; i++) {
          for (const kind of EDIT_KINDS) {
            const a = await applyOnNode(lab, node, proc, editor, kind);
            run.apply.push(a);
          }
        }
        run.rssAfterApplyMb = procStatus(proc.pid).rssMb;
      } finally {
        await proc.stop('SIGTERM', 5000);
      }
      runs.push(run);
    }
    return { boot, runs, small: smallStart.figures };
  } finally {
    await lab.destroy();
  }
}

// ---------------------------------------------------------------------------------------
// report

function f(n: number | undefined, digits = 0): string {
  return n === undefined || Number.isNaN(n) ? '-' : n.toFixed(digits);
}

function machine(): Record<string, string> {
  let commit = '';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  } catch {
    commit = 'unknown';
  }
  return {
    cpu: `${cpus().length} x ${cpus()[0]?.model ?? '?'}`,
    node: process.version,
    kernel: release(),
    date: new Date().toISOString().slice(0, 10),
    commit,
  };
}

async function main(): Promise<void> {
  const s = settings();
  const started = Date.now();
  const cleanups: (() => Promise<void>)[] = [];
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> => {
    cleaning ??= (async () => {
      for (const c of cleanups.reverse()) {
        try {
          await c();
        } catch (error) {
          progress(`cleanup: ${(error as Error).message}`);
        }
      }
    })();
    return cleaning;
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      progress(`${sig}: tearing down`);
      void cleanup().then(() => process.exit(130));
    });
  }

  try {
    progress(
      `generating ${s.shape.pods} pods, ${s.shape.services} services, ${s.shape.policies} policies over ${s.shape.namespaces} namespaces and ${s.shape.nodes} nodes`,
    );
    const gen = generateCluster(s.shape);
    const dir = await mkdtemp(join(tmpdir(), 'weft-scale-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    let bytes = 0;
    for (const [file, text] of gen.files) {
      await writeFile(join(dir, file), text);
      bytes += text.length;
    }
    progress(`${gen.files.size} files, ${(bytes / 2 ** 20).toFixed(1)} MiB in ${dir}`);
    const editor = new Editor(dir, gen);

    progress('in process: load');
    const loads: LoadFigures[] = [];
    for (let r = 0; r < s.loadReps; r++) loads.push(await loadSteps(dir));
    const { heapMb: retainedMb, startMs: sourceStartMs, state } = await retainedHeap(dir);

    progress('in process: apply one change');
    const applyIn = await applyInProcess(dir, editor, s.applyReps);

    progress('in process: policy evaluation');
    evalBench(state, { ...s, evalRuns: 2 }, [0, 1000]); // JIT warm-up
    const evals = evalBench(state, s, [0, 50, 5000]);

    let node: Awaited<ReturnType<typeof nodeRuns>> | undefined;
    if (s.node) {
      const smallDir = await mkdtemp(join(tmpdir(), 'weft-scale-small-'));
      cleanups.push(() => rm(smallDir, { recursive: true, force: true }));
      for (const [file, text] of generateCluster(SMALL_SHAPE).files) {
        await writeFile(join(smallDir, file), text);
      }
      node = await nodeRuns(dir, smallDir, gen, s, editor, (c) => {
        cleanups.push(c);
      });
    }

    // ---- report
    const med = (pick: (l: LoadFigures) => number) => median(loads.map(pick));
    const lines: string[] = [];
    lines.push(
      `### Scale of the control side: ${s.shape.pods} pods, ${s.shape.services} services, ${s.shape.policies} AuthorizationPolicies`,
      '',
      `${gen.files.size} files, ${(bytes / 2 ** 20).toFixed(1)} MiB, ${loads[0]!.objects} objects (${Object.entries(
        gen.counts,
      )
        .map(([k, v]) => `${v} ${k}`)
        .join(', ')}); ${s.quick ? 'quick mode' : 'default mode'}.`,
      '',
      `**In process** (median of ${s.loadReps}):`,
      '',
      '| step | ms |',
      '|---|---:|',
      `| read ${gen.files.size} files | ${f(med((l) => l.readFilesMs))} |`,
      `| YAML parse | ${f(med((l) => l.parseMs))} |`,
      `| translate and validate | ${f(med((l) => l.translateMs))} |`,
      `| store publish (merge, diff, index) | ${f(med((l) => l.storeMs))} |`,
      `| policy compile and index | ${f(med((l) => l.policyMs))} |`,
      `| **files to model and policy** | **${f(med((l) => l.totalMs))}** |`,
      `| FileSource.start() (the same load as weft node runs it, once) | ${f(sourceStartMs)} |`,
      `| heap retained by file source, store and policy (MiB) | ${f(retainedMb, 1)} |`,
      '',
      `**Apply one changed object in process** (FileSource.check after an edit, median of ${s.applyReps}):`,
      '',
      '| change | reload ms | of which store listeners ms | files read / parsed | objects changed |',
      '|---|---:|---:|---:|---:|',
    );
    for (const kind of EDIT_KINDS) {
      const xs = applyIn[kind];
      lines.push(
        `| ${kind} | ${f(median(xs.map((x) => x.reloadMs)), 1)} | ${f(median(xs.map((x) => x.listenersMs)), 2)} | ${f(median(xs.map((x) => x.read)))} / ${f(median(xs.map((x) => x.parsed)))} | ${xs.map((x) => x.changed).join(',')} |`,
      );
    }
    lines.push(
      '',
      `**Per-connection policy evaluation** (destination: a pod of node-0; median of ${s.evalRuns} runs):`,
      '',
      '| unrelated policies | applicable | warm ns/eval | cold ns/eval | first build ms | rebuild after one edit ms |',
      '|---:|---:|---:|---:|---:|---:|',
      ...evals.map(
        (e) =>
          `| ${e.unrelated} | ${e.applicable} | ${f(e.warmNs)} | ${f(e.coldNs)} | ${f(e.buildMs, 1)} | ${f(e.rebuildMs, 2)} |`,
      ),
    );
    if (node) {
      const starts = node.runs.map((r) => r.start);
      const sm = (pick: (x: StartFigures) => number) => median(starts.map(pick));
      const applies = node.runs.flatMap((r) => r.apply);
      const first = node.runs[0]!;
      const sm0 = node.small;
      const row = (label: string, pick: (x: StartFigures) => number, bold = false): string => {
        const v = f(sm((x) => pick(x)));
        return `| ${label} | ${f(pick(sm0))} | ${bold ? `**${v}**` : v} |`;
      };
      lines.push(
        '',
        `**weft node** in a lab node namespace, as ${LOCAL_NODE}, with a CA; the small cluster is the same shape at 1/100 (${SMALL_SHAPE.pods} pods, ${SMALL_SHAPE.services} services, ${SMALL_SHAPE.policies} policies; one start), the full one the median of ${starts.length} start${starts.length > 1 ? 's' : ''}:`,
        '',
        '| figure | small cluster | full cluster |',
        '|---|---:|---:|',
        row('time to ready (spawn -> /healthz/ready 200), ms', (x) => x.readyMs, true),
        `| - boot (node + modules, timed on \`weft node --cleanup\`), ms | ${f(node.boot)} | ${f(node.boot)} |`,
        row('- config load (CA, files, store), ms', (x) => x.configMs),
        row('- policy compile, ms', (x) => x.policyMs),
        row('- datapath (listeners, BPF load/attach, map reconcile), ms', (x) => x.datapathMs),
        row('- certificates, ms', (x) => x.certsMs),
        row('  (certificates minted)', (x) => x.certificates),
        row('- rest (to the first 200), ms', (x) => x.restMs),
        row('RSS at ready, MiB', (x) => x.rssMb, true),
        row('peak RSS (VmHWM) at ready, MiB', (x) => x.hwmMb),
        `| RSS after ${s.idleSeconds + 1} s idle, MiB | - | ${f(first.rssIdleMb)} |`,
        `| RSS after the edits below, MiB | - | ${f(median(node.runs.map((r) => r.rssAfterApplyMb ?? NaN)))} |`,
        `| idle CPU after ready, % of one CPU | - | ${f(first.idleCpuPct, 1)} |`,
      );
      for (const kind of EDIT_KINDS) {
        const xs = applies.filter((a) => a.kind === kind);
        lines.push(
          `| apply one ${kind} change: write -> visible on /metrics, ms (n=${xs.length}) | - | **${f(median(xs.map((x) => x.visibleMs)))}** |`,
          `| - write -> 'config: reloaded' logged (100 ms debounce included), ms | - | ${f(median(xs.map((x) => x.loggedMs)))} |`,
          `| - files read / parsed by that reload | - | ${f(median(xs.map((x) => x.read)))} / ${f(median(xs.map((x) => x.parsed)))} |`,
        );
      }
      const c = first.check;
      if (c) {
        lines.push(
          `| certificates held / expected (service accounts of node-0's enrolled pods) | - | ${c.certificates.length} / ${c.expectedCertificates.length} ${c.ok ? '(same set)' : '(DIFFERENT)'} |`,
          `| BPF weft_pods entries / node-0's enrolled pods | - | ${c.bpfPods.length} / ${c.expectedBpfPods.length} ${c.ok ? '(same set)' : '(DIFFERENT)'} |`,
          `| BPF weft_ifaces entries (pod veths found; the lab has none) | - | ${c.bpfIfaces} |`,
          `| BPF weft_service_vips entries (every service VIP, by design) | - | ${c.bpfServiceVips} |`,
          `| /debug/status pods (node-0's) | - | ${c.statusPods} |`,
          `| /config_dump size, MiB / fetch ms | - | ${f(c.configDumpBytes / 2 ** 20, 1)} / ${f(c.configDumpMs)} |`,
        );
      }
    }
    const wallS = (Date.now() - started) / 1000;
    lines.push('', `Machine: ${JSON.stringify(machine())}; wall ${wallS.toFixed(0)} s.`);
    const json = {
      settings: s,
      machine: machine(),
      wallSeconds: wallS,
      files: gen.files.size,
      bytes,
      counts: gen.counts,
      load: loads,
      retainedHeapMb: retainedMb,
      sourceStartMs,
      applyInProcess: applyIn,
      evaluation: evals,
      node,
    };
    process.stdout.write(`${lines.join('\n')}\n\n${JSON.stringify(json)}\n`);
    if (s.jsonFile) await writeFile(s.jsonFile, JSON.stringify(json, null, 2));
    if (node && !node.runs[0]?.check?.ok) {
      process.exitCode = 1;
      progress('own-node check failed: see the table');
    }
  } finally {
    await cleanup();
  }
}

await main();
