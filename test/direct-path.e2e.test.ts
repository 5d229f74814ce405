// End-to-end: the same-node direct path. After the proxy allowed a (client pod, server pod,
// port), later connections of that pair pass in BPF without the proxy; they are still
// counted, logged with exact bytes, re-checked when policy changes (and cut), refused when
// denied, and refused when the proxy is down. A node started with --no-direct-same-node, or
// without CAP_SYS_ADMIN (needed to abort cut flows), relays every connection.
import test, { type ExecutionContext } from 'ava';
import { Lab, type PodServer } from '../src/lab/cluster.js';
import { LabMesh, type AccessEntry } from '../src/lab/mesh.js';
import { requireRoot } from './helpers/root.js';
import { authorizationPolicy, eventually, writeManifest } from './helpers/mesh-config.js';

const AMBIENT = { 'weft.io/dataplane-mode': 'ambient' };
const PORT = 8080;

let lab: Lab;
let mesh: LabMesh;
const servers = new Map<string, PodServer>();

test.before(async () => {
  requireRoot();
  lab = await Lab.create({
    nodes: 2,
    podsPerNode: [4, 1],
    pods: {
      'pod-0-0': { name: 'client', serviceAccount: 'web', annotations: AMBIENT },
      'pod-0-1': { name: 'server', namespace: 'shop', serviceAccount: 'api', annotations: AMBIENT },
      'pod-0-2': { name: 'tool', namespace: 'other', serviceAccount: 'tool', annotations: AMBIENT },
      'pod-0-3': { name: 'plain', annotations: {} },
      'pod-1-0': { name: 'remote', annotations: AMBIENT },
    },
  });
  mesh = await LabMesh.start(lab);
  servers.set('server', await lab.serve('server', PORT));
});

test.after.always(async () => {
  await mesh?.stop();
  await lab?.destroy();
});

function writePolicies(objects: object[]): Promise<void> {
  return writeManifest(mesh, 'policy.yaml', objects);
}

function serverPolicy(name: string, spec: object): object {
  return authorizationPolicy('shop', name, spec);
}

function counters(pod: string) {
  const c = mesh.counters(lab.node('node-0'), lab.pod(pod).ip);
  return {
    direct: c?.direct ?? 0n,
    captured: c?.capturedOutbound ?? 0n,
    droppedCut: c?.droppedCut ?? 0n,
    droppedNoListener: c?.droppedNoListener ?? 0n,
  };
}

async function entriesAfter(count: number, n = 1): Promise<AccessEntry[]> {
  return (await mesh.waitForAccessLog('node-0', count + n, 5000)).slice(count);
}

async function connectOnce(from: string, bytes = 64) {
  const [result] = await lab.connect(from, lab.pod('server').ip, PORT, {
    bytes,
    timeoutMs: 4000,
    connectTimeoutMs: 1500,
  });
  return result!;
}

test.serial('the first connection is relayed, the next ones pass in BPF', async (t) => {
  await writePolicies([]);
  t.true(await eventually(async () => (await connectOnce('client')).ok));
  const before = counters('client');
  const logged = mesh.accessLog('node-0').length;
  const result = await connectOnce('client', 300_000);
  t.true(result.ok && result.match, result.error ?? '');
  const after = counters('client');
  t.is(after.direct - before.direct, 1n, 'decided in BPF');
  t.is(after.captured - before.captured, 0n, 'not captured by the proxy');

  const [entry] = await entriesAfter(logged);
  t.is(entry?.path, 'same-node');
  t.is(entry?.datapath, 'bpf');
  t.is(entry?.src, result.local, 'the client address as the server saw it');
  t.is(entry?.dst, `${lab.pod('server').ip}:${PORT}`);
  t.is(entry?.bytesSent, 300_000, 'bytes counted once each way, in BPF');
  t.is(entry?.bytesReceived, 300_000);
  t.is(entry?.srcIdentity, 'spiffe://cluster.local/ns/default/sa/web');
  t.is(entry?.dstIdentity, 'spiffe://cluster.local/ns/shop/sa/api');
  t.is(entry?.responseFlags, '-');
  t.true((entry?.durationMs ?? -1) >= 0);
  const [closed] = (await servers.get('server')!.waitForClosed(1)).slice(-1);
  t.is(closed!.remote.split(':')[0], lab.pod('client').ip, 'the server sees the real client');
});

