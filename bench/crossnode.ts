// bench/crossnode.ts: the cross-node benchmark. One lab (2 nodes; node-0: client, plain-client,
// local-server; node-1: server, plain-server), weft node proxies running on both nodes with the
// lab CA, and the scenarios interleaved round by round in ONE invocation:
//
//   no-mesh         plain-client (node-0) -> plain-server (node-1); neither pod enrolled. The
//                   weft proxies run and the BPF program is attached, so this is the bypass
//                   cost (TC_ACT_UNSPEC), not a machine without weft.
//   weft-hbone      client (node-0) -> server (node-1), both enrolled: client pod -> node-0
//                   proxy -> HBONE (mTLS 1.3 + HTTP/2 CONNECT) -> node-1 proxy -> server pod.
//   weft-same-node  client (node-0) -> local-server (node-0), both enrolled: the proxy's
//                   in-process fast path (no TLS).
//
// Figures per scenario and round: iperf3 1-stream throughput; CPU seconds per GB of both weft
// node processes (utime+stime from /proc/<pid>/stat) and of the whole machine (/proc/stat);
// 64-byte ping-pong round trips over one connection (p50/p99); sequential short connections
// per second (connect, 64-byte request/response, close), with proxy CPU per connection.
// Medians over rounds go to a markdown table (stdout) and a JSON blob (stdout, and --json FILE).
//
// Run as root after `bash scripts/build.sh` (docs/benchmarks.md has the results and caveats):
//   node dist/bench/crossnode.js [--quick] [--rounds N] [--json FILE] [--no-same-node]
// Before each iperf3 run it waits (bounded) for the machine to be quiet, and it reports CPU it
// cannot attribute (other people's work on the shared vCPUs) so noisy runs can be told apart.
// Diagnosis options (not for the published figures): --only tput,rtt,conn, --seconds S,
// --gc-stats DIR / --cpu-prof DIR (GC trace + heap timeline / V8 CPU profile of the proxies,
// via bench/cpuprof-preload.ts), --proxy-node-options="FLAGS" (NODE_OPTIONS for the proxies).
//
// Safety: all traffic stays inside lab namespaces (198.18.0.0/15); every loop is bounded in
// count and time; the lab is torn down in `finally` and on SIGINT/SIGTERM; only processes this
// script started are signalled, by PID (through LabProcess).

import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Lab, type LabPod, type LabProcess } from '../src/lab/cluster.js';
import { LabMesh, WEFT_CLI } from '../src/lab/mesh.js';
import type { ConnectRateResult, RttResult } from './pingpong.js';

const PINGPONG = fileURLToPath(new URL('./pingpong.js', import.meta.url));
const CPUPROF_PRELOAD = new URL('./cpuprof-preload.js', import.meta.url).href;
const AMBIENT = { 'weft.io/dataplane-mode': 'ambient' };
const IPERF_PORT = 5201;
const ECHO_PORT = 7000;
const MAX_ROUNDS = 20;

type ScenarioName = 'no-mesh' | 'weft-hbone' | 'weft-same-node';

interface Scenario {
  readonly name: ScenarioName;
  readonly client: string;
  readonly server: string;
  /** The access-log path the proxy must report for this scenario (none for no-mesh). */
  readonly path?: 'hbone' | 'same-node';
}

const SCENARIOS: readonly Scenario[] = [
  { name: 'no-mesh', client: 'plain-client', server: 'plain-server' },
  { name: 'weft-hbone', client: 'client', server: 'server', path: 'hbone' },
  { name: 'weft-same-node', client: 'client', server: 'local-server', path: 'same-node' },
];

interface Settings {
  readonly quick: boolean;
  readonly rounds: number;
  readonly seconds: number;
  readonly rttCount: number;
  readonly rttWarmup: number;
  readonly connections: number;
  readonly sameNode: boolean;
  readonly jsonFile?: string;
  /** Diagnosis only: write V8 CPU profiles of the weft node processes here (on their exit). */
  readonly cpuProfDir?: string;
  /** Diagnosis only: GC counts and a heap timeline of the weft node processes (on their exit). */
  readonly gcStatsDir?: string;
  /** Tuning experiments: extra NODE_OPTIONS for the weft node processes only. */
  readonly proxyNodeOptions?: string;
  /** Longest wait for a quiet machine before each iperf3 run, ms. */
  readonly quietWaitMs: number;
  /** Which figure groups to measure (diagnosis; default all three). */
  readonly groups: ReadonlySet<Group>;
}

type Group = 'tput' | 'rtt' | 'conn';
const GROUPS: readonly Group[] = ['tput', 'rtt', 'conn'];

