// End-to-end: `weft node --workers 2`. The control plane forks two data-plane workers; new
// connections spread over both (each access-log line names its worker; at a destination,
// HBONE spreads per tunnel, since streams share their pooled tunnel), cross-node HBONE,
// same-node relay and the BPF direct path work, a policy denies and a policy change cuts a
// live connection, the metrics count every connection exactly once across workers, and a
// killed worker's share goes to the other one with no failed connection until the control
// plane has restarted it.
import test from 'ava';
import { Lab } from '../src/lab/cluster.js';
import { LabMesh, type AccessEntry } from '../src/lab/mesh.js';
import { requireRoot } from './helpers/root.js';
import { authorizationPolicy, eventually, writeManifest } from './helpers/mesh-config.js';

const AMBIENT = { 'weft.io/dataplane-mode': 'ambient' };
const PORT = 8080;

let lab: Lab;
let mesh: LabMesh;

test.before(async () => {
  requireRoot();
  lab = await Lab.create({
    nodes: 2,
    podsPerNode: [4, 1],
    pods: {
      'pod-0-0': { name: 'client', serviceAccount: 'web', annotations: AMBIENT },
      'pod-0-1': { name: 'local', namespace: 'shop', serviceAccount: 'api', annotations: AMBIENT },
      'pod-0-2': { name: 'tool', namespace: 'other', serviceAccount: 'tool', annotations: AMBIENT },
      'pod-0-3': { name: 'plain', annotations: {} },
      'pod-1-0': { name: 'remote', namespace: 'shop', serviceAccount: 'api', annotations: AMBIENT },
    },
  });
  mesh = await LabMesh.start(lab, { nodeArgs: ['--workers', '2'] });
  await lab.serve('local', PORT);
  await lab.serve('remote', PORT);
});

test.after.always(async () => {
  await mesh?.stop();
  await lab?.destroy();
});

function writePolicies(objects: object[]): Promise<void> {
  return writeManifest(mesh, 'policy.yaml', objects);
}

function shopPolicy(name: string, spec: object): object {
  return authorizationPolicy('shop', name, spec);
}

/** `{worker, pid}` of each 'data-plane worker ready' line the node's control plane printed. */
function readyWorkers(node: string): { worker: number; pid: number }[] {
  return mesh
    .proxy(node)
    .lines.filter((l) => l.includes('"data-plane worker ready"'))
    .map((l) => JSON.parse(l) as { worker: number; pid: number });
}

function closedTotal(metrics: string, from: string, to: string, reporter: string): number {
  let total = 0;
  for (const line of metrics.split('\n')) {
    if (!line.startsWith('istio_tcp_connections_closed_total{')) continue;
    if (!line.includes(`source_workload="${from}"`)) continue;
    if (!line.includes(`destination_workload="${to}"`)) continue;
    if (!line.includes(`reporter="${reporter}"`)) continue;
    total += Number(line.split(' ').pop());
  }
  return total;
}

function byWorker(entries: readonly AccessEntry[]): Map<number | undefined, number> {
  const out = new Map<number | undefined, number>();
  for (const e of entries) out.set(e.worker, (out.get(e.worker) ?? 0) + 1);
  return out;
}

test.serial('two workers per node, each with its own process', (t) => {
  for (const node of ['node-0', 'node-1']) {
    const ready = readyWorkers(node);
    t.deepEqual(ready.map((r) => r.worker).sort(), [0, 1], `${node}: both workers reported ready`);
    const pids = new Set([mesh.proxy(node).pid, ...ready.map((r) => r.pid)]);
    t.is(pids.size, 3, 'control plane and two workers are three processes');
  }
});