test.serial('direct flows are in the Istio TCP metrics like relayed ones', async (t) => {
  const metricsBefore = await mesh.fetchFromNode('node-0', '/metrics');
  const sentBefore = sentBytes(metricsBefore);
  const before = counters('client');
  for (let i = 0; i < 3; i++) t.true((await connectOnce('client', 10_000)).ok);
  t.is(counters('client').direct - before.direct, 3n);
  t.true(
    await eventually(
      async () => sentBytes(await mesh.fetchFromNode('node-0', '/metrics')) - sentBefore === 30_000,
      5000,
    ),
    'istio_tcp_sent_bytes_total grew by exactly the bytes sent',
  );
  const metrics = await mesh.fetchFromNode('node-0', '/metrics');
  t.regex(metrics, /weft_bpf_packets_total\{[^}]*counter="direct"[^}]*\} [1-9]/);
});

/** istio_tcp_sent_bytes_total of the client -> server pair at the source reporter. */
function sentBytes(metrics: string): number {
  let total = 0;
  for (const line of metrics.split('\n')) {
    if (!line.startsWith('istio_tcp_sent_bytes_total{')) continue;
    if (
      !line.includes('source_workload="client"') ||
      !line.includes('destination_workload="server"')
    )
      continue;
    total += Number(line.split(' ').pop());
  }
  return total;
}

test.serial('a denied pair never passes in BPF: every attempt is refused and logged', async (t) => {
  await writePolicies([
    serverPolicy('deny-tool', {
      action: 'DENY',
      rules: [{ from: [{ source: { namespaces: ['other'] } }] }],
    }),
  ]);
  t.true(await eventually(async () => !(await connectOnce('tool')).ok));
  const before = counters('tool');
  const logged = mesh.accessLog('node-0').length;
  for (let i = 0; i < 3; i++) t.false((await connectOnce('tool')).ok);
  t.is(counters('tool').direct - before.direct, 0n);
  const refusals = (await entriesAfter(logged, 3)).filter((e) => e.responseFlags === 'DENY');
  t.is(refusals.length, 3, 'three refusals logged');
  t.is(refusals[0]?.policy, 'shop/deny-tool');
  t.true((await connectOnce('client')).ok, 'the client is still allowed');
});

test.serial('a policy change cuts a live direct flow and names the policy', async (t) => {
  await writePolicies([]);
  t.true(await eventually(async () => (await connectOnce('client')).ok));
  t.true((await connectOnce('client')).ok);
  const before = counters('client');
  const holder = lab.spawn(lab.pod('client').netns, [
    process.execPath,
    '-e',
    `const s=require('net').connect({host:'${lab.pod('server').ip}',port:${PORT}},()=>{console.log('connected');s.write('x')});` +
      `s.on('data',()=>console.log('data'));s.on('close',()=>{console.log('closed');process.exit(0)});` +
      `s.on('error',e=>console.log('error '+e.code));setTimeout(()=>{console.log('still-open');process.exit(2)},20000)`,
  ]);
  try {
    await holder.waitForLine((l) => l === 'data', 5000);
    t.is(counters('client').direct - before.direct, 1n, 'the held connection is direct');
    await writePolicies([
      serverPolicy('deny-web', {
        action: 'DENY',
        rules: [{ from: [{ source: { principals: ['cluster.local/ns/default/sa/web'] } }] }],
      }),
    ]);
    const line = await holder.waitForLine((l) => l === 'closed' || l === 'still-open', 15_000);
    t.is(line, 'closed', 'the live connection was closed');
    const cut = () =>
      mesh
        .accessLog('node-0')
        .filter((e) => e.datapath === 'bpf' && e.error?.startsWith('policy changed'))
        .pop();
    t.true(await eventually(() => cut() !== undefined, 5000));
    t.is(cut()?.policy, 'shop/deny-web');
    t.is(cut()?.responseFlags, 'DENY');
    t.false((await connectOnce('client')).ok, 'a new connection is refused');
  } finally {
    await holder.stop();
  }
});

