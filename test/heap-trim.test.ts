// The heap trimmer (src/cli/heap-trim.ts) against glibc itself: freed, scattered buffers are
// kept by malloc until the trim hands their pages back. No root needed.
import test from 'ava';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { startHeapTrim } from '../src/cli/heap-trim.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

test('after a burst of buffers, a trim gives their pages back and RSS falls', async (t) => {
  // 4,096 buffers of 16 KiB (64 MiB) from malloc, every 16th kept so the heap cannot shrink
  // from its top: what node:http2 leaves behind after a burst of TLS records.
  let burst: Buffer[] = [];
  for (let i = 0; i < 4096; i++) burst.push(Buffer.allocUnsafeSlow(16 * 1024).fill(i & 0xff));
  const kept = burst.filter((_, i) => i % 16 === 0);
  burst = [];
  gc();
  gc();
  const reports: { before: number; after: number; ms: number }[] = [];
  const stop = startHeapTrim({
    intervalMs: 20,
    minGrowthBytes: 0,
    onTrim: (report) => reports.push(report),
  });
  try {
    for (let i = 0; i < 100 && reports.length === 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  } finally {
    stop();
  }
  t.is(kept.length, 256);
  t.true(reports.length > 0, 'a trim ran');
  const { before, after, ms } = reports[0]!;
  const freedMiB = (before - after) / 1048576;
  t.true(
    freedMiB > 16,
    `RSS ${(before / 1048576).toFixed(1)} -> ${(after / 1048576).toFixed(1)} MiB`,
  );
  t.true(ms >= 0);
});

test('no trim while RSS has not grown by the threshold', async (t) => {
  let trims = 0;
  const stop = startHeapTrim({
    intervalMs: 10,
    minGrowthBytes: 1024 * 1024 * 1024,
    onTrim: () => trims++,
  });
  await new Promise((resolve) => setTimeout(resolve, 100));
  stop();
  t.is(trims, 0);
});
