// bench/crossnode.ts: the side-by-side benchmark. One lab (2 nodes; node-0: client, plain-client,
// local-server; node-1: server, plain-server), weft node proxies running on both nodes with the
// lab CA, and the scenarios interleaved round by round in ONE invocation (A B C D E, A B C D E...):
//
//   no-mesh         plain-client (node-0) -> plain-server (node-1); neither pod enrolled. The
//                   weft proxies run and the BPF program is attached, so this is the bypass
//                   cost (TC_ACT_UNSPEC), not a machine without weft.
//   weft-hbone      client (node-0) -> server (node-1), both enrolled: client pod -> node-0
//                   proxy -> HBONE (mTLS 1.3 + HTTP/2 CONNECT) -> node-1 proxy -> server pod.
//   weft-same-node  client (node-0) -> local-server (node-0), both enrolled: the proxy's
//                   same-node path (no TLS).
//   haproxy         plain-client -> <node-0 IP>:<port> (HAProxy in the node-0 namespace, an
//                   explicit proxy) -> mTLS 1.3 -> HAProxy in the node-1 namespace -> plain-server.
//   stunnel         the same with stunnel4. Peers' set-up and checks: bench/peers.ts.
//
// Figures per scenario and round: iperf3 throughput with 1 and 8 streams; CPU seconds per GB of
// the proxy processes, both ends (weft node processes; for the peers their own processes);
// sockperf ping-pong round-trip p50/p99 and round trips per second, with proxy CPU per round
// trip; sockperf under-load p50 at 1,000 msg/s; sequential new connections per second
// (bench/pingpong.ts connect) with proxy CPU per connection; RSS of each proxy process idle and
// holding 1,000 open connections (bench/pingpong.ts hold). Medians over rounds, with ratios to
// no-mesh and to each peer, go to a markdown table (stdout) and a JSON blob (stdout, --json FILE).
//
// Run as root after `bash scripts/build.sh` (docs/benchmarks.md explains the figures):
//   node dist/bench/crossnode.js [--quick] [--rounds N] [--json FILE] [--scenarios LIST]
// Before each iperf3 run it waits (bounded, within a budget) for the machine to be quiet, and it
// reports CPU it cannot attribute (other people's work on the shared vCPUs). Diagnosis options:
// --only GROUPS, --seconds S, --gc-stats DIR / --cpu-prof DIR (GC trace + heap timeline / V8
// CPU profile of the weft proxies, via bench/cpuprof-preload.ts), --proxy-node-options="FLAGS".
//
// Safety: all traffic stays inside lab namespaces (198.18.0.0/15); every loop is bounded in
// count and time, and the whole run by --time-limit (a watchdog tears down and exits); the lab
// is torn down in `finally` and on SIGINT/SIGTERM; only processes this script started are
// signalled, by PID (through LabProcess).

import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Lab, type LabPod, type LabProcess } from '../src/lab/cluster.js';
import { LabMesh, WEFT_CLI, type AccessEntry } from '../src/lab/mesh.js';
import { DEFAULT_LOG_BATCH_MS } from '../src/telemetry/logger.js';
import {
  makePki,
  PeerPair,
  peerNofile,
  verifyTunnel,
  waitListening,
  type PeerKind,
  type PeerPlan,
  type Pki,
  type TunnelVerification,
} from './peers.js';
import type { ConnectRateResult, HoldResult } from './pingpong.js';
import { clkTck, CpuMeter, measureBusy, statusKb } from './procfs.js';
import {
  parseSockperf,
  sockperfClientArgv,
  sockperfServerArgv,
  type SockperfMode,
  type SockperfResult,
} from './sockperf.js';

const PINGPONG = fileURLToPath(new URL('./pingpong.js', import.meta.url));
const CPUPROF_PRELOAD = new URL('./cpuprof-preload.js', import.meta.url).href;
const AMBIENT = { 'weft.io/dataplane-mode': 'ambient' };
const IPERF_PORT = 5201;
const ECHO_PORT = 7000;
const SOCKPERF_PORT = 11111;
const UNDER_LOAD_MPS = 1000;
const MAX_ROUNDS = 20;

/**
 * Peer ports: the node-0 process listens on <node-0 IP>:front+i, the node-1 process on
 * <node-1 IP>:tunnel+i, for destination i (iperf3, echo, sockperf); +9 is the "rogue" route of
 * the verification. Both pairs run for the whole benchmark (idle when not measured), so their
 * ports differ; none is one of weft's (15000-15021).
 */
const PEER_PORTS: Record<PeerKind, { front: number; tunnel: number }> = {
  haproxy: { front: 21000, tunnel: 22000 },
  stunnel: { front: 23000, tunnel: 24000 },
};
const DEST_PORTS = [IPERF_PORT, ECHO_PORT, SOCKPERF_PORT] as const;

type ScenarioName = 'no-mesh' | 'weft-hbone' | 'weft-same-node' | 'haproxy' | 'stunnel';
const SCENARIO_NAMES: readonly ScenarioName[] = [
  'no-mesh',
  'weft-hbone',
  'weft-same-node',
  'haproxy',
  'stunnel',
];

interface Scenario {
  readonly name: ScenarioName;
  readonly client: string;
  readonly server: string;
  /** The access-log path the weft proxy must report (weft scenarios only). */
  readonly path?: 'hbone' | 'same-node';
  /** An explicit peer proxy the client connects to (at node-0's address), instead of the pod. */
  readonly peer?: PeerKind;
  /** Whether a proxy carries the traffic (no-mesh: no; its "proxy" figures are weft's bypass). */
  readonly proxied: boolean;
}

const SCENARIOS: readonly Scenario[] = [
  { name: 'no-mesh', client: 'plain-client', server: 'plain-server', proxied: false },
  { name: 'weft-hbone', client: 'client', server: 'server', path: 'hbone', proxied: true },
  {
    name: 'weft-same-node',
    client: 'client',
    server: 'local-server',
    path: 'same-node',
    proxied: true,
  },
  {
    name: 'haproxy',
    client: 'plain-client',
    server: 'plain-server',
    peer: 'haproxy',
    proxied: true,
  },
  {
    name: 'stunnel',
    client: 'plain-client',
    server: 'plain-server',
    peer: 'stunnel',
    proxied: true,
  },
];

type Group = 'tput' | 'tput8' | 'rtt' | 'ul' | 'conn' | 'rss';
const GROUPS: readonly Group[] = ['tput', 'tput8', 'rtt', 'ul', 'conn', 'rss'];

interface Settings {
  readonly quick: boolean;
  readonly rounds: number;
  /** iperf3 run length (each of 1 and 8 streams), s. */
  readonly seconds: number;
  readonly pingPongSeconds: number;
  readonly underLoadSeconds: number;
  readonly connections: number;
  readonly holdConnections: number;
  readonly scenarios: readonly ScenarioName[];
  readonly jsonFile?: string;
  /** Diagnosis only: write V8 CPU profiles of the weft node processes here (on their exit). */
  readonly cpuProfDir?: string;
  /** Diagnosis only: GC counts and a heap timeline of the weft node processes (on their exit). */
  readonly gcStatsDir?: string;
  /** Tuning experiments: extra NODE_OPTIONS for the weft node processes only. */
  readonly proxyNodeOptions?: string;
  /** Longest wait for a quiet machine before each iperf3 run, ms. */
  readonly quietWaitMs: number;
  /** Longest total of those waits over the run, ms. */
  readonly quietBudgetMs: number;
  /** Which figure groups to measure (diagnosis; default all). */
  readonly groups: ReadonlySet<Group>;
  /** Hard bound on the whole run (a watchdog tears down and exits), s. */
  readonly timeLimitS: number;
}

