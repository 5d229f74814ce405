// test/lab.test.ts: end-to-end tests of the namespace lab (src/lab/). Needs root and fails loudly
// without it (never skips). Every test removes what it built, even on failure, and cleans only
// its own prefix.

import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { Lab, type ConnectResult, type LabProcess } from '../src/lab/cluster.js';
import { randomPrefix } from '../src/lab/topology.js';

function netnsList(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8', timeout: 5000 })
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter(Boolean);
}

function netnsOf(prefix: string): string[] {
  return netnsList().filter((n) => n.startsWith(prefix + '-'));
}

function rootLinksWith(prefix: string): string[] {
  return execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8', timeout: 5000 })
    .split('\n')
    .filter((l) => l.includes(prefix));
}

function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((mp) => mp === dir || mp.startsWith(dir + '/'));
}

function ipOf(addr: string): string {
  return addr.slice(0, addr.lastIndexOf(':'));
}

test.serial('runs as root (the lab needs it; this fails rather than skips)', (t) => {
  t.is(process.getuid?.(), 0, 'lab tests must run as root');
});

test.serial('2x2 lab: same-node and cross-node echo, nothing in the root namespace', async (t) => {
  t.timeout(90_000);
  const lab = await Lab.create({
    nodes: 2,
    podsPerNode: 2,
    pods: { 'pod-0-1': { namespace: 'shop', serviceAccount: 'cart', labels: { app: 'cart' } } },
  });
  const prefix = lab.prefix;
  const servers: LabProcess[] = [];
  try {
    t.regex(prefix, /^w[0-9a-f]{5}$/);
    t.deepEqual(
      lab.pods.map((p) => [p.name, p.namespace, p.serviceAccount, p.ip, p.node.name]),
      [
        ['pod-0-0', 'default', 'default', '198.19.0.10', 'node-0'],
        ['pod-0-1', 'shop', 'cart', '198.19.0.11', 'node-0'],
        ['pod-1-0', 'default', 'default', '198.19.1.10', 'node-1'],
        ['pod-1-1', 'default', 'default', '198.19.1.11', 'node-1'],
      ],
    );
    t.deepEqual(
      lab.nodes.map((n) => [n.name, n.ip, n.podCidr, n.netns, n.uplink]),
      [
        ['node-0', '198.18.0.1', '198.19.0.0/24', `${prefix}-n0`, `${prefix}up`],
        ['node-1', '198.18.0.2', '198.19.1.0/24', `${prefix}-n1`, `${prefix}up`],
      ],
    );
    t.deepEqual(netnsOf(prefix).sort(), lab.allNetns().sort());
    t.deepEqual(rootLinksWith(prefix), [], 'no lab interface in the root namespace');

    // Kubernetes-shaped objects.
    const pods = lab.podObjects() as Array<{
      metadata: { name: string; namespace: string; labels: Record<string, string> };
      spec: { nodeName: string; serviceAccountName: string };
      status: { podIP: string; phase: string };
    }>;
    const cart = pods.find((p) => p.metadata.name === 'pod-0-1')!;
    t.is(cart.metadata.namespace, 'shop');
    t.is(cart.spec.serviceAccountName, 'cart');
    t.is(cart.spec.nodeName, 'node-0');
    t.is(cart.status.podIP, '198.19.0.11');
    t.is(cart.status.phase, 'Running');
    t.deepEqual(cart.metadata.labels, { app: 'cart' });
    const nodes = lab.nodeObjects() as Array<{
      metadata: { labels: Record<string, string> };
      status: { addresses: Array<{ type: string; address: string }> };
    }>;
    t.is(nodes[1]!.metadata.labels['kubernetes.io/hostname'], 'node-1');
    t.deepEqual(nodes[1]!.status.addresses[0], { type: 'InternalIP', address: '198.18.0.2' });

    // Node settings and the bpffs.
    const sys = await lab.exec(lab.nodes[0]!.netns, [
      'sysctl',
      '-n',
      'net.ipv4.ip_forward',
      'net.ipv4.conf.all.rp_filter',
      `net.ipv4.conf.${lab.nodes[0]!.uplink}.rp_filter`,
      `net.ipv4.conf.${lab.pods[0]!.hostVeth}.rp_filter`,
    ]);
    t.deepEqual(sys.stdout.trim().split('\n'), ['1', '0', '0', '0']);
    t.is(await lab.pinDir('node-1'), `/run/weft-lab/${prefix}/bpffs/node-1`);
    t.true(existsSync(lab.nodes[1]!.pinDir));
    t.deepEqual(mountsUnder(lab.dir), [lab.bpffs]);

    // Echo across nodes and on the same node; the server sees the client pod's IP.
    const remote = await lab.serve('pod-1-0', [8080, 8081]);
    const local = await lab.serve('pod-0-1', 8080);
    servers.push(remote.process, local.process);
    const cross = await lab.connect('pod-0-0', 'pod-1-0', 8081, { bytes: 200_000, count: 3 });
    const same = await lab.connect('pod-0-0', '198.19.0.11', 8080, { payload: 'hello weft' });
    const check = (rs: ConnectResult[], n: number, bytes: number) => {
      t.is(rs.length, n);
      for (const r of rs) {
        t.true(r.ok, JSON.stringify(r));
        t.true(r.match);
        t.is(r.bytesSent, bytes);
        t.is(r.bytesReceived, bytes);
        t.is(ipOf(r.local), '198.19.0.10');
      }
    };
    check(cross, 3, 200_000);
    check(same, 1, 'hello weft'.length);

    const rc = await remote.waitForClosed(3);
    t.deepEqual(
      rc.map((e) => [ipOf(e.remote), e.local, e.bytesIn, e.bytesOut]),
      cross.map(() => ['198.19.0.10', '198.19.1.10:8081', 200_000, 200_000]),
    );
    t.deepEqual(
      rc.map((e) => e.sha256In),
      cross.map((r) => r.sha256Sent),
    );
    t.deepEqual(
      rc.map((e) => e.remote),
      cross.map((r) => r.local),
    );
    const lc = await local.waitForClosed(1);
    t.is(lc[0]!.remote, same[0]!.local);
    t.is(lc[0]!.bytesIn, 'hello weft'.length);

    // A closed port fails fast, without retries.
    const refused = await lab.connect('pod-0-0', 'pod-1-1', 8080, { connectTimeoutMs: 500 });
    t.false(refused[0]!.ok);
    t.is(refused[0]!.error, 'ECONNREFUSED');

    // exec: bounded and with clear errors.
    const err = await t.throwsAsync(lab.exec('pod-0-0', ['false']));
    t.regex(err!.message, new RegExp(`netns ${prefix}-n0p0`));
    const slow = await t.throwsAsync(lab.exec('pod-0-0', ['sleep', '5'], { timeoutMs: 200 }));
    t.regex(slow!.message, /timed out/);

    // spawn/stop: a child ignoring SIGTERM is SIGKILLed after the grace period.
    const stubborn = lab.spawn('pod-1-1', [
      process.execPath,
      '-e',
      "process.on('SIGTERM',()=>{}); console.log('up'); setInterval(()=>{},1000)",
    ]);
    await stubborn.waitForLine((l) => l === 'up', 10_000);
    t.true(stubborn.pid > 0);
    const exit = await stubborn.stop('SIGTERM', 300);
    t.is(exit.signal, 'SIGKILL');

    t.deepEqual(rootLinksWith(prefix), [], 'still no lab interface in the root namespace');
    t.truthy(remote.process.running, 'servers are still up before destroy');
  } finally {
    await lab.destroy();
  }
  t.deepEqual(netnsOf(prefix), []);
  t.false(existsSync(`/run/weft-lab/${prefix}`));
  t.deepEqual(mountsUnder(`/run/weft-lab/${prefix}`), []);
  t.is(servers.length, 2);
  t.true(
    servers.every((p) => p.exitInfo !== null && !p.running),
    'destroy stopped the servers',
  );
  await lab.destroy(); // idempotent
  t.throws(() => lab.spawn('pod-0-0', ['true']), { message: /destroyed/ });
});

