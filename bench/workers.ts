// bench/workers.ts: does `weft node --workers 2` cost throughput on a small node? One lab
// (2 nodes; node-0: client, node-1: server, both enrolled, so every connection crosses as
// HBONE), and per round both node proxies restarted with --workers 1 and with --workers 2
// (order alternating round by round), each measured with:
//   iperf3 1 stream and 8 streams (Gbit/s), and the short-connection rate (connect, 64-byte
//   echo, close) of 4 concurrent clients of 250 connections each (connections/s),
// plus the CPU seconds the node proxies' processes (control plane and workers) used per GB
// and per 1000 connections. Medians over rounds print as a markdown table.
//
// Run as root after `bash scripts/build.sh`:  node dist/bench/workers.js [--rounds N] [--seconds S]
// Safety: traffic stays in lab namespaces (198.18.0.0/15); loops are bounded; the lab is torn
// down in `finally`; only processes this script started are signalled (by PID, via LabProcess).
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Lab } from '../src/lab/cluster.js';
import { LabMesh } from '../src/lab/mesh.js';
import { DEFAULT_LOG_BATCH_MS } from '../src/telemetry/logger.js';
import type { ConnectRateResult } from './pingpong.js';

const PINGPONG = fileURLToPath(new URL('./pingpong.js', import.meta.url));
const AMBIENT = { 'weft.io/dataplane-mode': 'ambient' };
const IPERF_PORT = 5201;
const ECHO_PORT = 7000;
const CLIENTS = 4;
const CONNECTIONS_PER_CLIENT = 250;

interface Sample {
  gbps1: number;
  gbps8: number;
  connPerSec: number;
  cpuPerGB1: number;
  cpuPerGB8: number;
  cpuMsPerConn: number;
}

function ticks(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]); // utime + stime
  } catch {
    return 0;
  }
}

/** A process and its descendants (the control plane and its workers). */
function tree(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length && i < 64; i++) {
    let tasks: string[] = [];
    try {
      tasks = readdirSync(`/proc/${out[i]}/task`);
    } catch {
      continue;
    }
    for (const task of tasks) {
      try {
        const children = readFileSync(`/proc/${out[i]}/task/${task}/children`, 'utf8').trim();
        if (children) out.push(...children.split(' ').map(Number));
      } catch {
        // the task ended
      }
    }
  }
  return out;
}

const CLK_TCK = 100;

class Bench {
  constructor(
    private readonly lab: Lab,
    private readonly mesh: LabMesh,
  ) {}

  private proxyCpu(): number {
    let total = 0;
    for (const node of ['node-0', 'node-1']) {
      for (const pid of tree(this.mesh.proxy(node).pid)) total += ticks(pid);
    }
    return total / CLK_TCK;
  }

  async restart(workers: number): Promise<void> {
    await this.mesh.stopNode('node-0');
    await this.mesh.stopNode('node-1');
    for (const node of ['node-0', 'node-1']) {
      await this.mesh.startNode(node, ['--workers', String(workers), '--no-access-log']);
    }
    // Warm the tunnels and the JIT.
    await this.lab.connect('client', 'server', ECHO_PORT, { count: 50, bytes: 64 });
  }

  async iperf(streams: number, seconds: number): Promise<{ gbps: number; cpuPerGB: number }> {
    const server = this.lab.pod('server');
    const srv = this.lab.spawn(server.netns, ['iperf3', '-s', '-1', '-p', String(IPERF_PORT)]);
    try {
      for (let i = 0; i < 100; i++) {
        const r = await this.lab.exec(server.netns, ['ss', '-Hltn', `sport = :${IPERF_PORT}`]);
        if (r.stdout.trim()) break;
        await new Promise((res) => setTimeout(res, 50));
      }
      const before = this.proxyCpu();
      const r = await this.lab.exec(
        this.lab.pod('client').netns,
        ['iperf3', '-c', server.ip, '-p', String(IPERF_PORT), '-t', String(seconds)].concat([
          '-P',
          String(streams),
          '-J',
          '--connect-timeout',
          '5000',
        ]),
        { allowFail: true, timeoutMs: seconds * 1000 + 20_000 },
      );
      const cpu = this.proxyCpu() - before;
      const j = JSON.parse(r.stdout) as {
        error?: string;
        end?: { sum_received?: { bytes: number; bits_per_second: number } };
      };
      const recv = j.end?.sum_received;
      if (!recv) throw new Error(`iperf3 -P ${streams}: ${j.error ?? r.stderr}`);
      return { gbps: recv.bits_per_second / 1e9, cpuPerGB: cpu / (recv.bytes / 1e9) };
    } finally {
      await srv.stop('SIGTERM', 3000);
    }
  }

