// The worker pool's state resync over a real IPC channel: a worker that reports a missed
// change gets the whole state from the control plane. The worker here is a small stand-in
// program (it speaks the protocol, nothing else). No root needed.
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { ToWorker } from '../src/workers/protocol.js';
import { WorkerPool } from '../src/workers/pool.js';

// On init: ready, then "I missed a change". On the whole state: echo its generation back
// (as an `allow`, the one message the pool hands to its owner). On stop: leave.
const STAND_IN = `
process.on('message', (m) => {
  if (m.type === 'init') {
    process.send({ type: 'ready', pid: process.pid });
    process.send({ type: 'resync', generation: m.state.generation });
  } else if (m.type === 'state') {
    process.send({
      type: 'allow',
      generation: m.state.generation,
      verdict: { clientIp: '198.19.0.1', serverIp: '198.19.0.2', serverPort: m.state.objects.length },
    });
  } else if (m.type === 'stop') {
    process.send({ type: 'stopped', resetConnections: 0 }, () => process.exit(0));
  }
});
`;

test('a worker that missed a change is sent the whole state', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'weft-pool-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const entry = join(dir, 'stand-in.cjs');
  await writeFile(entry, STAND_IN);
  const allows: { generation: number; objects: number }[] = [];
  let asked = 0;
  const pool = new WorkerPool({
    count: 1,
    entry,
    log: pino({ level: 'silent' }),
    initFor: (worker) =>
      ({
        type: 'init',
        worker,
        state: { generation: 3, objects: [] },
      }) as unknown as Extract<ToWorker, { type: 'init' }>, // the stand-in reads only these
    stateFor: () => {
      asked++;
      return { type: 'state', state: { generation: 7, objects: [] } };
    },
    onAllow: (message) =>
      allows.push({ generation: message.generation, objects: message.verdict.serverPort }),
  });
  await pool.start(5000);
  t.teardown(() => pool.stop(0));
  for (let i = 0; i < 100 && allows.length === 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  t.is(asked, 1, 'the control plane was asked once');
  t.deepEqual(allows, [{ generation: 7, objects: 0 }], 'the worker got the whole state');
});
