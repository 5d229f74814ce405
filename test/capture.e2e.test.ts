// End-to-end: the redirect program and the node proxy in a 2-node namespace cluster, with
// real traffic. Proves capture (cross-node and same-node), original destinations, bypass of
// non-enrolled pods, fail closed with the proxy stopped, anti-spoofing and no loops.
import test from 'ava';
import { Lab, type PodServer } from '../src/lab/cluster.js';
import { LabMesh } from '../src/lab/mesh.js';
import { requireRoot } from './helpers/root.js';

const AMBIENT = { 'weft.io/dataplane-mode': 'ambient' };
const PORT = 8080;

let lab: Lab;
let mesh: LabMesh;
const servers = new Map<string, PodServer>();

test.before(async () => {
  requireRoot();
  lab = await Lab.create({
    nodes: 2,
    podsPerNode: [3, 4],
    pods: {
      'pod-0-0': { name: 'client', annotations: AMBIENT },
      'pod-0-1': { name: 'local-server', annotations: AMBIENT },
      'pod-0-2': { name: 'plain', annotations: {} },
      'pod-1-0': { name: 'remote-server', annotations: AMBIENT },
      'pod-1-1': { name: 'remote-plain', annotations: {} },
      'pod-1-2': {
        name: 'opted-out',
        namespace: 'team',
        annotations: { 'weft.io/dataplane-mode': 'none' },
      },
      'pod-1-3': { name: 'team-member', namespace: 'team', annotations: {} },
    },
  });
  mesh = await LabMesh.start(lab, { namespaceAnnotations: { team: AMBIENT } });
  for (const pod of lab.pods) servers.set(pod.name, await lab.serve(pod.name, PORT));
});

test.after.always(async () => {
  await mesh?.stop();
  await lab?.destroy();
});

function server(name: string): PodServer {
  return servers.get(name)!;
}

test.serial(
  'an enrolled pod reaches a pod on another node through both proxies, bytes intact',
  async (t) => {
    const before = mesh.counters(lab.node('node-0'), lab.pod('client').ip)?.capturedOutbound ?? 0n;
    const outBefore = mesh.accessLog('node-0').length;
    const inBefore = mesh.accessLog('node-1').length;
    const [result] = await lab.connect('client', 'remote-server', PORT, { bytes: 256 * 1024 });
    t.true(result!.ok, result!.error ?? '');
    t.true(result!.match, 'echoed bytes equal the bytes sent');
    t.is(result!.bytesReceived, 256 * 1024);

    const out = (await mesh.waitForAccessLog('node-0', outBefore + 1)).slice(outBefore);
    const inbound = (await mesh.waitForAccessLog('node-1', inBefore + 1)).slice(inBefore);
    t.is(out.length, 1);
    t.is(out[0]!.direction, 'outbound');
    t.is(out[0]!.path, 'hbone', 'enrolled to enrolled across nodes goes through HBONE');
    t.is(out[0]!.srcWorkload, 'default/client');
    t.is(out[0]!.bytesSent, 256 * 1024);
    t.is(out[0]!.bytesReceived, 256 * 1024);
    t.is(inbound.length, 1);
    t.is(inbound[0]!.direction, 'inbound');
    t.is(inbound[0]!.dstWorkload, 'default/remote-server');
    const after = mesh.counters(lab.node('node-0'), lab.pod('client').ip)?.capturedOutbound ?? 0n;
    t.is(after - before, 1n, 'one new connection captured by BPF');
  },
);

test.serial(
  'the proxy sees the original destination, and a same-node server sees the real client',
  async (t) => {
    const outBefore = mesh.accessLog('node-0').length;
    const [result] = await lab.connect('client', 'local-server', PORT, { bytes: 100_000 });
    t.true(result!.ok && result!.match, result!.error ?? '');
    const [entry] = (await mesh.waitForAccessLog('node-0', outBefore + 1)).slice(outBefore);
    t.is(entry!.dst, `${lab.pod('local-server').ip}:${PORT}`);
    t.is(entry!.src, result!.local);
    t.is(entry!.path, 'same-node');
    const [closed] = (await server('local-server').waitForClosed(1)).slice(-1);
    t.is(closed!.remote.split(':')[0], lab.pod('client').ip, 'delivered from the client pod IP');
    t.is(closed!.bytesIn, 100_000);
  },
);

test.serial('traffic between pods that are not enrolled is not captured', async (t) => {
  const logs = [mesh.accessLog('node-0').length, mesh.accessLog('node-1').length];
  const bypassedBefore = mesh.counters(lab.node('node-0'), lab.pod('plain').ip)?.bypassed ?? 0n;
  const [result] = await lab.connect('plain', 'remote-plain', PORT, { bytes: 4096 });
  t.true(result!.ok && result!.match, result!.error ?? '');
  const [closed] = (await server('remote-plain').waitForClosed(1)).slice(-1);
  t.is(closed!.remote, result!.local, 'the server saw the client socket itself: no proxy between');
  await new Promise((r) => setTimeout(r, 300));
  t.is(mesh.accessLog('node-0').length, logs[0]);
  t.is(mesh.accessLog('node-1').length, logs[1]);
  const bypassedAfter = mesh.counters(lab.node('node-0'), lab.pod('plain').ip)?.bypassed ?? 0n;
  t.true(bypassedAfter > bypassedBefore, 'BPF counted the bypassed packets');
});