test.serial(
  'cross-node HBONE: connections spread over the source workers, metrics exact',
  async (t) => {
    const count = 40;
    const before0 = mesh.accessLog('node-0').length;
    const before1 = mesh.accessLog('node-1').length;
    const metricsBefore = await mesh.fetchFromNode('node-0', '/metrics');
    const results = await lab.connect('client', 'remote', PORT, { count, bytes: 256 });
    t.is(
      results.filter((r) => r.ok && r.match).length,
      count,
      JSON.stringify(results.find((r) => !r.ok)),
    );
    const out = (await mesh.waitForAccessLog('node-0', before0 + count)).slice(before0);
    const inb = (await mesh.waitForAccessLog('node-1', before1 + count)).slice(before1);
    t.is(out.length, count, 'each connection logged once at the source');
    t.is(inb.length, count, 'each connection logged once at the destination');
    t.true(
      out.every((e) => e.path === 'hbone' || e.security === 'mutual_tls'),
      JSON.stringify(out[0]),
    );
    t.true(inb.every((e) => e.security === 'mutual_tls'));
    const spreadOut = byWorker(out);
    t.true((spreadOut.get(0) ?? 0) > 0 && (spreadOut.get(1) ?? 0) > 0, `source ${[...spreadOut]}`);
    t.true(inb.every((e) => e.worker === 0 || e.worker === 1));
    t.true(
      await eventually(async () => {
        const now = await mesh.fetchFromNode('node-0', '/metrics');
        return (
          closedTotal(now, 'client', 'remote', 'source') -
            closedTotal(metricsBefore, 'client', 'remote', 'source') ===
          count
        );
      }, 5000),
      'istio_tcp_connections_closed_total grew by exactly the connections made, summed over workers',
    );
  },
);

test.serial('inbound plaintext connections spread over the destination workers', async (t) => {
  const count = 40;
  const before = mesh.accessLog('node-1').length;
  const results = await lab.connect('plain', 'remote', PORT, { count, bytes: 128 });
  t.is(results.filter((r) => r.ok && r.match).length, count);
  const entries = (await mesh.waitForAccessLog('node-1', before + count)).slice(before);
  t.is(entries.length, count);
  t.true(entries.every((e) => e.direction === 'inbound' && e.path === 'inbound-plaintext'));
  const spread = byWorker(entries);
  t.true((spread.get(0) ?? 0) > 0 && (spread.get(1) ?? 0) > 0, `destination ${[...spread]}`);
});

test.serial('same node: relayed by a worker first, then in BPF, logged once', async (t) => {
  await writePolicies([]);
  t.true(await eventually(async () => (await lab.connect('client', 'local', PORT))[0]!.ok));
  const results = await lab.connect('client', 'local', PORT, { count: 5, bytes: 1000 });
  t.is(results.filter((r) => r.ok && r.match).length, 5);
  // By client address: a direct flow is logged up to 200 ms after it closes, so the warm-up
  // connection's line may come after these began.
  const sources = new Set(results.map((r) => r.local));
  const ours = () => mesh.accessLog('node-0').filter((e) => sources.has(e.src));
  await eventually(async () => ours().length >= 5);
  const entries = ours();
  t.is(entries.length, 5);
  t.true(entries.every((e) => e.path === 'same-node'));
  t.true(
    entries.some((e) => e.datapath === 'bpf'),
    'the workers handed their verdict to the control plane, which let later pairs pass in BPF',
  );
  const direct = entries.filter((e) => e.datapath === 'bpf');
  t.true(
    direct.every((e) => e.worker === undefined),
    'direct flows are the control plane’s',
  );
  t.true(direct.every((e) => e.bytesSent === 1000 && e.bytesReceived === 1000));
});

