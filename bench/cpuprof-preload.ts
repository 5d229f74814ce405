// bench/cpuprof-preload.ts: diagnosis aid for bench/crossnode.ts --gc-stats DIR / --cpu-prof DIR.
// Loaded into the weft node processes with NODE_OPTIONS=--import (Node refuses --cpu-prof in
// NODE_OPTIONS). On SIGUSR2 (the bench sends it once the proxy is ready: the profiler's SIGPROF
// ticks make the kernel's BPF verifier give up with EAGAIN, so nothing may sample while the
// proxy loads its program) it starts a GC observer and a 1 s heap timeline, and with
// WEFT_BENCH_CPU_PROFILE=1 the V8 sampling profiler. On exit it writes DIR/weft-<pid>.gc.json
// and DIR/weft-<pid>.cpuprofile (the in-process inspector session answers synchronously).
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { PerformanceObserver, constants, type PerformanceEntry } from 'node:perf_hooks';
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

const dir = process.env.WEFT_BENCH_PROFILE_DIR;
const cpuProfile = process.env.WEFT_BENCH_CPU_PROFILE === '1';

const KINDS: Record<number, string> = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
  [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb',
};

const MAX_TIMELINE = 3600;

if (dir) {
  setFlagsFromString('--expose-gc');
  // V8's own one-line-per-GC trace (with the reason, e.g. "external memory pressure") goes to
  // stdout; the bench keeps those lines from the proxies' output.
  setFlagsFromString('--trace-gc');
  const gcNow = runInNewContext('gc') as () => void;
  const session = cpuProfile ? new Session() : undefined;
  if (session) {
    session.connect();
    session.post('Profiler.enable');
    session.post('Profiler.setSamplingInterval', { interval: 200 });
  }
  const gc: Record<string, { count: number; ms: number }> = {};
  const timeline: { s: number; usedMB: number; majors: number; minors: number }[] = [];
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries() as (PerformanceEntry & { detail?: { kind?: number } })[]) {
      const kind = KINDS[e.detail?.kind ?? -1] ?? 'other';
      const g = (gc[kind] ??= { count: 0, ms: 0 });
      g.count++;
      g.ms += e.duration;
    }
  });
  let startedAt = 0;
  process.on('SIGUSR2', () => {
    if (startedAt) return;
    startedAt = performance.now();
    observer.observe({ entryTypes: ['gc'] });
    const tick = setInterval(() => {
      if (timeline.length >= MAX_TIMELINE) return;
      timeline.push({
        s: Math.round((performance.now() - startedAt) / 1000),
        usedMB: Math.round(getHeapStatistics().used_heap_size / 1e5) / 10,
        majors: gc['major']?.count ?? 0,
        minors: gc['minor']?.count ?? 0,
      });
    }, 1000);
    tick.unref();
    session?.post('Profiler.start');
  });
  process.on('exit', () => {
    if (!startedAt) return;
    const before = getHeapStatistics();
    session?.post('Profiler.stop', (err, res) => {
      if (!err && res) {
        writeFileSync(`${dir}/weft-${process.pid}.cpuprofile`, JSON.stringify(res.profile));
      }
    });
    gcNow();
    const after = getHeapStatistics();
    writeFileSync(
      `${dir}/weft-${process.pid}.gc.json`,
      JSON.stringify({
        windowMs: Math.round(performance.now() - startedAt),
        gc,
        usedHeapMB: before.used_heap_size / 1e6,
        usedHeapAfterFullGcMB: after.used_heap_size / 1e6,
        totalHeapMB: before.total_heap_size / 1e6,
        timeline,
      }) + '\n',
    );
  });
}