/** One round's measurements for one scenario (a figure is NaN when not measured). */
interface RunSample {
  round: number;
  // iperf3, 1 stream
  gbps: number;
  bytes: number;
  retransmits: number;
  proxyCpuS: number;
  /** Per proxy process (node-0 end, node-1 end), seconds. */
  proxyCpuSPerEnd: number[];
  hostCpuS: number;
  proxyCpuSPerGB: number;
  hostCpuSPerGB: number;
  /** iperf3 client + server CPU during the run (their own report), seconds. */
  iperfCpuS: number;
  /**
   * Machine CPU during the run that is neither the proxies nor iperf3: other processes (other
   * people's tests, the bench driver, idle peers) and the rest of softirq. Large means noisy.
   */
  unattributedCpuS: number;
  /** How busy the machine was (%) just before the run, after waiting for quiet. */
  busyPctBefore: number;
  /** Where the machine's CPU went during the 1-stream run, seconds per GB. */
  hostSplitPerGB: { user: number; system: number; softirq: number; steal: number };
  // iperf3, 8 streams
  gbps8: number;
  retransmits8: number;
  proxyCpuSPerGB8: number;
  hostCpuSPerGB8: number;
  // sockperf ping-pong
  rttP50Us: number;
  rttP99Us: number;
  rttMeanUs: number;
  rttObservations: number;
  roundTripsPerSec: number;
  proxyCpuUsPerRoundTrip: number;
  // sockperf under-load
  ulP50Us: number;
  ulObservations: number;
  // sequential connections
  connPerSec: number;
  connP50Us: number;
  connP99Us: number;
  proxyCpuUsPerConn: number;
  // RSS (MiB) of the node-0 and node-1 proxy processes. Allocators keep memory after
  // connections close, so "idle" is the reading before these processes first held many
  // connections (the same every round); each round's own reading before its hold is kept too.
  rssIdleMiB0: number;
  rssIdleMiB1: number;
  rssBeforeHoldMiB0: number;
  rssBeforeHoldMiB1: number;
  rssHeldMiB0: number;
  rssHeldMiB1: number;
  /**
   * (held - before) of both ends together per held connection, KiB, from the scenario's first
   * hold only (NaN in later rounds: retained memory would hide the growth).
   */
  rssPerConnKiB: number;
  /** TCP connections from node-0 towards the tunnel port while holding (peers: one each). */
  tunnelConns: number;
  holdOpenMs: number;
}

type NumericKey = {
  [K in keyof RunSample]: RunSample[K] extends number ? K : never;
}[keyof RunSample];

function emptySample(round: number): RunSample {
  const s = { round, proxyCpuSPerEnd: [] as number[] } as unknown as Record<string, unknown>;
  for (const k of NUMERIC_KEYS) if (k !== 'round') s[k] = NaN;
  s.hostSplitPerGB = { user: NaN, system: NaN, softirq: NaN, steal: NaN };
  return s as unknown as RunSample;
}

const NUMERIC_KEYS: readonly NumericKey[] = [
  'round',
  'gbps',
  'bytes',
  'retransmits',
  'proxyCpuS',
  'hostCpuS',
  'proxyCpuSPerGB',
  'hostCpuSPerGB',
  'iperfCpuS',
  'unattributedCpuS',
  'busyPctBefore',
  'gbps8',
  'retransmits8',
  'proxyCpuSPerGB8',
  'hostCpuSPerGB8',
  'rttP50Us',
  'rttP99Us',
  'rttMeanUs',
  'rttObservations',
  'roundTripsPerSec',
  'proxyCpuUsPerRoundTrip',
  'ulP50Us',
  'ulObservations',
  'connPerSec',
  'connP50Us',
  'connP99Us',
  'proxyCpuUsPerConn',
  'rssIdleMiB0',
  'rssIdleMiB1',
  'rssBeforeHoldMiB0',
  'rssBeforeHoldMiB1',
  'rssHeldMiB0',
  'rssHeldMiB1',
  'rssPerConnKiB',
  'tunnelConns',
  'holdOpenMs',
];