test.serial('invalid options build nothing', async (t) => {
  t.timeout(20_000);
  const before = netnsList();
  await t.throwsAsync(Lab.create({ prefix: 'Bad_Prefix!', nodes: 1, podsPerNode: 1 }), {
    message: /invalid prefix/,
  });
  await t.throwsAsync(
    Lab.create({ nodes: 1, podsPerNode: 1, pods: { 'pod-3-3': { namespace: 'x' } } }),
    { message: /no such pod/ },
  );
  t.deepEqual(netnsList(), before);
  t.false(existsSync('/run/weft-lab/Bad_Prefix!'));
});

test.serial('a failure mid-way tears down what was built', async (t) => {
  t.timeout(30_000);
  const prefix = randomPrefix();
  // Occupy the second node's name, so create fails after building the fabric and node 0.
  execFileSync('ip', ['netns', 'add', `${prefix}-n1`], { timeout: 5000 });
  try {
    await t.throwsAsync(Lab.create({ prefix, nodes: 2, podsPerNode: 2 }), {
      message: /File exists/,
    });
    t.deepEqual(netnsOf(prefix), [`${prefix}-n1`], 'only the namespace it did not build is left');
    t.false(existsSync(`/run/weft-lab/${prefix}`));
    t.deepEqual(mountsUnder(`/run/weft-lab/${prefix}`), []);
    t.deepEqual(rootLinksWith(prefix), []);
  } finally {
    const report = await Lab.cleanupPrefix(prefix);
    t.deepEqual(report.namespaces, [`${prefix}-n1`]);
  }
  t.deepEqual(netnsOf(prefix), []);
});