/** One round's measurements for one scenario. */
interface RunSample {
  round: number;
  gbps: number;
  bytes: number;
  retransmits: number;
  proxyCpuS: number;
  hostCpuS: number;
  proxyCpuSPerGB: number;
  hostCpuSPerGB: number;
  rttP50Us: number;
  rttP99Us: number;
  rttMeanUs: number;
  connPerSec: number;
  connP50Us: number;
  connP99Us: number;
  proxyCpuUsPerConn: number;
  /** iperf3 client + server CPU during the run (their own report), seconds. */
  iperfCpuS: number;
  /**
   * Machine CPU during the run that is neither the proxies nor iperf3 (by their own rusage,
   * which takes in much of the softirq work done on their behalf): other processes (other
   * people's tests, the bench driver, `ip netns exec`) and the rest of softirq. Large means a
   * noisy run.
   */
  unattributedCpuS: number;
  /** How busy the machine was (%) in the second before the round, after waiting for quiet. */
  busyPctBefore: number;
  /** Where the machine's CPU went during the iperf3 run, seconds per GB. */
  hostSplitPerGB: { user: number; system: number; softirq: number; steal: number };
}

type Figure = Exclude<
  keyof RunSample,
  | 'round'
  | 'bytes'
  | 'proxyCpuS'
  | 'hostCpuS'
  | 'hostSplitPerGB'
  | 'iperfCpuS'
  | 'unattributedCpuS'
  | 'busyPctBefore'
>;

function parseSettings(): Settings {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      rounds: { type: 'string' },
      json: { type: 'string' },
      'no-same-node': { type: 'boolean', default: false },
      'cpu-prof': { type: 'string' },
      'gc-stats': { type: 'string' },
      'proxy-node-options': { type: 'string' },
      only: { type: 'string' },
      seconds: { type: 'string' },
      'quiet-wait': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(
      'usage: node dist/bench/crossnode.js [--quick] [--rounds N] [--json FILE] [--no-same-node]\n' +
        '       [--cpu-prof DIR]   (diagnosis: V8 CPU profiles + GC stats of both weft node processes)\n' +
        '       [--gc-stats DIR]   (diagnosis: GC counts and heap timeline only, no profiler)\n' +
        '       [--proxy-node-options="FLAGS"]   (experiments: extra NODE_OPTIONS for the proxies)\n' +
        '       [--only tput,rtt,conn]   (diagnosis: measure only these figure groups)\n' +
        '       [--seconds S]   (iperf3 run length; default 5, quick 2)\n' +
        '       [--quiet-wait S]   (longest wait for a quiet machine before each iperf3 run;\n' +
        '                          default 20, quick 3)\n',
    );
    process.exit(0);
  }
  const quick = values.quick === true;
  const rounds = intOption('rounds', values.rounds, quick ? 1 : 5, 1, MAX_ROUNDS);
  return {
    quick,
    rounds,
    seconds: intOption('seconds', values.seconds, quick ? 2 : 5, 1, 60),
    quietWaitMs: 1000 * intOption('quiet-wait', values['quiet-wait'], quick ? 3 : 20, 0, 120),
    rttCount: quick ? 500 : 2000,
    rttWarmup: quick ? 100 : 200,
    connections: quick ? 200 : 500,
    sameNode: values['no-same-node'] !== true,
    groups: parseGroups(values.only),
    ...(values.json ? { jsonFile: values.json } : {}),
    ...(values['cpu-prof'] ? { cpuProfDir: values['cpu-prof'] } : {}),
    ...(values['gc-stats'] ? { gcStatsDir: values['gc-stats'] } : {}),
    ...(values['proxy-node-options'] ? { proxyNodeOptions: values['proxy-node-options'] } : {}),
  };
}

function intOption(name: string, v: string | undefined, def: number, min: number, max: number) {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new Error(`--${name} must be an integer in ${min}..${max}`);
  }
  return n;
}

function parseGroups(only: string | undefined): ReadonlySet<Group> {
  if (only === undefined) return new Set(GROUPS);
  const list = only.split(',').map((g) => g.trim());
  for (const g of list) {
    if (!(GROUPS as readonly string[]).includes(g)) {
      throw new Error(`--only takes a comma list of ${GROUPS.join(', ')}; got ${g}`);
    }
  }
  return new Set(list as Group[]);
}

function log(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function clkTck(): number {
  const out = execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 5000 }).trim();
  const n = Number(out);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`getconf CLK_TCK: ${out}`);
  return n;
}