function parseSettings(): Settings {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      rounds: { type: 'string' },
      json: { type: 'string' },
      scenarios: { type: 'string' },
      'no-same-node': { type: 'boolean', default: false },
      'no-peers': { type: 'boolean', default: false },
      'cpu-prof': { type: 'string' },
      'gc-stats': { type: 'string' },
      'proxy-node-options': { type: 'string' },
      only: { type: 'string' },
      seconds: { type: 'string' },
      'quiet-wait': { type: 'string' },
      'time-limit': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(
      'usage: node dist/bench/crossnode.js [--quick] [--rounds N] [--json FILE]\n' +
        `       [--scenarios LIST]   (comma list of ${SCENARIO_NAMES.join(', ')}; default all)\n` +
        '       [--no-same-node] [--no-peers]   (drop weft-same-node / haproxy and stunnel)\n' +
        '       [--time-limit S]   (hard bound on the run; default 870, quick 115)\n' +
        '       [--cpu-prof DIR]   (diagnosis: V8 CPU profiles + GC stats of both weft node processes)\n' +
        '       [--gc-stats DIR]   (diagnosis: GC counts and heap timeline only, no profiler)\n' +
        '       [--proxy-node-options="FLAGS"]   (experiments: extra NODE_OPTIONS for the weft proxies)\n' +
        `       [--only ${GROUPS.join(',')}]   (diagnosis: measure only these figure groups)\n` +
        '       [--seconds S]   (iperf3 run length; default 5, quick 2)\n' +
        '       [--quiet-wait S]   (longest wait for a quiet machine before each iperf3 run;\n' +
        '                          default 10, quick 0; at most 120 s in all, quick 15 s)\n',
    );
    process.exit(0);
  }
  const quick = values.quick === true;
  const rounds = intOption('rounds', values.rounds, quick ? 1 : 3, 1, MAX_ROUNDS);
  let scenarios = parseScenarios(values.scenarios);
  if (values['no-same-node'] === true) scenarios = scenarios.filter((s) => s !== 'weft-same-node');
  if (values['no-peers'] === true) {
    scenarios = scenarios.filter((s) => s !== 'haproxy' && s !== 'stunnel');
  }
  const quietWaitS = intOption('quiet-wait', values['quiet-wait'], quick ? 0 : 10, 0, 120);
  return {
    quick,
    rounds,
    seconds: intOption('seconds', values.seconds, quick ? 2 : 5, 1, 60),
    pingPongSeconds: quick ? 1 : 3,
    underLoadSeconds: quick ? 2 : 5,
    connections: quick ? 200 : 500,
    holdConnections: 1000,
    scenarios,
    quietWaitMs: 1000 * quietWaitS,
    quietBudgetMs: quietWaitS > 0 ? (quick ? 15_000 : 120_000) : 0,
    groups: parseGroups(values.only),
    timeLimitS: intOption('time-limit', values['time-limit'], quick ? 115 : 870, 30, 3600),
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

function parseScenarios(list: string | undefined): ScenarioName[] {
  if (list === undefined) return [...SCENARIO_NAMES];
  const names = list.split(',').map((s) => s.trim());
  for (const n of names) {
    if (!(SCENARIO_NAMES as readonly string[]).includes(n)) {
      throw new Error(`--scenarios takes a comma list of ${SCENARIO_NAMES.join(', ')}; got ${n}`);
    }
  }
  // Keep the canonical order (it is the interleaving order).
  return SCENARIO_NAMES.filter((n) => names.includes(n));
}

const startedAt = Date.now();

function log(msg: string): void {
  const s = Math.floor((Date.now() - startedAt) / 1000);
  const mmss = `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
  process.stderr.write(`crossnode [${mmss}] ${msg}\n`);
}

function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
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

type IperfJson = {
  error?: string;
  end?: {
    sum_sent?: { bytes: number; retransmits?: number };
    sum_received?: { bytes: number; bits_per_second: number; seconds?: number };
    /** iperf3's own CPU, % of one CPU over the test (client = host, server = remote). */
    cpu_utilization_percent?: { host_total?: number; remote_total?: number };
  };
};

interface ThroughputResult {
  gbps: number;
  bytes: number;
  retransmits: number;
  proxyCpuS: number;
  proxyCpuSPerEnd: number[];
  hostCpuS: number;
  proxyCpuSPerGB: number;
  hostCpuSPerGB: number;
  iperfCpuS: number;
  unattributedCpuS: number;
  hostSplitPerGB: RunSample['hostSplitPerGB'];
}

interface RssResult {
  /** Before these processes' first hold (any scenario). */
  idleKiB: number[];
  /** Just before this hold. */
  beforeKiB: number[];
  heldKiB: number[];
  /** Growth per held connection on the scenario's first hold; NaN on later ones. */
  perConnKiB: number;
  tunnelConns: number;
  hold: HoldResult;
}

class Bench {
  private readonly meters = new Map<ScenarioName, CpuMeter>();
  /** Connections opened per scenario to the echo port (a floor for access-log entries). */
  readonly echoConnections = new Map<ScenarioName, number>();
  /** RSS (KiB) of a set of proxy processes before their first hold, keyed by their PIDs. */
  private readonly firstIdleKiB = new Map<string, number[]>();
  private readonly heldBefore = new Set<ScenarioName>();

  constructor(
    private readonly lab: Lab,
    private readonly settings: Settings,
    private readonly pidsOf: (sc: Scenario) => readonly number[],
    tck: number,
    scenarios: readonly Scenario[],
  ) {
    for (const sc of scenarios) {
      this.meters.set(sc.name, new CpuMeter(pidsOf(sc), tck));
      this.echoConnections.set(sc.name, 0);
    }
  }

  private meter(sc: Scenario): CpuMeter {
    return this.meters.get(sc.name)!;
  }

  private pod(name: string): LabPod {
    return this.lab.pod(name);
  }

  /** Where the client connects for a destination port: the server pod, or the peer's front. */
  target(sc: Scenario, port: number): { host: string; port: number } {
    if (!sc.peer) return { host: this.pod(sc.server).ip, port };
    const i = DEST_PORTS.indexOf(port as (typeof DEST_PORTS)[number]);
    if (i < 0) throw new Error(`no peer route for port ${port}`);
    return { host: this.lab.node('node-0').ip, port: PEER_PORTS[sc.peer].front + i };
  }

  private countEcho(sc: Scenario, n: number): void {
    this.echoConnections.set(sc.name, (this.echoConnections.get(sc.name) ?? 0) + n);
  }

  async throughput(sc: Scenario, streams: number, seconds: number): Promise<ThroughputResult> {
    const client = this.pod(sc.client);
    const server = this.pod(sc.server);
    const to = this.target(sc, IPERF_PORT);
    const srv: LabProcess = this.lab.spawn(server.netns, [
      'iperf3',
      '-s',
      '-1',
      '-p',
      String(IPERF_PORT),
    ]);
    try {
      await waitListening(this.lab, server.netns, [IPERF_PORT]);
      const meter = this.meter(sc);
      const before = meter.snapshot();
      const r = await this.lab.exec(
        client.netns,
        [
          'iperf3',
          '-c',
          to.host,
          '-p',
          String(to.port),
          '-t',
          String(seconds),
          '-P',
          String(streams),
          '-J',
          '--connect-timeout',
          '5000',
        ],
        { allowFail: true, timeoutMs: seconds * 1000 + 20_000 },
      );
      const cpu = meter.since(before);
      let j: IperfJson;
      try {
        j = JSON.parse(r.stdout) as IperfJson;
      } catch {
        throw new Error(`iperf3 ${sc.name}: no JSON (code ${r.code}): ${r.stderr.trim()}`);
      }
      const recv = j.end?.sum_received;
      if (j.error || r.code !== 0 || !recv || !(recv.bytes > 0)) {
        throw new Error(`iperf3 ${sc.name}: ${j.error ?? `exit ${r.code}`} ${r.stderr.trim()}`);
      }
      // The bytes went through the proxies: each end of the path spent CPU on them. (Not for
      // weft-same-node, where only node-0 is on the path and a BPF fast path may carry it.)
      if (sc.peer || sc.path === 'hbone') {
        const idle = cpu.perPidS.findIndex((s) => !(s > 0));
        if (idle >= 0) {
          throw new Error(
            `iperf3 ${sc.name}: ${recv.bytes} bytes but the node-${idle} proxy used no CPU`,
          );
        }
      }
      const gb = recv.bytes / 1e9;
      const util = j.end?.cpu_utilization_percent;
      const iperfS =
        (((util?.host_total ?? 0) + (util?.remote_total ?? 0)) / 100) * (recv.seconds ?? seconds);
      await Promise.race([srv.exited, sleep(3000)]);
      return {
        gbps: recv.bits_per_second / 1e9,
        bytes: recv.bytes,
        retransmits: j.end?.sum_sent?.retransmits ?? 0,
        proxyCpuS: cpu.proxyS,
        proxyCpuSPerEnd: cpu.perPidS,
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

  /** sockperf against the `sockperf server` of the scenario's server pod. */
  async sockperf(
    sc: Scenario,
    mode: SockperfMode,
    seconds: number,
  ): Promise<{ res: SockperfResult; proxyCpuS: number }> {
    const to = this.target(sc, SOCKPERF_PORT);
    const meter = this.meter(sc);
    const before = meter.snapshot();
    const r = await this.lab.exec(
      this.pod(sc.client).netns,
      sockperfClientArgv(
        mode,
        to.host,
        to.port,
        seconds,
        mode === 'under-load' ? UNDER_LOAD_MPS : undefined,
      ),
      { allowFail: true, timeoutMs: seconds * 1000 + 20_000 },
    );
    const cpu = meter.since(before);
    let res: SockperfResult;
    try {
      if (r.code !== 0) throw new Error(`exit ${r.code}`);
      res = parseSockperf(mode, `${r.stdout}\n${r.stderr}`);
    } catch (e) {
      throw new Error(
        `sockperf ${mode} ${sc.name}: ${(e as Error).message}: ${r.stdout.trim().slice(-1500)} ${r.stderr.trim()}`,
      );
    }
    if (!(res.observations > 0)) throw new Error(`sockperf ${mode} ${sc.name}: no replies`);
    return { res, proxyCpuS: cpu.proxyS };
  }

  async connectRate(
    sc: Scenario,
    count: number,
  ): Promise<{ res: ConnectRateResult; proxyCpuS: number }> {
    const to = this.target(sc, ECHO_PORT);
    const timeoutMs = 120_000;
    const meter = this.meter(sc);
    const before = meter.snapshot();
    const r = await this.lab.exec(
      this.pod(sc.client).netns,
      [
        process.execPath,
        PINGPONG,
        'connect',
        '--host',
        to.host,
        '--port',
        String(to.port),
        '--size',
        '64',
        '--count',
        String(count),
        '--timeout-ms',
        String(timeoutMs),
      ],
      { allowFail: true, timeoutMs: timeoutMs + 10_000 },
    );
    const cpu = meter.since(before);
    const res = lastJsonLine<ConnectRateResult>(r.stdout);
    this.countEcho(sc, res?.count ?? 0);
    if (!res || !res.ok) {
      throw new Error(`connect ${sc.name}: ${res?.error ?? `exit ${r.code}`} ${r.stderr.trim()}`);
    }
    return { res, proxyCpuS: cpu.proxyS };
  }

  /** Counts established TCP connections in a namespace matching an `ss` filter. */
  private async established(netns: string, filter: string): Promise<number> {
    const r = await this.lab.exec(netns, ['ss', '-Htn', 'state', 'established', filter], {
      allowFail: true,
      timeoutMs: 5000,
    });
    return r.stdout.split('\n').filter((l) => l.trim()).length;
  }

  /**
   * RSS of the scenario's proxy processes idle, then while the client pod holds
   * `holdConnections` connections through the path to the echo server; then closes them and
   * waits (bounded) until the server has let go of them.
   */
  async rss(sc: Scenario): Promise<RssResult> {
    const pids = this.pidsOf(sc);
    const n = this.settings.holdConnections;
    const to = this.target(sc, ECHO_PORT);
    const server = this.pod(sc.server);
    const node0 = this.lab.node('node-0');
    const beforeKiB = pids.map((p) => statusKb(p, 'VmRSS'));
    const key = pids.join(',');
    if (!this.firstIdleKiB.has(key)) this.firstIdleKiB.set(key, beforeKiB);
    const idleKiB = this.firstIdleKiB.get(key)!;
    const firstHold = !this.heldBefore.has(sc.name);
    this.heldBefore.add(sc.name);
    const holder = this.lab.spawn(this.pod(sc.client).netns, [
      'prlimit',
      `--nofile=${peerNofile()}`,
      process.execPath,
      PINGPONG,
      'hold',
      '--host',
      to.host,
      '--port',
      String(to.port),
      '--count',
      String(n),
      '--parallel',
      '50',
      '--timeout-ms',
      '60000',
      '--hold-ms',
      '60000',
    ]);
    try {
      const line = await holder.waitForLine((l) => l.includes('"kind":"hold"'), 70_000);
      const hold = JSON.parse(line) as HoldResult;
      this.countEcho(sc, hold.open);
      if (!hold.ok) throw new Error(`hold ${sc.name}: ${hold.error} (${hold.open}/${n} open)`);
      await sleep(500); // let the proxies settle (buffers, lazily grown structures)
      const heldKiB = pids.map((p) => statusKb(p, 'VmRSS'));
      if (holder.stderr.includes('closed early')) {
        throw new Error(`hold ${sc.name}: held connections closed while measuring`);
      }
      // Evidence that the held connections really cross the tunnel.
      const tunnelConns = sc.peer
        ? await this.established(
            node0.netns,
            `dport = :${PEER_PORTS[sc.peer].tunnel + DEST_PORTS.indexOf(ECHO_PORT)}`,
          )
        : sc.path === 'hbone'
          ? await this.established(node0.netns, 'dport = :15008')
          : NaN;
      if (sc.peer && tunnelConns < n) {
        throw new Error(`hold ${sc.name}: only ${tunnelConns} tunnel connections for ${n} held`);
      }
      const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
      const perConnKiB = firstHold ? (sum(heldKiB) - sum(beforeKiB)) / n : NaN;
      return { idleKiB, beforeKiB, heldKiB, perConnKiB, tunnelConns, hold };
    } finally {
      await holder.stop('SIGTERM', 5000);
      // Bounded: 50 x 200 ms for the server side to see the closes.
      for (let i = 0; i < 50; i++) {
        if ((await this.established(server.netns, `sport = :${ECHO_PORT}`)) < 10) break;
        await sleep(200);
      }
    }
  }
}

function fmt(x: number, digits: number): string {
  if (!Number.isFinite(x)) return 'n/a';
  // No "-0.0" for a tiny negative (e.g. an RSS that shrank by a page).
  return (Math.abs(x) < 0.5 * 10 ** -digits ? 0 : x).toFixed(digits);
}

interface FigureSpec {
  readonly key: NumericKey;
  readonly label: string;
  readonly digits: number;
  /** Whether a ratio against no-mesh means anything (not for proxy figures, ~0 or absent there). */
  readonly vsNoMesh: boolean;
  /** Whether the figure exists for no-mesh at all (proxy RSS does not). */
  readonly noMesh: boolean;
}

const FIGURES: readonly FigureSpec[] = [
  { key: 'gbps', label: 'Throughput, 1 stream (Gbit/s)', digits: 2, vsNoMesh: true, noMesh: true },
  {
    key: 'gbps8',
    label: 'Throughput, 8 streams (Gbit/s)',
    digits: 2,
    vsNoMesh: true,
    noMesh: true,
  },
  {
    key: 'proxyCpuSPerGB',
    label: 'Proxy CPU-s per GB, 1 stream (both ends)',
    digits: 2,
    vsNoMesh: false,
    noMesh: true,
  },
  {
    key: 'proxyCpuSPerGB8',
    label: 'Proxy CPU-s per GB, 8 streams (both ends)',
    digits: 2,
    vsNoMesh: false,
    noMesh: true,
  },
  {
    key: 'hostCpuSPerGB',
    label: 'Whole-machine CPU-s per GB, 1 stream',
    digits: 2,
    vsNoMesh: true,
    noMesh: true,
  },
  {
    key: 'rttP50Us',
    label: 'sockperf ping-pong RTT p50 (µs)',
    digits: 1,
    vsNoMesh: true,
    noMesh: true,
  },
  {
    key: 'rttP99Us',
    label: 'sockperf ping-pong RTT p99 (µs)',
    digits: 1,
    vsNoMesh: true,
    noMesh: true,
  },
  {
    key: 'roundTripsPerSec',
    label: 'Round trips/s (ping-pong, 1 connection)',
    digits: 0,
    vsNoMesh: true,
    noMesh: true,
  },
  {
    key: 'proxyCpuUsPerRoundTrip',
    label: 'Proxy CPU per round trip (µs, both ends)',
    digits: 1,
    vsNoMesh: false,
    noMesh: true,
  },
  {
    key: 'ulP50Us',
    label: `sockperf under-load RTT p50 at ${UNDER_LOAD_MPS} msg/s (µs)`,
    digits: 1,
    vsNoMesh: true,
    noMesh: true,
  },
  {
    key: 'connPerSec',
    label: 'New connections/s (sequential, 64 B req/resp)',
    digits: 0,
    vsNoMesh: true,
    noMesh: true,
  },
  { key: 'connP50Us', label: 'Connection time p50 (µs)', digits: 0, vsNoMesh: true, noMesh: true },
  {
    key: 'proxyCpuUsPerConn',
    label: 'Proxy CPU per connection (µs, both ends)',
    digits: 0,
    vsNoMesh: false,
    noMesh: true,
  },
  {
    key: 'rssIdleMiB0',
    label: 'RSS idle (before any hold), node-0 proxy (MiB)',
    digits: 1,
    vsNoMesh: false,
    noMesh: false,
  },
  {
    key: 'rssIdleMiB1',
    label: 'RSS idle (before any hold), node-1 proxy (MiB)',
    digits: 1,
    vsNoMesh: false,
    noMesh: false,
  },
  {
    key: 'rssHeldMiB0',
    label: 'RSS with 1,000 connections, node-0 proxy (MiB)',
    digits: 1,
    vsNoMesh: false,
    noMesh: false,
  },
  {
    key: 'rssHeldMiB1',
    label: 'RSS with 1,000 connections, node-1 proxy (MiB)',
    digits: 1,
    vsNoMesh: false,
    noMesh: false,
  },
  {
    key: 'rssPerConnKiB',
    label: 'RSS growth per held connection, first hold, both ends (KiB)',
    digits: 1,
    vsNoMesh: false,
    noMesh: false,
  },
];

type Medians = Record<string, Record<NumericKey, number>>;

/** value / base, or NaN where it means nothing. */
function ratio(v: number, base: number): number {
  return Number.isFinite(v) && Number.isFinite(base) && base !== 0 ? v / base : NaN;
}

/** Ratios of every figure of every scenario to no-mesh and to each peer (for the JSON). */
function ratios(scenarios: readonly Scenario[], med: Medians) {
  const out: Record<string, Record<string, Record<string, number>>> = {};
  const bases = ['no-mesh', 'haproxy', 'stunnel'].filter((b) => med[b]);
  for (const sc of scenarios) {
    const per: Record<string, Record<string, number>> = {};
    for (const b of bases) {
      if (b === sc.name) continue;
      const r: Record<string, number> = {};
      for (const f of FIGURES) {
        if (b === 'no-mesh' && !f.vsNoMesh) continue;
        const x = ratio(med[sc.name]![f.key], med[b]![f.key]);
        if (Number.isFinite(x)) r[f.key] = Math.round(x * 1000) / 1000;
      }
      per[`vs ${b}`] = r;
    }
    out[sc.name] = per;
  }
  return out;
}

/**
 * The results table: one row per figure, one column per scenario; each cell is the median and,
 * in parentheses, its ratio to no-mesh / to HAProxy / to stunnel ("—" where the ratio means
 * nothing or the scenario is that peer; omitted for a baseline not in the run).
 */
function table(scenarios: readonly Scenario[], med: Medians): string {
  const bases = (['no-mesh', 'haproxy', 'stunnel'] as const).filter((b) =>
    scenarios.some((s) => s.name === b),
  );
  const head = ['Figure (median)', ...scenarios.map((s) => s.name)];
  const lines = [
    `| ${head.join(' | ')} |`,
    `|${head.map((_, i) => (i === 0 ? '---' : '--:')).join('|')}|`,
  ];
  for (const f of FIGURES) {
    const row = [f.label];
    for (const sc of scenarios) {
      const v = med[sc.name]![f.key];
      if (!sc.proxied) {
        // The baseline: its value only (its ratios are the inverse of the others').
        row.push(f.noMesh ? fmt(v, f.digits) : '—');
        continue;
      }
      const rs = bases.map((b) => {
        if (b === sc.name || (b === 'no-mesh' && !f.vsNoMesh)) return '—';
        const x = ratio(v, med[b]![f.key]);
        return Number.isFinite(x) ? `${fmt(x, 2)}×` : '—';
      });
      const useful = rs.some((x) => x !== '—');
      row.push(useful ? `${fmt(v, f.digits)} (${rs.join(' / ')})` : fmt(v, f.digits));
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

/**
 * The first line of a tool's version output that holds a version number (stdout or stderr:
 * stunnel4 prints it on stderr), '' when none does, undefined when the tool is missing.
 */
function toolVersion(argv: string[]): string | undefined {
  const r = spawnSync(argv[0]!, argv.slice(1), {
    encoding: 'utf8',
    timeout: 5000,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return undefined;
  const lines = `${r.stdout ?? ''}\n${r.stderr ?? ''}`.split('\n').map((l) => l.trim());
  return lines.find((l) => /\d+\.\d+/.test(l)) ?? '';
}

function toolVersions(): Record<string, string | undefined> {
  return {
    iperf3: toolVersion(['iperf3', '--version']),
    sockperf: toolVersion(['sockperf', '--version']),
    haproxy: toolVersion(['haproxy', '-v']),
    stunnel4: toolVersion(['stunnel4', '-version']),
    openssl: toolVersion(['openssl', 'version']),
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

/** Busy threshold (% of all CPUs) under which the machine counts as quiet. */
const QUIET_PCT = 20;

/**
 * Waits (bounded: at most `maxWaitMs`, in 1 s samples) until the machine is quiet: other
 * people's tests share these CPUs and would otherwise land in the figures. Returns the last
 * busy % (quiet or not) and how long it waited beyond the first (short) sample.
 */
async function waitForQuiet(
  maxWaitMs: number,
  tck: number,
): Promise<{ busy: number; waitedMs: number }> {
  let busy = await measureBusy(maxWaitMs > 0 ? 500 : 200, tck);
  const t0 = Date.now();
  const deadline = t0 + maxWaitMs;
  for (let i = 0; i < 600 && busy > QUIET_PCT && Date.now() < deadline; i++) {
    if (i === 0) log(`machine ${busy}% busy, waiting up to ${maxWaitMs / 1000} s for quiet`);
    busy = await measureBusy(1000, tck);
  }
  return { busy, waitedMs: Date.now() - t0 };
}

/** Other labs under /run/weft-lab (someone else's tests running at the same time). */
function otherLabs(own?: string): string[] {
  try {
    return readdirSync('/run/weft-lab').filter((d) => d !== own);
  } catch {
    return [];
  }
}

function requireTools(scenarios: readonly Scenario[]): void {
  const need: [string, string[], string][] = [
    ['iperf3', ['iperf3', '--version'], 'iperf3'],
    ['sockperf', ['sockperf', '--version'], 'sockperf'],
    ['prlimit', ['prlimit', '--version'], 'util-linux'],
  ];
  if (scenarios.some((s) => s.peer)) need.push(['openssl', ['openssl', 'version'], 'openssl']);
  if (scenarios.some((s) => s.peer === 'haproxy'))
    need.push(['haproxy', ['haproxy', '-v'], 'haproxy']);
  if (scenarios.some((s) => s.peer === 'stunnel')) {
    need.push(['stunnel4', ['stunnel4', '-version'], 'stunnel4']);
  }
  const missing = need.filter(([, argv]) => toolVersion(argv) === undefined);
  if (missing.length) {
    throw new Error(
      `crossnode bench: missing ${missing.map(([n]) => n).join(', ')} ` +
        `(apt-get install -y ${missing.map(([, , p]) => p).join(' ')}; scripts/setup.sh does it)`,
    );
  }
}

/** Entries of a node's access log with the given source / destination IPs. */
function entriesFor(mesh: LabMesh, node: string, src?: string, dst?: string): AccessEntry[] {
  return mesh
    .accessLog(node)
    .filter(
      (e) =>
        (src === undefined || e.src.startsWith(`${src}:`)) &&
        (dst === undefined || e.dst.startsWith(`${dst}:`)),
    );
}

/**
 * The weft scenarios took the paths they claim (the node-0 access log; polled, bounded: a
 * same-node entry may be written up to ~1 s after its connection closed), the others left no
 * trace in either proxy's access log, and the BPF counters saw both kinds of traffic.
 */
async function verifyPaths(
  lab: Lab,
  mesh: LabMesh,
  scenarios: readonly Scenario[],
  echoConnections: ReadonlyMap<ScenarioName, number>,
): Promise<Record<string, unknown>> {
  const verification: Record<string, unknown> = {};
  for (const sc of scenarios) {
    const src = lab.pod(sc.client).ip;
    const dst = lab.pod(sc.server).ip;
    if (sc.path) {
      const floor = echoConnections.get(sc.name) ?? 1;
      let entries: AccessEntry[] = [];
      const deadline = Date.now() + 5000;
      for (let i = 0; i < 100; i++) {
        entries = entriesFor(mesh, 'node-0', src, dst);
        const right = entries.length > 0 && entries.every((e) => e.path === sc.path);
        if ((right && entries.length >= floor) || Date.now() >= deadline) break;
        await sleep(100);
      }
      const paths = [...new Set(entries.map((e) => e.path))];
      const datapaths: Record<string, number> = {};
      for (const e of entries) {
        // `datapath` is newer than this bench's AccessEntry type (the BPF fast path sets it).
        const d = (e as AccessEntry & { datapath?: string }).datapath ?? 'proxy';
        datapaths[d] = (datapaths[d] ?? 0) + 1;
      }
      verification[sc.name] = {
        accessLogEntries: entries.length,
        echoConnectionsOpened: floor,
        paths,
        datapaths,
      };
      if (paths.length !== 1 || paths[0] !== sc.path) {
        throw new Error(
          `${sc.name}: unexpected proxy paths ${JSON.stringify(paths)} (${entries.length} entries)`,
        );
      }
      if (entries.length < floor) {
        log(
          `WARNING: ${sc.name}: ${entries.length} access-log entries for at least ${floor} ` +
            'echo connections after 5 s',
        );
      }
    } else {
      const seen = ['node-0', 'node-1'].map(
        (n) => entriesFor(mesh, n, src).length + entriesFor(mesh, n, undefined, dst).length,
      );
      verification[sc.name] = { accessLogEntries: seen[0]! + seen[1]! };
      if (seen[0]! + seen[1]! !== 0) {
        throw new Error(
          `${sc.name}: weft logged ${seen.join(' + ')} connections of pods it must not capture`,
        );
      }
    }
  }
  const node0 = lab.node('node-0');
  const plainCounters = mesh.counters(node0, lab.pod('plain-client').ip);
  const clientCounters = mesh.counters(node0, lab.pod('client').ip);
  verification['bpf'] = {
    plainClientBypassedPackets: Number(plainCounters?.bypassed ?? 0n),
    clientCapturedOutbound: Number(clientCounters?.capturedOutbound ?? 0n),
  };
  const needPlain = scenarios.some((s) => !s.path);
  const needClient = scenarios.some((s) => s.path);
  // The bypass path must really have been seen (and left alone) by the BPF program, and the
  // enrolled client's connections captured.
  if (
    (needPlain && !plainCounters?.bypassed) ||
    (needClient && !clientCounters?.capturedOutbound)
  ) {
    throw new Error(`BPF counters do not show the expected paths: ${JSON.stringify(verification)}`);
  }
  return verification;
}

async function main(): Promise<void> {
  const settings = parseSettings();
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    throw new Error('crossnode bench: run as root (network namespaces, BPF)');
  }
  const scenarios = SCENARIOS.filter((s) => settings.scenarios.includes(s.name));
  if (scenarios.length === 0) throw new Error('crossnode bench: no scenario selected');
  requireTools(scenarios);
  const tck = clkTck();
  const quiet = { busyPct: await measureBusy(2000, tck), otherLabs: otherLabs() };
  const code = codeVersion();
  const tools = toolVersions();
  log(
    `machine ${quiet.busyPct}% busy over 2 s before the run` +
      (quiet.otherLabs.length ? `; other labs running: ${quiet.otherLabs.join(', ')}` : '') +
      `; code ${code.head}${code.dirtySrc.length ? ` + ${code.dirtySrc.length} uncommitted src/bpf/native file(s)` : ''}`,
  );
  if (quiet.busyPct > QUIET_PCT || quiet.otherLabs.length > 0) {
    log('WARNING: the machine is not quiet; figures will be noisy (CPU is shared)');
  }
  const groups = GROUPS.filter((g) => settings.groups.has(g));
  log(
    `${settings.quick ? 'quick' : 'default'} mode, ${settings.rounds} round(s), ` +
      `${settings.seconds} s iperf3 runs (1 and 8 streams), sockperf ${settings.pingPongSeconds} s ` +
      `ping-pong + ${settings.underLoadSeconds} s under-load, ${settings.connections} connections, ` +
      `${settings.holdConnections} held; scenarios ${scenarios.map((s) => s.name).join(', ')}; ` +
      `groups ${groups.join(',')}; time limit ${settings.timeLimitS} s`,
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
  let mesh: LabMesh | undefined;
  let pkiDir: string | undefined;
  const pairs = new Map<PeerKind, PeerPair>();
  let tornDown: Promise<void> | undefined;
  // Idempotent: peers, weft proxies, the lab (which also stops any process it still tracks),
  // the key directory.
  const teardown = (): Promise<void> =>
    (tornDown ??= (async () => {
      const errors: string[] = [];
      const step = async (what: string, f: () => Promise<unknown>) => {
        try {
          await f();
        } catch (e) {
          errors.push(`${what}: ${(e as Error).message}`);
        }
      };
      await step('peers', () => Promise.all([...pairs.values()].map((p) => p.stop())));
      await step('weft', async () => mesh?.stop());
      await step('lab', () => lab.destroy());
      await step('keys', async () => pkiDir && rm(pkiDir, { recursive: true, force: true }));
      if (errors.length) throw new Error(`teardown: ${errors.join('; ')}`);
    })());
  let interrupted = false;
  const abort = (why: string, exitCode: number) => {
    if (interrupted) return;
    interrupted = true;
    log(`${why}, tearing the lab down`);
    teardown().then(
      () => process.exit(exitCode),
      (e: unknown) => {
        log(`teardown failed: ${(e as Error).message}`);
        process.exit(exitCode + 1);
      },
    );
  };
  const onSignal = (sig: NodeJS.Signals) => abort(sig, 130);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // The hard bound: whatever hangs, the run ends (and cleans up) at the time limit.
  const watchdog = setTimeout(
    () => abort(`time limit of ${settings.timeLimitS} s reached`, 124),
    settings.timeLimitS * 1000 - (Date.now() - startedAt),
  );

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
      // The node's own log batching, as deployed (the lab's default writes each line at once).
      mesh = await LabMesh.start(lab, { logBatch: `${DEFAULT_LOG_BATCH_MS}ms` });
    } finally {
      for (const k of ['NODE_OPTIONS', 'WEFT_BENCH_PROFILE_DIR', 'WEFT_BENCH_CPU_PROFILE']) {
        if (savedEnv[k] === undefined) delete process.env[k];
        else process.env[k] = savedEnv[k];
      }
    }
    if (profileDir) for (const n of lab.nodes) mesh.proxy(n.name).signal('SIGUSR2');
    const weftPids = lab.nodes.map((n) => mesh!.proxy(n.name).pid);
    for (const pid of weftPids) {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (!cmdline.includes(WEFT_CLI)) {
        throw new Error(`pid ${pid} is not the weft node process: ${cmdline.join(' ')}`);
      }
    }
    log(`lab ${lab.prefix} up; weft node PIDs ${weftPids.join(', ')}; CLK_TCK ${tck}`);

    // Servers, up for the whole run: an echo server and a sockperf server per server pod.
    for (const name of new Set(scenarios.map((s) => s.server))) {
      const pod = lab.pod(name);
      const echo = lab.spawn(pod.netns, [
        'prlimit',
        `--nofile=${peerNofile()}`,
        process.execPath,
        PINGPONG,
        'server',
        '--port',
        String(ECHO_PORT),
      ]);
      await echo.waitForLine((l) => l.includes('"listening"'), 10_000);
      lab.spawn(pod.netns, sockperfServerArgv(SOCKPERF_PORT));
      await waitListening(lab, pod.netns, [SOCKPERF_PORT]);
    }

    // The peers: keys, both pairs, and proof that each does mutual TLS 1.3 as configured.
    const tunnelChecks: Record<string, TunnelVerification> = {};
    const peerKinds = [...new Set(scenarios.flatMap((s) => (s.peer ? [s.peer] : [])))];
    if (peerKinds.length) {
      pkiDir = await mkdtemp(join(tmpdir(), 'weft-bench-pki-'));
      const node0 = lab.node('node-0');
      const node1 = lab.node('node-1');
      const pki: Pki = await makePki(pkiDir, node0, node1);
      const serverIp = lab.pod('plain-server').ip;
      for (const kind of peerKinds) {
        const ports = PEER_PORTS[kind];
        const plan: PeerPlan = {
          node0,
          node1,
          routes: DEST_PORTS.map((p, i) => ({
            frontPort: ports.front + i,
            tunnelPort: ports.tunnel + i,
            serverIp,
            serverPort: p,
          })),
          rogue: { frontPort: ports.front + 9, tunnelPort: ports.tunnel + 9 },
        };
        const pair = await PeerPair.start(lab, kind, plan, pki);
        pairs.set(kind, pair);
        tunnelChecks[kind] = await verifyTunnel(lab, pair, plan, pki, 'plain-client', ECHO_PORT);
        log(
          `${kind} up (PIDs ${pair.pids.join(', ')}): TLS 1.3 ${tunnelChecks[kind].validClient.cipher}, ` +
            'client certificates required and verified, server certificate verified, TLS 1.2 refused',
        );
      }
    }
    const pidsOf = (sc: Scenario): readonly number[] =>
      sc.peer ? pairs.get(sc.peer)!.pids : weftPids;

    const bench = new Bench(lab, settings, pidsOf, tck, scenarios);
    // Warm-up (not measured): opens the HBONE tunnel and the peers' TLS session caches,
    // JIT-warms the proxies and lets heaps and socket buffers grow to bulk-transfer sizes.
    for (const sc of scenarios) await bench.connectRate(sc, 20);
    // Also the sockperf port: the same-node direct path records a (client, server, port) at
    // its first connection, which the proxy relays; measured runs then take the direct path.
    for (const sc of scenarios) await bench.sockperf(sc, 'ping-pong', 1);
    if (!settings.quick) for (const sc of scenarios) await bench.throughput(sc, 1, 1);
    log('warm-up done');

    const samples: Record<string, RunSample[]> = {};
    for (const sc of scenarios) samples[sc.name] = [];
    const steps = settings.rounds * groups.length * scenarios.length;
    let step = 0;
    let quietLeftMs = settings.quietBudgetMs;
    let roundsDone = 0;
    let lastRoundMs = 0;
    const tag = (round: number, sc: Scenario) =>
      `[round ${round}/${settings.rounds} step ${++step}/${steps}] ${sc.name.padEnd(14)}`;
    for (let round = 1; round <= settings.rounds && !interrupted; round++) {
      // Keep inside the time limit: do not start a round that would not end before it (with
      // room for the checks and the teardown).
      const leftMs = settings.timeLimitS * 1000 - (Date.now() - startedAt);
      if (round > 1 && lastRoundMs * 1.15 + 30_000 > leftMs) {
        log(
          `WARNING: stopping after ${roundsDone} round(s): another (~${Math.round(lastRoundMs / 1000)} s) ` +
            `would not end within the ${settings.timeLimitS} s time limit`,
        );
        break;
      }
      const roundStart = Date.now();
      const part: Record<string, RunSample> = {};
      for (const sc of scenarios) part[sc.name] = emptySample(round);
      for (const group of groups) {
        for (const sc of scenarios) {
          if (interrupted) break;
          const s = part[sc.name]!;
          for (const p of pairs.values()) p.assertRunning();
          if (group === 'tput' || group === 'tput8') {
            const maxWait = Math.min(settings.quietWaitMs, quietLeftMs);
            const q = await waitForQuiet(maxWait, tck);
            quietLeftMs = Math.max(0, quietLeftMs - q.waitedMs);
            const streams = group === 'tput' ? 1 : 8;
            const t = await bench.throughput(sc, streams, settings.seconds);
            if (group === 'tput') {
              Object.assign(s, t, { busyPctBefore: q.busy });
            } else {
              Object.assign(s, {
                gbps8: t.gbps,
                retransmits8: t.retransmits,
                proxyCpuSPerGB8: t.proxyCpuSPerGB,
                hostCpuSPerGB8: t.hostCpuSPerGB,
              });
            }
            log(
              `${tag(round, sc)} iperf3 -P ${streams}: ${fmt(t.gbps, 2)} Gbit/s, proxy ` +
                `${fmt(t.proxyCpuSPerGB, 2)} CPU-s/GB (${t.proxyCpuSPerEnd.map((x) => fmt(x, 2)).join(' + ')} s), ` +
                `machine ${fmt(t.hostCpuSPerGB, 2)} CPU-s/GB, ${t.retransmits} retransmits ` +
                `(iperf3 ${fmt(t.iperfCpuS, 2)} s, unattributed ${fmt(t.unattributedCpuS, 2)} s, ` +
                `${q.busy}% busy before)`,
            );
          } else if (group === 'rtt') {
            const { res, proxyCpuS } = await bench.sockperf(
              sc,
              'ping-pong',
              settings.pingPongSeconds,
            );
            Object.assign(s, {
              rttP50Us: res.p50Us,
              rttP99Us: res.p99Us,
              rttMeanUs: res.meanUs,
              rttObservations: res.observations,
              roundTripsPerSec: res.perSecond,
              proxyCpuUsPerRoundTrip: (proxyCpuS * 1e6) / res.totalReceived,
            });
            log(
              `${tag(round, sc)} sockperf ping-pong: p50 ${fmt(res.p50Us, 1)} µs, p99 ` +
                `${fmt(res.p99Us, 1)} µs, ${fmt(res.perSecond, 0)} round trips/s, proxy ` +
                `${fmt((proxyCpuS * 1e6) / res.totalReceived, 1)} µs CPU per round trip`,
            );
          } else if (group === 'ul') {
            const { res } = await bench.sockperf(sc, 'under-load', settings.underLoadSeconds);
            Object.assign(s, { ulP50Us: res.p50Us, ulObservations: res.observations });
            log(
              `${tag(round, sc)} sockperf under-load ${UNDER_LOAD_MPS} msg/s: p50 ` +
                `${fmt(res.p50Us, 1)} µs (${res.observations} replies)`,
            );
          } else if (group === 'conn') {
            const { res, proxyCpuS } = await bench.connectRate(sc, settings.connections);
            Object.assign(s, {
              connPerSec: res.perSecond,
              connP50Us: res.p50Us,
              connP99Us: res.p99Us,
              proxyCpuUsPerConn: (proxyCpuS * 1e6) / res.count,
            });
            log(
              `${tag(round, sc)} ${res.count} connections: ${fmt(res.perSecond, 0)}/s, p50 ` +
                `${res.p50Us} µs, p99 ${res.p99Us} µs, proxy ${fmt((proxyCpuS * 1e6) / res.count, 0)} µs CPU/conn`,
            );
          } else if (group === 'rss') {
            if (!sc.proxied) {
              step++;
              continue;
            }
            const r = await bench.rss(sc);
            const mib = (kib: number | undefined) => (kib ?? NaN) / 1024;
            Object.assign(s, {
              rssIdleMiB0: mib(r.idleKiB[0]),
              rssIdleMiB1: mib(r.idleKiB[1]),
              rssBeforeHoldMiB0: mib(r.beforeKiB[0]),
              rssBeforeHoldMiB1: mib(r.beforeKiB[1]),
              rssHeldMiB0: mib(r.heldKiB[0]),
              rssHeldMiB1: mib(r.heldKiB[1]),
              rssPerConnKiB: r.perConnKiB,
              tunnelConns: r.tunnelConns,
              holdOpenMs: r.hold.elapsedMs,
            });
            log(
              `${tag(round, sc)} RSS before hold ${r.beforeKiB.map((k) => fmt(mib(k), 1)).join(' / ')} MiB ` +
                `(idle ${r.idleKiB.map((k) => fmt(mib(k), 1)).join(' / ')}), with ${r.hold.open} ` +
                `connections ${r.heldKiB.map((k) => fmt(mib(k), 1)).join(' / ')} MiB ` +
                `(${Number.isFinite(r.perConnKiB) ? `${fmt(r.perConnKiB, 1)} KiB each, ` : ''}` +
                `opened in ${fmt(r.hold.elapsedMs, 0)} ms` +
                `${Number.isFinite(r.tunnelConns) ? `; ${r.tunnelConns} tunnel connections` : ''})`,
            );
          }
        }
      }
      if (interrupted) break;
      for (const sc of scenarios) samples[sc.name]!.push(part[sc.name]!);
      roundsDone = round;
      lastRoundMs = Date.now() - roundStart;
      log(`round ${round} done in ${Math.round(lastRoundMs / 1000)} s`);
    }
    if (interrupted) return;
    if (roundsDone === 0) throw new Error('no round completed');

    const verification = await verifyPaths(lab, mesh, scenarios, bench.echoConnections);
    verification['tunnels'] = tunnelChecks;
    log(
      `verified paths ${JSON.stringify({ ...verification, tunnels: Object.keys(tunnelChecks) })}`,
    );

    if (profileDir) {
      // --trace-gc lines (from the preload) in each proxy's stdout: keep them next to the stats.
      for (const n of lab.nodes) {
        const gcLines = mesh.proxy(n.name).lines.filter((l) => /^\[\d+:0x[0-9a-f]+\]/.test(l));
        writeFileSync(`${profileDir}/trace-gc-${n.name}.txt`, gcLines.join('\n') + '\n');
      }
    }
    const med: Medians = {};
    const splits: Record<string, RunSample['hostSplitPerGB']> = {};
    for (const sc of scenarios) {
      const list = samples[sc.name]!;
      const m = {} as Record<NumericKey, number>;
      for (const k of NUMERIC_KEYS) if (k !== 'round') m[k] = median(list.map((s) => s[k]));
      med[sc.name] = m;
      splits[sc.name] = {
        user: median(list.map((s) => s.hostSplitPerGB.user)),
        system: median(list.map((s) => s.hostSplitPerGB.system)),
        softirq: median(list.map((s) => s.hostSplitPerGB.softirq)),
        steal: median(list.map((s) => s.hostSplitPerGB.steal)),
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
      quietWaitUsedS: Math.round((settings.quietBudgetMs - quietLeftMs) / 1000),
    };
    const elapsedS = (Date.now() - startedAt) / 1000;
    const result = {
      bench: 'crossnode',
      machine: { ...machine(), busyPctBefore: quiet.busyPct, otherLabsBefore: quiet.otherLabs },
      code,
      tools,
      settings: {
        ...settings,
        groups: [...settings.groups],
        clkTck: tck,
        underLoadMps: UNDER_LOAD_MPS,
        peerPorts: PEER_PORTS,
        peerThreads: {
          haproxy: 'nbthread 1',
          stunnel: 'one thread per connection (stunnel4 build)',
        },
      },
      proxiesInNoMesh: 'running (BPF attached, pods not enrolled: the bypass path)',
      roundsDone,
      elapsedS: Math.round(elapsedS),
      medians: med,
      ratios: ratios(scenarios, med),
      machineCpuSplitPerGB: splits,
      noise,
      runs: samples,
      verification,
    };
    const legend =
      'Cells: median (ratio to ' +
      (['no-mesh', 'haproxy', 'stunnel'] as const)
        .filter((b) => scenarios.some((s) => s.name === b))
        .join(' / ') +
      '); "—": no ratio (self, or the figure is ~0 or absent without a proxy); ' +
      'no-mesh is the baseline and shows values only.';
    const spread = roundsDone > 1 ? `\n\n${spreadTable(scenarios, samples)}` : '';
    const md = `${table(scenarios, med)}\n\n${legend}${spread}`;
    process.stdout.write(`\n${md}\n\n`);
    process.stdout.write(
      `medians of ${roundsDone} round(s); GB = 1e9 bytes; all processes share ${cpus().length} vCPUs; ` +
        `no-mesh runs with both weft proxies up and the pods not enrolled; HAProxy nbthread 1, ` +
        `stunnel4 one thread per connection; took ${Math.round(elapsedS)} s\n` +
        `noise: ${noise.noisyRuns} of ${noise.iperfRuns} 1-stream iperf3 runs had more than 10% of the machine ` +
        `used by something else (unattributed CPU median ${fmt(noise.unattributedCpuSMedian, 2)} s, ` +
        `max ${fmt(noise.unattributedCpuSMax, 2)} s per run)\n\n`,
    );
    process.stdout.write(JSON.stringify(result) + '\n');
    if (settings.jsonFile) writeFileSync(settings.jsonFile, JSON.stringify(result, null, 2) + '\n');
  } finally {
    clearTimeout(watchdog);
    try {
      if (!interrupted) await teardown();
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
  }
  log(`done in ${Math.round((Date.now() - startedAt) / 1000)} s`);
}

main().catch((e: unknown) => {
  log(`${(e as Error).stack ?? String(e)}`);
  process.exitCode = 1;
});