test.serial(
  'the namespace annotation enrolls its pods; dataplane-mode none on a pod opts it out',
  async (t) => {
    const logBefore = mesh.accessLog('node-1').length;
    const [member] = await lab.connect('team-member', 'remote-plain', PORT, { bytes: 1024 });
    t.true(member!.ok && member!.match, member!.error ?? '');
    const [entry] = (await mesh.waitForAccessLog('node-1', logBefore + 1)).slice(logBefore);
    t.is(entry?.srcWorkload, 'team/team-member', 'captured by namespace enrollment');

    const [optedOut] = await lab.connect('opted-out', 'remote-plain', PORT, { bytes: 1024 });
    t.true(optedOut!.ok && optedOut!.match, optedOut!.error ?? '');
    await new Promise((r) => setTimeout(r, 300));
    t.is(mesh.accessLog('node-1').length, logBefore + 1, 'the opted-out pod was not captured');
  },
);

test.serial(
  'a plaintext client that is not enrolled is captured inbound at an enrolled destination',
  async (t) => {
    const inBefore = mesh.accessLog('node-1').length;
    const [result] = await lab.connect('remote-plain', 'remote-server', PORT, { bytes: 2048 });
    t.true(result!.ok && result!.match, result!.error ?? '');
    const [entry] = (await mesh.waitForAccessLog('node-1', inBefore + 1)).slice(inBefore);
    t.is(entry!.direction, 'inbound');
    t.is(entry!.src, result!.local);
    const [closed] = (await server('remote-server').waitForClosed(1)).slice(-1);
    t.is(
      closed!.remote.split(':')[0],
      lab.pod('remote-plain').ip,
      'delivered from the real client IP',
    );
  },
);

test.serial('no loop: every client connection is accepted exactly once per proxy', async (t) => {
  const count = 5;
  const logs = [mesh.accessLog('node-0').length, mesh.accessLog('node-1').length];
  const accepted = server('remote-server').accepted().length;
  const results = await lab.connect('client', 'remote-server', PORT, { bytes: 512, count });
  t.true(results.every((r) => r.ok && r.match));
  await mesh.waitForAccessLog('node-1', logs[1]! + count);
  await new Promise((r) => setTimeout(r, 300));
  t.is(mesh.accessLog('node-0').length - logs[0]!, count);
  t.is(mesh.accessLog('node-1').length - logs[1]!, count);
  t.is(server('remote-server').accepted().length - accepted, count);
});

test.serial('a packet with a spoofed source address is dropped at the pod veth', async (t) => {
  const spoofed = '198.19.0.99';
  const client = lab.pod('plain');
  await lab.exec(client.netns, ['ip', 'addr', 'add', `${spoofed}/32`, 'dev', 'eth0']);
  const dropsBefore = mesh.counters(client.node, client.ip)?.droppedSpoofed ?? 0n;
  const acceptedBefore = server('remote-plain').accepted().length;
  try {
    const script = `const s=require('net').connect({host:'${lab.pod('remote-plain').ip}',port:${PORT},localAddress:'${spoofed}'});s.setTimeout(1500,()=>{console.log('timeout');process.exit(3)});s.on('connect',()=>{console.log('connected');process.exit(0)});s.on('error',e=>{console.log(e.code);process.exit(4)})`;
    const result = await lab.exec(client.netns, [process.execPath, '-e', script], {
      allowFail: true,
    });
    t.not(result.code, 0, `spoofed connection must not connect: ${result.stdout}`);
  } finally {
    await lab.exec(client.netns, ['ip', 'addr', 'del', `${spoofed}/32`, 'dev', 'eth0']);
  }
  t.is(server('remote-plain').accepted().length, acceptedBefore, 'nothing reached the server');
  const dropsAfter = mesh.counters(client.node, client.ip)?.droppedSpoofed ?? 0n;
  t.true(dropsAfter > dropsBefore, 'the spoof counter moved');
});

test.serial(
  'fail closed: with the proxy stopped an enrolled pod cannot connect, and can after a restart',
  async (t) => {
    const node = lab.node('node-0');
    const client = lab.pod('client');
    const target = server('remote-server');
    await mesh.stopNode('node-0');
    const accepted = target.accepted().length;
    const dropsBefore = mesh.counters(node, client.ip)?.droppedNoListener ?? 0n;
    const results = await lab.connect('client', 'remote-server', PORT, {
      count: 3,
      connectTimeoutMs: 800,
      timeoutMs: 1500,
    });
    t.true(
      results.every((r) => !r.ok),
      'every attempt failed',
    );
    t.is(target.accepted().length, accepted, 'the server received nothing');
    const plain = await lab.connect('client', 'plain', PORT, {
      connectTimeoutMs: 800,
      timeoutMs: 1500,
    });
    t.false(plain[0]!.ok, 'not even to a pod outside the mesh');
    const dropsAfter = mesh.counters(node, client.ip)?.droppedNoListener ?? 0n;
    t.true(dropsAfter - dropsBefore >= 3n, 'every SYN was dropped and counted');

    await mesh.startNode('node-0');
    const [again] = await lab.connect('client', 'remote-server', PORT, { bytes: 4096 });
    t.true(again!.ok && again!.match, again!.error ?? '');
    t.true(
      (mesh.counters(node, client.ip)?.droppedNoListener ?? 0n) >= dropsAfter,
      'counters survived the restart (pinned maps adopted)',
    );
  },
);