test.serial(
  'policy: a denial is refused by whichever worker, a change cuts a live connection',
  async (t) => {
    await writePolicies([
      shopPolicy('deny-tool', {
        action: 'DENY',
        rules: [{ from: [{ source: { namespaces: ['other'] } }] }],
      }),
    ]);
    t.true(
      await eventually(
        async () => !(await lab.connect('tool', 'remote', PORT, { timeoutMs: 3000 }))[0]!.ok,
      ),
    );
    const denied = await lab.connect('tool', 'remote', PORT, { count: 6, timeoutMs: 3000 });
    t.is(denied.filter((r) => r.ok).length, 0, 'every attempt refused');
    t.true((await lab.connect('client', 'remote', PORT))[0]!.ok, 'the client is still allowed');

    // Several live connections through the tunnels of both source workers.
    const holders = Array.from({ length: 6 }, () =>
      lab.spawn(lab.pod('client').netns, [
        process.execPath,
        '-e',
        `const s=require('net').connect({host:'${lab.pod('remote').ip}',port:${PORT}},()=>{s.write('x')});` +
          `s.once('data',()=>console.log('data'));s.on('close',()=>{console.log('closed');process.exit(0)});` +
          `s.on('error',e=>console.log('error '+e.code));setTimeout(()=>{console.log('still-open');process.exit(2)},20000)`,
      ]),
    );
    try {
      for (const h of holders) await h.waitForLine((l) => l === 'data', 5000);
      await writePolicies([
        shopPolicy('deny-web', {
          action: 'DENY',
          rules: [{ from: [{ source: { principals: ['cluster.local/ns/default/sa/web'] } }] }],
        }),
      ]);
      for (const h of holders) {
        const line = await h.waitForLine((l) => l === 'closed' || l === 'still-open', 15_000);
        t.is(line, 'closed', 'every live connection was cut, whichever worker held it');
      }
      t.false((await lab.connect('client', 'remote', PORT, { timeoutMs: 3000 }))[0]!.ok);
    } finally {
      await Promise.all(holders.map((h) => h.stop()));
      await writePolicies([]);
    }
    t.true(await eventually(async () => (await lab.connect('client', 'remote', PORT))[0]!.ok));
  },
);

test.serial(
  'a killed worker: the other takes its share at once, and it is restarted',
  async (t) => {
    const node0 = lab.node('node-0');
    const control = mesh.proxy('node-0');
    const victim = readyWorkers('node-0')
      .filter((r) => r.worker === 1)
      .pop()!;
    const dropsBefore = mesh.counters(node0, lab.pod('client').ip)?.droppedNoListener ?? 0n;
    process.kill(victim.pid, 'SIGKILL');
    await control.waitForLine((l) => l.includes('data-plane worker exited'), 5000);
    const logged = mesh.accessLog('node-0').length;
    const count = 300;
    const results = await lab.connect('client', 'remote', PORT, {
      count,
      bytes: 64,
      connectTimeoutMs: 800,
      timeoutMs: 3000,
    });
    const failed = results.filter((r) => !r.ok || !r.match);
    t.is(failed.length, 0, `failed: ${JSON.stringify(failed.slice(0, 3))}`);
    t.is(
      mesh.counters(node0, lab.pod('client').ip)?.droppedNoListener ?? 0n,
      dropsBefore,
      'no SYN found every slot empty',
    );
    t.true(
      await eventually(
        () => readyWorkers('node-0').filter((r) => r.worker === 1).length === 2,
        10_000,
      ),
      'worker 1 restarted',
    );
    const restarted = readyWorkers('node-0')
      .filter((r) => r.worker === 1)
      .pop()!;
    t.not(restarted.pid, victim.pid);
    const entries = (await mesh.waitForAccessLog('node-0', logged + count)).slice(logged);
    t.is(entries.length, count, 'each connection relayed once');
    // After the restart, worker 1 takes connections again.
    const after = mesh.accessLog('node-0').length;
    const again = await lab.connect('client', 'remote', PORT, { count: 30, bytes: 64 });
    t.is(again.filter((r) => r.ok).length, 30);
    const spread = byWorker((await mesh.waitForAccessLog('node-0', after + 30)).slice(after));
    t.true((spread.get(1) ?? 0) > 0, `the restarted worker serves: ${[...spread]}`);
  },
);

test.serial(
  'SIGTERM drains the workers and exits; a successor with workers takes over',
  async (t) => {
    const old = mesh.proxy('node-0');
    const loop = lab.connect('client', 'remote', PORT, {
      count: 600,
      bytes: 64,
      connectTimeoutMs: 800,
      timeoutMs: 3000,
    });
    await new Promise((r) => setTimeout(r, 1000));
    const successor = await mesh.startNode('node-0');
    t.regex(successor.stdout, /taking over/);
    await new Promise((r) => setTimeout(r, 500));
    const exit = await old.stop('SIGTERM', 10_000);
    t.is(exit.code, 0);
    const results = await loop;
    const failed = results.filter((r) => !r.ok || !r.match);
    t.is(failed.length, 0, `failed: ${JSON.stringify(failed.slice(0, 3))}`);
    t.is(old.lines.filter((l) => l.includes('"data-plane worker stopped"')).length, 2);
  },
);