  async connectRate(): Promise<{ perSec: number; cpuMsPerConn: number }> {
    const server = this.lab.pod('server');
    const before = this.proxyCpu();
    const started = Date.now();
    const runs = await Promise.all(
      Array.from({ length: CLIENTS }, () =>
        this.lab.exec(
          this.lab.pod('client').netns,
          [process.execPath, PINGPONG, 'connect', '--host', server.ip, '--port', String(ECHO_PORT)]
            .concat(['--size', '64', '--count', String(CONNECTIONS_PER_CLIENT)])
            .concat(['--timeout-ms', '60000']),
          { allowFail: true, timeoutMs: 70_000 },
        ),
      ),
    );
    const elapsed = (Date.now() - started) / 1000;
    const cpu = this.proxyCpu() - before;
    let done = 0;
    for (const r of runs) {
      const line = r.stdout.trim().split('\n').pop() ?? '';
      const res = JSON.parse(line) as ConnectRateResult;
      if (!res.ok) throw new Error(`connect: ${res.error ?? r.stderr}`);
      done += res.count;
    }
    return { perSec: done / elapsed, cpuMsPerConn: (cpu * 1000) / done };
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string', default: '3' },
      seconds: { type: 'string', default: '5' },
    },
  });
  const rounds = Math.min(10, Math.max(1, Number(values.rounds)));
  const seconds = Math.min(30, Math.max(1, Number(values.seconds)));
  if (process.getuid?.() !== 0)
    throw new Error('bench/workers.ts needs root (network namespaces, BPF)');
  const lab = await Lab.create({
    nodes: 2,
    podsPerNode: 1,
    pods: {
      'pod-0-0': { name: 'client', annotations: AMBIENT },
      'pod-1-0': { name: 'server', annotations: AMBIENT },
    },
  });
  const stop = () => void lab.destroy().finally(() => process.exit(130));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const mesh = await LabMesh.start(lab, { logBatch: `${DEFAULT_LOG_BATCH_MS}ms` });
    const echo = lab.spawn(lab.pod('server').netns, [
      process.execPath,
      PINGPONG,
      'server',
      '--port',
      String(ECHO_PORT),
    ]);
    await echo.waitForLine((l) => l.includes('listening'), 10_000);
    const bench = new Bench(lab, mesh);
    const samples = new Map<number, Sample[]>([
      [1, []],
      [2, []],
    ]);
    for (let round = 0; round < rounds; round++) {
      for (const workers of round % 2 === 0 ? [1, 2] : [2, 1]) {
        await bench.restart(workers);
        const one = await bench.iperf(1, seconds);
        const eight = await bench.iperf(8, seconds);
        const conn = await bench.connectRate();
        const sample: Sample = {
          gbps1: one.gbps,
          gbps8: eight.gbps,
          connPerSec: conn.perSec,
          cpuPerGB1: one.cpuPerGB,
          cpuPerGB8: eight.cpuPerGB,
          cpuMsPerConn: conn.cpuMsPerConn,
        };
        samples.get(workers)!.push(sample);
        process.stderr.write(
          `round ${round + 1} --workers ${workers}: ${JSON.stringify(sample)}\n`,
        );
      }
    }
    const rows: [string, keyof Sample, number][] = [
      ['iperf3 1 stream, Gbit/s', 'gbps1', 2],
      ['iperf3 8 streams, Gbit/s', 'gbps8', 2],
      ['short connections/s (4 clients)', 'connPerSec', 0],
      ['proxy CPU-s per GB, 1 stream', 'cpuPerGB1', 2],
      ['proxy CPU-s per GB, 8 streams', 'cpuPerGB8', 2],
      ['proxy CPU-ms per connection', 'cpuMsPerConn', 2],
    ];
    let out = `medians of ${rounds} round(s), ${seconds} s iperf3 runs, both nodes' proxies\n\n`;
    out += '| figure | --workers 1 | --workers 2 | 2 vs 1 |\n|---|---|---|---|\n';
    for (const [label, key, digits] of rows) {
      const a = median(samples.get(1)!.map((s) => s[key]));
      const b = median(samples.get(2)!.map((s) => s[key]));
      out += `| ${label} | ${a.toFixed(digits)} | ${b.toFixed(digits)} | ${(b / a).toFixed(2)}x |\n`;
    }
    process.stdout.write(out);
    process.stdout.write(`${JSON.stringify(Object.fromEntries(samples))}\n`);
    await mesh.stop();
  } finally {
    await lab.destroy();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`bench/workers: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
