// Giving freed C heap back to the kernel. node:http2 and node:tls allocate a buffer for every
// TLS record they decode; after a burst of traffic glibc keeps the freed memory (scattered, so
// free() cannot shrink the heap) and the proxy's RSS stays 40–50 MB above what it uses
// (docs/benchmarks.md). malloc_trim(0) returns those pages. It runs on a timer and only when
// RSS has grown since the last trim, so an idle or steady proxy pays one RSS read per period.
import { performance } from 'node:perf_hooks';
import { libc } from '../bpf/ffi.js';
import type { Logger } from '../telemetry/logger.js';

export interface HeapTrimOptions {
  /** How often RSS is checked. */
  readonly intervalMs: number;
  /** Growth of RSS since the last trim (or start) that makes a trim worth it. */
  readonly minGrowthBytes: number;
  readonly onTrim?: (report: { before: number; after: number; ms: number }) => void;
}

export const DEFAULT_HEAP_TRIM: HeapTrimOptions = {
  intervalMs: 10_000,
  minGrowthBytes: 8 * 1024 * 1024,
};

/** Starts the timer; returns its stop function. */
export function startHeapTrim(options: HeapTrimOptions = DEFAULT_HEAP_TRIM): () => void {
  let baseline = process.memoryUsage.rss();
  const timer = setInterval(() => {
    const before = process.memoryUsage.rss();
    if (before < baseline + options.minGrowthBytes) {
      baseline = Math.min(baseline, before);
      return;
    }
    const started = performance.now();
    libc.mallocTrim(0);
    const after = process.memoryUsage.rss();
    baseline = after;
    options.onTrim?.({ before, after, ms: performance.now() - started });
  }, options.intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

/** Reports each trim at debug level, in MiB. */
export function heapTrimLogger(log: Logger): NonNullable<HeapTrimOptions['onTrim']> {
  const mib = (bytes: number) => Math.round((bytes / 1048576) * 10) / 10;
  return ({ before, after, ms }) =>
    log.debug(
      { rssBeforeMiB: mib(before), rssAfterMiB: mib(after), ms: Math.round(ms * 10) / 10 },
      'returned freed heap memory to the kernel',
    );
}