/** utime + stime of one process, in clock ticks (fields 14 and 15 of /proc/<pid>/stat). */
function processTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // comm (field 2) may hold spaces: count fields after its closing parenthesis (field 3 first).
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(rest[14 - 3]) + Number(rest[15 - 3]);
}

/** CPU ticks of the whole machine (every CPU), from the first line of /proc/stat. */
interface HostTicks {
  user: number;
  system: number;
  softirq: number;
  steal: number;
  /** user + nice + system + irq + softirq (steal excluded: the hypervisor's, not ours). */
  busy: number;
}

function hostTicks(): HostTicks {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
  const [, user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).map(Number);
  return {
    user: user! + nice!,
    system: system!,
    softirq: irq! + softirq!,
    steal: steal!,
    busy: user! + nice! + system! + irq! + softirq!,
  };
}

interface CpuSnapshot {
  proxy: number;
  host: HostTicks;
}

interface CpuDelta {
  /** Both weft node processes, utime + stime, seconds. */
  proxyS: number;
  /** Whole machine, busy seconds (all CPUs). */
  hostS: number;
  hostUserS: number;
  hostSystemS: number;
  hostSoftirqS: number;
  hostStealS: number;
}

class CpuMeter {
  constructor(
    private readonly pids: readonly number[],
    private readonly tck: number,
  ) {}
  snapshot(): CpuSnapshot {
    return {
      proxy: this.pids.reduce((sum, pid) => sum + processTicks(pid), 0),
      host: hostTicks(),
    };
  }
  since(before: CpuSnapshot): CpuDelta {
    const now = this.snapshot();
    const d = (k: keyof HostTicks) => (now.host[k] - before.host[k]) / this.tck;
    return {
      proxyS: (now.proxy - before.proxy) / this.tck,
      hostS: d('busy'),
      hostUserS: d('user'),
      hostSystemS: d('system'),
      hostSoftirqS: d('softirq'),
      hostStealS: d('steal'),
    };
  }
}

function lastJsonLine<T>(stdout: string): T | undefined {
  const lines = stdout.trim().split('\n').reverse();
  for (const l of lines) {
    if (!l.startsWith('{')) continue;
    try {
      return JSON.parse(l) as T;
    } catch {
      // not JSON; keep looking
    }
  }
  return undefined;
}

class Bench {
  private readonly cpu: CpuMeter;
  constructor(
    private readonly lab: Lab,
    private readonly settings: Settings,
    proxyPids: readonly number[],
    tck: number,
  ) {
    this.cpu = new CpuMeter(proxyPids, tck);
  }

  private pod(name: string): LabPod {
    return this.lab.pod(name);
  }

  /** Polls `ss` in the pod until something listens on `port` (bounded: 100 x 50 ms). */
  private async waitListening(pod: LabPod, port: number): Promise<void> {
    for (let i = 0; i < 100; i++) {
      const r = await this.lab.exec(pod.netns, ['ss', '-Hltn', `sport = :${port}`], {
        allowFail: true,
        timeoutMs: 5000,
      });
      if (r.stdout.trim().length > 0) return;
      await new Promise((res) => setTimeout(res, 50));
    }
    throw new Error(`nothing listens on ${pod.name}:${port} after 5 s`);
  }