test.serial('with the proxy down, a recorded pair fails closed', async (t) => {
  await writePolicies([]);
  t.true(await eventually(async () => (await connectOnce('client')).ok));
  t.true((await connectOnce('client')).ok);
  await mesh.stopNode('node-0', 'SIGKILL');
  try {
    const before = counters('client');
    const result = await connectOnce('client');
    t.false(result.ok, 'refused without the proxy');
    const after = counters('client');
    t.is(after.direct - before.direct, 0n);
    t.true(after.droppedNoListener > before.droppedNoListener, 'dropped at the SYN');
  } finally {
    await mesh.startNode('node-0');
  }
  t.true(await eventually(async () => (await connectOnce('client')).ok), 'back after restart');
});

/** Makes `n` client connections and checks that the proxy relayed every one (none direct). */
async function expectAllRelayed(t: ExecutionContext, n: number): Promise<void> {
  const before = counters('client');
  for (let i = 0; i < n; i++) t.true((await connectOnce('client')).ok);
  const after = counters('client');
  t.is(after.direct - before.direct, 0n);
  t.is(after.captured - before.captured, BigInt(n));
}

test.serial('--no-direct-same-node relays every same-node connection', async (t) => {
  await mesh.stopNode('node-0');
  await mesh.startNode('node-0', ['--no-direct-same-node']);
  try {
    await expectAllRelayed(t, 3);
  } finally {
    await mesh.stopNode('node-0');
    await mesh.startNode('node-0');
  }
});

test.serial('without CAP_SYS_ADMIN the direct path is off, and says so', async (t) => {
  await mesh.stopNode('node-0');
  const withoutSysAdmin = [
    'setpriv',
    '--bounding-set',
    '-all,+bpf,+net_admin',
    '--inh-caps',
    '-all',
  ];
  const proxy = await mesh.startNode('node-0', [], { wrapper: withoutSysAdmin });
  try {
    t.true(proxy.lines.some((l) => l.includes('same-node direct path off')));
    await expectAllRelayed(t, 3);
  } finally {
    await mesh.stopNode('node-0');
    await mesh.startNode('node-0');
  }
});

test.serial('a direct flow outlives a proxy restart, and the new proxy logs it', async (t) => {
  await writePolicies([]);
  t.true(await eventually(async () => (await connectOnce('client')).ok));
  t.true((await connectOnce('client')).ok);
  const before = counters('client');
  // One byte every 200 ms for 6 s; each must come back; then a clean close.
  const holder = lab.spawn(lab.pod('client').netns, [
    process.execPath,
    '-e',
    `const s=require('net').connect({host:'${lab.pod('server').ip}',port:${PORT}});let sent=0,got=0;` +
      `s.on('data',d=>{got+=d.length});s.on('error',e=>console.log('error '+e.code));` +
      `const i=setInterval(()=>{if(sent<30){s.write('x');sent++}else{clearInterval(i);setTimeout(()=>{console.log('done '+sent+' '+got);s.end()},300)}},200);` +
      `s.on('close',()=>process.exit(0))`,
  ]);
  try {
    await new Promise((r) => setTimeout(r, 500));
    t.is(counters('client').direct - before.direct, 1n, 'the held connection is direct');
    await mesh.stopNode('node-0');
    const proxy = await mesh.startNode('node-0');
    const done = await holder.waitForLine(
      (l) => l.startsWith('done') || l.startsWith('error'),
      15_000,
    );
    t.is(done, 'done 30 30', 'every byte came back across the restart');
    const entry = () =>
      mesh
        .accessLog('node-0')
        .find((e) => e.datapath === 'bpf' && e.bytesSent === 30 && e.bytesReceived === 30);
    t.true(await eventually(() => entry() !== undefined, 5000), 'logged by the new proxy');
    t.true(proxy.lines.some((l) => l.includes('"bytesSent":30')));
  } finally {
    await holder.stop();
  }
});
