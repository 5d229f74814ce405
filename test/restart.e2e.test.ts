// End-to-end: replacing a node proxy the DaemonSet way loses no connection. A second
// `weft node` with the same flags starts beside the first, adopts the pinned program and
// maps, swaps its listeners into the SOCKMAP, and only then is the first one stopped; a
// client loop opening connections through the proxy meanwhile sees no failure (connect
// timeout below 1 s, no retries), the no-listener drop counter does not move, and no
// plaintext crosses the node link.
import test from 'ava';
import { Lab } from '../src/lab/cluster.js';
import { LabMesh, startCapture } from '../src/lab/mesh.js';
import { requireRoot } from './helpers/root.js';

const AMBIENT = { 'weft.io/dataplane-mode': 'ambient' };
const PORT = 8080;

let lab: Lab;
let mesh: LabMesh;

test.before(async () => {
  requireRoot();
  lab = await Lab.create({
    nodes: 2,
    podsPerNode: 1,
    pods: {
      'pod-0-0': { name: 'client', serviceAccount: 'client', annotations: AMBIENT },
      'pod-1-0': { name: 'server', serviceAccount: 'server', annotations: AMBIENT },
    },
  });
  mesh = await LabMesh.start(lab);
  await lab.serve('server', PORT);
});

test.after.always(async () => {
  await mesh?.stop();
  await lab?.destroy();
});

test.serial('a node proxy replaced under a client loop drops no connection', async (t) => {
  const node0 = lab.node('node-0');
  const client = lab.pod('client');
  const dropsBefore = mesh.counters(node0, client.ip)?.droppedNoListener ?? 0n;
  const pcap = `${lab.dir}/restart.pcap`;
  const capture = await startCapture(lab, node0.netns, node0.uplink, pcap);
  const count = 2000;
  const loop = lab.connect('client', 'server', PORT, {
    count,
    bytes: 64,
    connectTimeoutMs: 800,
    timeoutMs: 3000,
  });
  await new Promise((r) => setTimeout(r, 1500));
  const old = mesh.proxy('node-0');
  const successor = await mesh.startNode('node-0');
  t.regex(successor.stdout, /taking over/);
  await new Promise((r) => setTimeout(r, 500));
  await old.stop('SIGTERM', 10_000);
  t.regex(old.stdout, /a successor holds the listener slots/);
  const results = await loop;
  await capture.stop('SIGINT');

  const failed = results.filter((r) => !r.ok || !r.match);
  t.is(results.length, count);
  t.is(failed.length, 0, `failed connections: ${JSON.stringify(failed.slice(0, 3))}`);
  const dropsAfter = mesh.counters(node0, client.ip)?.droppedNoListener ?? 0n;
  t.is(dropsAfter, dropsBefore, 'no SYN found an empty listener slot');
  const servedByOld = old.lines.filter((l) => l.includes('"event":"connection"')).length;
  const servedBySuccessor = mesh.accessLog('node-0').length;
  t.true(
    servedByOld > 0 && servedBySuccessor > 0,
    `old ${servedByOld}, successor ${servedBySuccessor}: the restart happened mid-loop`,
  );
  t.is(servedByOld + servedBySuccessor, count, 'every connection was proxied exactly once');
  const plain = await lab.exec(node0.netns, ['tcpdump', '-nn', '-r', pcap, `tcp port ${PORT}`]);
  t.is(plain.stdout.trim(), '', 'no plaintext on the node link during the restart');
});

test.serial(
  'SIGTERM with no successor keeps everything attached: enrolled traffic is refused',
  async (t) => {
    await mesh.stopNode('node-0');
    const [result] = await lab.connect('client', 'server', PORT, {
      connectTimeoutMs: 800,
      timeoutMs: 1500,
    });
    t.false(result!.ok, 'fail closed between proxies');
    await mesh.startNode('node-0');
    const [again] = await lab.connect('client', 'server', PORT, { bytes: 64 });
    t.true(again!.ok && again!.match);
  },
);