  async throughput(
    sc: Scenario,
    seconds = this.settings.seconds,
  ): Promise<
    Pick<
      RunSample,
      | 'gbps'
      | 'bytes'
      | 'retransmits'
      | 'proxyCpuS'
      | 'hostCpuS'
      | 'proxyCpuSPerGB'
      | 'hostCpuSPerGB'
      | 'hostSplitPerGB'
      | 'iperfCpuS'
      | 'unattributedCpuS'
    >
  > {
    const client = this.pod(sc.client);
    const server = this.pod(sc.server);
    const srv: LabProcess = this.lab.spawn(server.netns, [
      'iperf3',
      '-s',
      '-1',
      '-p',
      String(IPERF_PORT),
    ]);
    try {
      await this.waitListening(server, IPERF_PORT);
      const before = this.cpu.snapshot();
      const r = await this.lab.exec(
        client.netns,
        [
          'iperf3',
          '-c',
          server.ip,
          '-p',
          String(IPERF_PORT),
          '-t',
          String(seconds),
          '-J',
          '--connect-timeout',
          '5000',
        ],
        { allowFail: true, timeoutMs: seconds * 1000 + 20_000 },
      );
      const cpu = this.cpu.since(before);
      type IperfJson = {
        error?: string;
        end?: {
          sum_sent?: { bytes: number; retransmits?: number };
          sum_received?: { bytes: number; bits_per_second: number; seconds?: number };
          /** iperf3's own CPU, % of one CPU over the test (client = host, server = remote). */
          cpu_utilization_percent?: { host_total?: number; remote_total?: number };
        };
      };
      let j: IperfJson;
      try {
        j = JSON.parse(r.stdout) as IperfJson;
      } catch {
        throw new Error(`iperf3 ${sc.name}: no JSON (code ${r.code}): ${r.stderr.trim()}`);
      }
      const recv = j.end?.sum_received;
      if (j.error || r.code !== 0 || !recv) {
        throw new Error(`iperf3 ${sc.name}: ${j.error ?? `exit ${r.code}`} ${r.stderr.trim()}`);
      }
      const gb = recv.bytes / 1e9;
      const util = j.end?.cpu_utilization_percent;
      const iperfS =
        (((util?.host_total ?? 0) + (util?.remote_total ?? 0)) / 100) * (recv.seconds ?? seconds);
      await Promise.race([srv.exited, new Promise((res) => setTimeout(res, 3000))]);
      return {
        gbps: recv.bits_per_second / 1e9,
        bytes: recv.bytes,
        retransmits: j.end?.sum_sent?.retransmits ?? 0,
        proxyCpuS: cpu.proxyS,
        hostCpuS: cpu.hostS,
        proxyCpuSPerGB: cpu.proxyS / gb,
        hostCpuSPerGB: cpu.hostS / gb,
        iperfCpuS: iperfS,
        unattributedCpuS: cpu.hostS - cpu.proxyS - iperfS,
        hostSplitPerGB: {
          user: cpu.hostUserS / gb,
          system: cpu.hostSystemS / gb,
          softirq: cpu.hostSoftirqS / gb,
          steal: cpu.hostStealS / gb,
        },
      };
    } finally {
      await srv.stop('SIGTERM', 1000);
    }
  }

  async latency(sc: Scenario): Promise<RttResult> {
    const client = this.pod(sc.client);
    const server = this.pod(sc.server);
    const timeoutMs = 60_000;
    const r = await this.lab.exec(
      client.netns,
      [
        process.execPath,
        PINGPONG,
        'rtt',
        '--host',
        server.ip,
        '--port',
        String(ECHO_PORT),
        '--size',
        '64',
        '--count',
        String(this.settings.rttCount),
        '--warmup',
        String(this.settings.rttWarmup),
        '--timeout-ms',
        String(timeoutMs),
      ],
      { allowFail: true, timeoutMs: timeoutMs + 10_000 },
    );
    const res = lastJsonLine<RttResult>(r.stdout);
    if (!res || !res.ok) {
      throw new Error(`rtt ${sc.name}: ${res?.error ?? `exit ${r.code}`} ${r.stderr.trim()}`);
    }
    return res;
  }

  async connectRate(
    sc: Scenario,
    count: number,
  ): Promise<{ res: ConnectRateResult; proxyCpuS: number }> {
    const client = this.pod(sc.client);
    const server = this.pod(sc.server);
    const timeoutMs = 120_000;
    const before = this.cpu.snapshot();
    const r = await this.lab.exec(
      client.netns,
      [
        process.execPath,
        PINGPONG,
        'connect',
        '--host',
        server.ip,
        '--port',
        String(ECHO_PORT),
        '--size',
        '64',
        '--count',
        String(count),
        '--timeout-ms',
        String(timeoutMs),
      ],
      { allowFail: true, timeoutMs: timeoutMs + 10_000 },
    );
    const cpu = this.cpu.since(before);
    const res = lastJsonLine<ConnectRateResult>(r.stdout);
    if (!res || !res.ok) {
      throw new Error(`connect ${sc.name}: ${res?.error ?? `exit ${r.code}`} ${r.stderr.trim()}`);
    }
    return { res, proxyCpuS: cpu.proxyS };
  }
}

function fmt(x: number, digits: number): string {
  if (!Number.isFinite(x)) return 'n/a';
  return x.toFixed(digits);
}

interface FigureSpec {
  readonly key: Figure;
  readonly label: string;
  readonly digits: number;
  /** Whether a ratio against no-mesh means anything (not for figures that are ~0 there). */
  readonly ratio: boolean;
}

