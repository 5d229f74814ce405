// bench/procfs.ts: what the benchmarks read from /proc: CPU time of given processes
// (utime + stime), of the whole machine, and a process's resident set size. Read-only.

import { execFileSync } from 'node:child_process';
import { readFileSync, readlinkSync } from 'node:fs';
import { cpus } from 'node:os';
import { basename } from 'node:path';

/** Clock ticks per second of the times in /proc/<pid>/stat and /proc/stat. */
export function clkTck(): number {
  const out = execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 5000 }).trim();
  const n = Number(out);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`getconf CLK_TCK: ${out}`);
  return n;
}

/**
 * utime + stime of one process (all its threads, live and exited), in clock ticks: fields 14
 * and 15 of /proc/<pid>/stat.
 */
export function processTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // comm (field 2) may hold spaces: count fields after its closing parenthesis (field 3 first).
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(rest[14 - 3]) + Number(rest[15 - 3]);
}

/** A field of /proc/<pid>/status in kB (VmRSS, VmHWM...), or NaN when absent. */
export function statusKb(pid: number, field: string): number {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}

/** Number of threads of a process (Threads: in /proc/<pid>/status). */
export function threadCount(pid: number): number {
  const m = /^Threads:\s+(\d+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/** The executable's base name of a process (readlink /proc/<pid>/exe). */
export function exeName(pid: number): string {
  return basename(readlinkSync(`/proc/${pid}/exe`));
}

/** CPU ticks of the whole machine (every CPU), from the first line of /proc/stat. */
export interface HostTicks {
  user: number;
  system: number;
  softirq: number;
  steal: number;
  /** user + nice + system + irq + softirq (steal excluded: the hypervisor's, not ours). */
  busy: number;
}

export function hostTicks(): HostTicks {
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

export interface CpuSnapshot {
  /** Ticks per measured PID, in the order given. */
  perPid: number[];
  host: HostTicks;
}

export interface CpuDelta {
  /** The measured processes together, utime + stime, seconds. */
  proxyS: number;
  /** The same per process (order of the PIDs given), seconds. */
  perPidS: number[];
  /** Whole machine, busy seconds (all CPUs). */
  hostS: number;
  hostUserS: number;
  hostSystemS: number;
  hostSoftirqS: number;
  hostStealS: number;
}

/** CPU time of a set of processes and of the machine between two points. */
export class CpuMeter {
  constructor(
    private readonly pids: readonly number[],
    private readonly tck: number,
  ) {}
  snapshot(): CpuSnapshot {
    return { perPid: this.pids.map(processTicks), host: hostTicks() };
  }
  since(before: CpuSnapshot): CpuDelta {
    const now = this.snapshot();
    const d = (k: keyof HostTicks) => (now.host[k] - before.host[k]) / this.tck;
    const perPidS = now.perPid.map((t, i) => (t - before.perPid[i]!) / this.tck);
    return {
      proxyS: perPidS.reduce((a, b) => a + b, 0),
      perPidS,
      hostS: d('busy'),
      hostUserS: d('user'),
      hostSystemS: d('system'),
      hostSoftirqS: d('softirq'),
      hostStealS: d('steal'),
    };
  }
}

/** Busy % of all CPUs over `ms`. */
export async function measureBusy(ms: number, tck: number): Promise<number> {
  const a = hostTicks();
  await new Promise((r) => setTimeout(r, ms));
  const b = hostTicks();
  return Math.round((100 * (b.busy - a.busy)) / ((ms / 1000) * cpus().length * tck));
}

/** This process's hard limit on open files (children cannot get more without CAP_SYS_RESOURCE). */
export function hardNofile(): number {
  const m = /^Max open files\s+\S+\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  const v = m?.[1];
  return v === undefined ? 1024 : v === 'unlimited' ? 1_048_576 : Number(v);
}
