#!/usr/bin/env node
// Reads ava's TAP output and prints the plain closing line CI looks for:
// "N passed, N failed" (", N skipped" when any). Exits non-zero when a test failed, when no
// test ran, or when the TAP stream shows the runner crashed.
import { readFileSync } from 'node:fs';

const tap = readFileSync(process.argv[2] ?? 0, 'utf8');
let passed = 0;
let failed = 0;
let skipped = 0;
for (const line of tap.split('\n')) {
  const ok = /^ok \d+/.test(line);
  const notOk = /^not ok \d+/.test(line);
  if (!ok && !notOk) continue;
  if (/#\s*(SKIP|TODO)/i.test(line)) skipped++;
  else if (ok) passed++;
  else failed++;
}
const runnerStatus = Number(process.argv[3] ?? 0);
// A runner that died outside any test (uncaught error in a hook, crash) still fails the run.
if (runnerStatus !== 0 && failed === 0) failed = 1;
if (passed + failed === 0) failed = 1;
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(failed > 0 ? 1 : 0);