const FIGURES: readonly FigureSpec[] = [
  { key: 'gbps', label: 'Throughput, 1 stream (Gbit/s)', digits: 2, ratio: true },
  { key: 'proxyCpuSPerGB', label: 'weft proxy CPU-s per GB (both nodes)', digits: 2, ratio: false },
  { key: 'hostCpuSPerGB', label: 'Whole-machine CPU-s per GB', digits: 2, ratio: true },
  { key: 'retransmits', label: 'TCP retransmits per run (iperf3 sender)', digits: 0, ratio: false },
  { key: 'rttP50Us', label: '64 B round trip p50 (µs)', digits: 0, ratio: true },
  { key: 'rttP99Us', label: '64 B round trip p99 (µs)', digits: 0, ratio: true },
  {
    key: 'connPerSec',
    label: 'New connections/s (sequential, 64 B req/resp)',
    digits: 0,
    ratio: true,
  },
  { key: 'connP50Us', label: 'Connection time p50 (µs)', digits: 0, ratio: true },
  { key: 'connP99Us', label: 'Connection time p99 (µs)', digits: 0, ratio: true },
  {
    key: 'proxyCpuUsPerConn',
    label: 'weft proxy CPU per connection (µs)',
    digits: 0,
    ratio: false,
  },
];

function table(
  scenarios: readonly Scenario[],
  med: Record<string, Record<Figure, number>>,
): string {
  const base = med['no-mesh']!;
  const others = scenarios.filter((s) => s.name !== 'no-mesh');
  const head = ['Figure (median)', 'no-mesh'];
  for (const s of others) head.push(s.name, `${s.name} / no-mesh`);
  const lines = [
    `| ${head.join(' | ')} |`,
    `|${head.map((_, i) => (i === 0 ? '---' : '--:')).join('|')}|`,
  ];
  for (const f of FIGURES) {
    const row = [f.label, fmt(base[f.key], f.digits)];
    for (const s of others) {
      const v = med[s.name]![f.key];
      row.push(fmt(v, f.digits), f.ratio ? `${fmt(v / base[f.key], 2)}×` : '—');
    }
    lines.push(`| ${row.join(' | ')} |`);
  }
  return lines.join('\n');
}

/** Per-round spread (min–max) of every figure: the medians hide how much rounds disagree. */
function spreadTable(scenarios: readonly Scenario[], samples: Record<string, RunSample[]>): string {
  const head = ['Figure (min–max over rounds)', ...scenarios.map((s) => s.name)];
  const lines = [
    `| ${head.join(' | ')} |`,
    `|${head.map((_, i) => (i === 0 ? '---' : '--:')).join('|')}|`,
  ];
  for (const f of FIGURES) {
    const row = [f.label];
    for (const sc of scenarios) {
      const xs = samples[sc.name]!.map((r) => r[f.key]).filter((x) => Number.isFinite(x));
      row.push(
        xs.length ? `${fmt(Math.min(...xs), f.digits)}–${fmt(Math.max(...xs), f.digits)}` : 'n/a',
      );
    }
    lines.push(`| ${row.join(' | ')} |`);
  }
  return lines.join('\n');
}

function machine() {
  let cpuModel = cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) cpuModel = m[1]!.trim();
  } catch {
    // keep os.cpus()
  }
  return {
    cpuModel,
    vcpus: cpus().length,
    kernel: release(),
    node: process.version,
    date: new Date().toISOString(),
  };
}

/** The code measured: git HEAD and the files under src/ with uncommitted changes (read-only git). */
function codeVersion(): { head: string; dirtySrc: string[] } {
  const root = fileURLToPath(new URL('../..', import.meta.url));
  const git = (args: string[]) =>
    execFileSync('git', ['-C', root, ...args], { encoding: 'utf8', timeout: 5000 }).trim();
  try {
    return {
      head: git(['rev-parse', '--short', 'HEAD']),
      dirtySrc: git(['status', '--porcelain', '--', 'src', 'bpf', 'native'])
        .split('\n')
        .filter(Boolean),
    };
  } catch {
    return { head: 'unknown', dirtySrc: [] };
  }
}

/** Busy % of all CPUs over `ms`. */
async function measureBusy(ms: number, tck: number): Promise<number> {
  const a = hostTicks();
  await new Promise((r) => setTimeout(r, ms));
  const b = hostTicks();
  return Math.round((100 * (b.busy - a.busy)) / ((ms / 1000) * cpus().length * tck));
}

/** Busy threshold (% of all CPUs) under which the machine counts as quiet. */
const QUIET_PCT = 20;

/**
 * Waits (bounded: at most `maxWaitMs`, in 1 s samples) until the machine is quiet: other
 * people's tests share these CPUs and would otherwise land in the figures. Returns the last
 * busy %, quiet or not.
 */
async function waitForQuiet(maxWaitMs: number, tck: number): Promise<number> {
  const deadline = Date.now() + maxWaitMs;
  let busy = await measureBusy(1000, tck);
  for (let i = 0; i < 600 && busy > QUIET_PCT && Date.now() < deadline; i++) {
    if (i === 0)
      log(`crossnode: machine ${busy}% busy, waiting up to ${maxWaitMs / 1000} s for quiet`);
    busy = await measureBusy(1000, tck);
  }
  return busy;
}

/** Other labs under /run/weft-lab (someone else's tests running at the same time). */
function otherLabs(own?: string): string[] {
  try {
    return readdirSync('/run/weft-lab').filter((d) => d !== own);
  } catch {
    return [];
  }
}

async function main(): Promise<void> {
  const settings = parseSettings();
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    throw new Error('crossnode bench: run as root (network namespaces, BPF)');
  }
  try {
    execFileSync('iperf3', ['--version'], { stdio: 'ignore', timeout: 5000 });
  } catch {
    throw new Error('crossnode bench: iperf3 is missing (apt-get install -y iperf3)');
  }
  const tck = clkTck();
  const quiet = { busyPct: await measureBusy(2000, tck), otherLabs: otherLabs() };
  const code = codeVersion();
  log(
    `crossnode: machine ${quiet.busyPct}% busy over 2 s before the run` +
      (quiet.otherLabs.length ? `; other labs running: ${quiet.otherLabs.join(', ')}` : '') +
      `; code ${code.head}${code.dirtySrc.length ? ` + ${code.dirtySrc.length} uncommitted src/bpf/native file(s)` : ''}`,
  );
  if (quiet.busyPct > QUIET_PCT || quiet.otherLabs.length > 0) {
    log('crossnode: WARNING: the machine is not quiet; figures will be noisy (CPU is shared)');
  }
  const scenarios = SCENARIOS.filter((s) => settings.sameNode || s.name !== 'weft-same-node');
  const started = Date.now();
  log(
    `crossnode: ${settings.quick ? 'quick' : 'default'} mode, ${settings.rounds} round(s), ` +
      `${settings.seconds} s iperf3 runs, ${settings.rttCount} round trips, ` +
      `${settings.connections} connections; scenarios ${scenarios.map((s) => s.name).join(', ')}`,
  );

  const lab = await Lab.create({
    nodes: 2,
    podsPerNode: [3, 2],
    pods: {
      'pod-0-0': { name: 'client', serviceAccount: 'client', annotations: AMBIENT },
      'pod-0-1': { name: 'plain-client', serviceAccount: 'plain-client', annotations: {} },
      'pod-0-2': { name: 'local-server', serviceAccount: 'local-server', annotations: AMBIENT },
      'pod-1-0': { name: 'server', serviceAccount: 'server', annotations: AMBIENT },
      'pod-1-1': { name: 'plain-server', serviceAccount: 'plain-server', annotations: {} },
    },
  });
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    log(`crossnode: ${sig}, tearing the lab down`);
    lab.destroy().then(
      () => process.exit(130),
      (e: unknown) => {
        log(`crossnode: teardown failed: ${(e as Error).message}`);
        process.exit(131);
      },
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  let mesh: LabMesh | undefined;
  try {
    // The proxies inherit this process's environment: the diagnosis preload reaches them (and
    // only them) through NODE_OPTIONS set just around their start; it writes on their exit.
    const savedEnv = { ...process.env };
    const profileDir = settings.cpuProfDir ?? settings.gcStatsDir;
    if (settings.proxyNodeOptions) {
      process.env.NODE_OPTIONS = `${savedEnv.NODE_OPTIONS ?? ''} ${settings.proxyNodeOptions}`;
    }
    if (profileDir) {
      process.env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} --import=${CPUPROF_PRELOAD}`;
      process.env.WEFT_BENCH_PROFILE_DIR = profileDir;
      process.env.WEFT_BENCH_CPU_PROFILE = settings.cpuProfDir ? '1' : '0';
    }
    try {
      mesh = await LabMesh.start(lab);
    } finally {
      for (const k of ['NODE_OPTIONS', 'WEFT_BENCH_PROFILE_DIR', 'WEFT_BENCH_CPU_PROFILE']) {
        if (savedEnv[k] === undefined) delete process.env[k];
        else process.env[k] = savedEnv[k];
      }
    }
    if (profileDir) for (const n of lab.nodes) mesh.proxy(n.name).signal('SIGUSR2');
    const proxyPids = lab.nodes.map((n) => mesh!.proxy(n.name).pid);
    for (const pid of proxyPids) {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (!cmdline.includes(WEFT_CLI)) {
        throw new Error(`pid ${pid} is not the weft node process: ${cmdline.join(' ')}`);
      }
    }
    log(`crossnode: lab ${lab.prefix} up; weft node PIDs ${proxyPids.join(', ')}; CLK_TCK ${tck}`);

    // One echo server per server pod for the latency and connection figures, up for the run.
    for (const name of new Set(scenarios.map((s) => s.server))) {
      const p = lab.spawn(lab.pod(name).netns, [
        process.execPath,
        PINGPONG,
        'server',
        '--port',
        String(ECHO_PORT),
      ]);
      await p.waitForLine((l) => l.includes('"listening"'), 10_000);
    }

    const bench = new Bench(lab, settings, proxyPids, tck);
    // Warm-up (not measured): opens the HBONE tunnel, JIT-warms the proxies and the tools, and
    // lets the proxies' heaps and the sockets' buffers grow to their bulk-transfer sizes.
    for (const sc of scenarios) await bench.connectRate(sc, 20);
    for (const sc of scenarios) await bench.throughput(sc, 1);
    log('crossnode: warm-up done');

    const samples: Record<string, RunSample[]> = {};
    for (const sc of scenarios) samples[sc.name] = [];
    for (let round = 1; round <= settings.rounds && !interrupted; round++) {
      const partial: Record<string, Partial<RunSample>> = {};
      for (const sc of scenarios) partial[sc.name] = { round };
      for (const sc of settings.groups.has('tput') ? scenarios : []) {
        const busy = await waitForQuiet(settings.quietWaitMs, tck);
        const t = await bench.throughput(sc);
        Object.assign(partial[sc.name]!, t, { busyPctBefore: busy });
        log(
          `[round ${round}/${settings.rounds}] ${sc.name.padEnd(14)} iperf3 ${fmt(t.gbps, 2)} Gbit/s, ` +
            `proxy ${fmt(t.proxyCpuSPerGB, 2)} CPU-s/GB, machine ${fmt(t.hostCpuSPerGB, 2)} CPU-s/GB, ` +
            `${t.retransmits} retransmits (machine split per GB: user ` +
            `${fmt(t.hostSplitPerGB.user, 2)}, sys ${fmt(t.hostSplitPerGB.system, 2)}, ` +
            `softirq ${fmt(t.hostSplitPerGB.softirq, 2)}, steal ${fmt(t.hostSplitPerGB.steal, 2)}; ` +
            `iperf3 ${fmt(t.iperfCpuS, 2)} s, unattributed ${fmt(t.unattributedCpuS, 2)} s, ` +
            `${busy}% busy before)`,
        );
      }
      for (const sc of settings.groups.has('rtt') ? scenarios : []) {
        const r = await bench.latency(sc);
        Object.assign(partial[sc.name]!, {
          rttP50Us: r.p50Us,
          rttP99Us: r.p99Us,
          rttMeanUs: r.meanUs,
        });
        log(
          `[round ${round}/${settings.rounds}] ${sc.name.padEnd(14)} rtt ${r.count} x 64 B: ` +
            `p50 ${r.p50Us} µs, p99 ${r.p99Us} µs, mean ${r.meanUs} µs`,
        );
      }
      for (const sc of settings.groups.has('conn') ? scenarios : []) {
        const { res, proxyCpuS } = await bench.connectRate(sc, settings.connections);
        Object.assign(partial[sc.name]!, {
          connPerSec: res.perSecond,
          connP50Us: res.p50Us,
          connP99Us: res.p99Us,
          proxyCpuUsPerConn: (proxyCpuS * 1e6) / res.count,
        });
        log(
          `[round ${round}/${settings.rounds}] ${sc.name.padEnd(14)} ${res.count} connections: ` +
            `${fmt(res.perSecond, 0)}/s, p50 ${res.p50Us} µs, p99 ${res.p99Us} µs, ` +
            `proxy ${fmt((proxyCpuS * 1e6) / res.count, 0)} µs CPU/conn`,
        );
      }
      for (const sc of scenarios) samples[sc.name]!.push(partial[sc.name] as RunSample);
    }
    if (interrupted) return;

    // The scenarios took the paths they claim: access-log paths per destination, BPF counters.
    const node0 = lab.node('node-0');
    const access = mesh.accessLog('node-0');
    const verification: Record<string, unknown> = {};
    for (const sc of scenarios) {
      const dst = lab.pod(sc.server).ip;
      const src = lab.pod(sc.client).ip;
      const entries = access.filter(
        (e) => e.src.startsWith(`${src}:`) && e.dst.startsWith(`${dst}:`),
      );
      const paths = [...new Set(entries.map((e) => e.path))];
      verification[sc.name] = { accessLogEntries: entries.length, paths };
      if (sc.path ? paths.length !== 1 || paths[0] !== sc.path : entries.length !== 0) {
        throw new Error(
          `${sc.name}: unexpected proxy paths ${JSON.stringify(paths)} (${entries.length} entries)`,
        );
      }
    }
    const plainCounters = mesh.counters(node0, lab.pod('plain-client').ip);
    const clientCounters = mesh.counters(node0, lab.pod('client').ip);
    verification['bpf'] = {
      plainClientBypassedPackets: Number(plainCounters?.bypassed ?? 0n),
      clientCapturedOutbound: Number(clientCounters?.capturedOutbound ?? 0n),
    };
    // The bypass path must really have been seen (and left alone) by the BPF program, and the
    // enrolled client's connections captured.
    if (!plainCounters?.bypassed || !clientCounters?.capturedOutbound) {
      throw new Error(
        `BPF counters do not show the expected paths: ${JSON.stringify(verification)}`,
      );
    }
    log(`crossnode: verified paths ${JSON.stringify(verification)}`);

    if (profileDir) {
      // --trace-gc lines (from the preload) in each proxy's stdout: keep them next to the stats.
      for (const n of lab.nodes) {
        const gcLines = mesh.proxy(n.name).lines.filter((l) => /^\[\d+:0x[0-9a-f]+\]/.test(l));
        writeFileSync(`${profileDir}/trace-gc-${n.name}.txt`, gcLines.join('\n') + '\n');
      }
    }
    const med: Record<string, Record<Figure, number>> = {};
    const splits: Record<string, RunSample['hostSplitPerGB']> = {};
    for (const sc of scenarios) {
      const list = samples[sc.name]!;
      const m = {} as Record<Figure, number>;
      for (const f of FIGURES) m[f.key] = median(list.map((s) => s[f.key] ?? NaN));
      m.rttMeanUs = median(list.map((s) => s.rttMeanUs ?? NaN));
      med[sc.name] = m;
      splits[sc.name] = {
        user: median(list.map((s) => s.hostSplitPerGB?.user ?? NaN)),
        system: median(list.map((s) => s.hostSplitPerGB?.system ?? NaN)),
        softirq: median(list.map((s) => s.hostSplitPerGB?.softirq ?? NaN)),
        steal: median(list.map((s) => s.hostSplitPerGB?.steal ?? NaN)),
      };
    }
    // Noise: CPU no one here accounts for (other people's work on the shared vCPUs).
    const unattributed = scenarios.flatMap((sc) =>
      samples[sc.name]!.map((s) => s.unattributedCpuS).filter((x) => Number.isFinite(x)),
    );
    const noise = {
      unattributedCpuSMedian: median(unattributed),
      unattributedCpuSMax: unattributed.length ? Math.max(...unattributed) : NaN,
      iperfRuns: unattributed.length,
      noisyRuns: unattributed.filter((x) => x > 0.1 * cpus().length * settings.seconds).length,
    };
    const elapsedS = (Date.now() - started) / 1000;
    const result = {
      bench: 'crossnode',
      machine: { ...machine(), busyPctBefore: quiet.busyPct, otherLabsBefore: quiet.otherLabs },
      code,
      settings: { ...settings, groups: [...settings.groups], clkTck: tck },
      proxiesInNoMesh: 'running (BPF attached, pods not enrolled: the bypass path)',
      elapsedS: Math.round(elapsedS),
      medians: med,
      machineCpuSplitPerGB: splits,
      noise,
      runs: samples,
      verification,
    };
    const md = `${table(scenarios, med)}\n\n${spreadTable(scenarios, samples)}`;
    process.stdout.write(`\n${md}\n\n`);
    process.stdout.write(
      `medians of ${settings.rounds} round(s); GB = 1e9 bytes; all processes share ${cpus().length} vCPUs; ` +
        `no-mesh runs with both weft proxies up and the pods not enrolled; took ${Math.round(elapsedS)} s\n` +
        `noise: ${noise.noisyRuns} of ${noise.iperfRuns} iperf3 runs had more than 10% of the machine ` +
        `used by something else (unattributed CPU median ${fmt(noise.unattributedCpuSMedian, 2)} s, ` +
        `max ${fmt(noise.unattributedCpuSMax, 2)} s per run)\n\n`,
    );
    process.stdout.write(JSON.stringify(result) + '\n');
    if (settings.jsonFile) writeFileSync(settings.jsonFile, JSON.stringify(result, null, 2) + '\n');
  } finally {
    try {
      await mesh?.stop();
    } finally {
      await lab.destroy();
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
  }
}

main().catch((e: unknown) => {
  log(`crossnode: ${(e as Error).stack ?? String(e)}`);
  process.exitCode = 1;
});
