// End-to-end: cross-node mesh traffic travels only inside HBONE (mutual TLS 1.3 + HTTP/2
// CONNECT). A capture on the node link shows TLS and never the payload; identities are
// checked both ways; an independent HTTP/2 stack (python3-h2) interoperates through the real
// BPF capture; bad certificates and a server with the wrong identity are refused with nothing
// reaching the application.
import test from 'ava';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { Lab, type PodServer } from '../src/lab/cluster.js';
import { LabMesh, startCapture } from '../src/lab/mesh.js';
import { initCa, loadIssuer, mintSvid } from '../src/identity/index.js';
import { requireRoot } from './helpers/root.js';

const AMBIENT = { 'weft.io/dataplane-mode': 'ambient' };
const PORT = 8080;
const PY_CLIENT = new URL('../../test/fixtures/hbone_client.py', import.meta.url).pathname;
const SERVER_ID = 'spiffe://cluster.local/ns/shop/sa/api';
const CLIENT_ID = 'spiffe://cluster.local/ns/default/sa/web';

let lab: Lab;
let mesh: LabMesh;
let server: PodServer;

test.before(async () => {
  requireRoot();
  lab = await Lab.create({
    nodes: 2,
    podsPerNode: 2,
    pods: {
      'pod-0-0': { name: 'client', serviceAccount: 'web', annotations: AMBIENT },
      'pod-0-1': { name: 'outsider', annotations: {} },
      'pod-1-0': { name: 'server', namespace: 'shop', serviceAccount: 'api', annotations: AMBIENT },
      'pod-1-1': { name: 'neighbour', annotations: {} },
    },
  });
  mesh = await LabMesh.start(lab);
  server = await lab.serve('server', PORT);
});

test.after.always(async () => {
  await mesh?.stop();
  await lab?.destroy();
});

test.serial(
  'cross-node traffic is HBONE on the wire: TLS to 15008, never the payload',
  async (t) => {
    const node0 = lab.node('node-0');
    const marker = 'WEFT-PLAINTEXT-MARKER-'.repeat(40);
    const pcap = `${lab.dir}/uplink.pcap`;
    const capture = await startCapture(lab, node0.netns, node0.uplink, pcap);
    const outBefore = mesh.accessLog('node-0').length;
    const inBefore = mesh.accessLog('node-1').length;
    const results = await lab.connect('client', 'server', PORT, { payload: marker, count: 3 });
    await new Promise((r) => setTimeout(r, 500));
    await capture.stop('SIGINT');
    t.true(
      results.every((r) => r.ok && r.match),
      JSON.stringify(results),
    );

    const raw = await readFile(pcap);
    t.true(
      raw.length > 1000,
      `the capture saw the traffic: ${raw.length} bytes; ${capture.stderr}`,
    );
    t.false(
      raw.includes(Buffer.from('WEFT-PLAINTEXT-MARKER')),
      'the payload never crossed the link in clear',
    );
    const tls = await lab.exec(node0.netns, [
      'tcpdump',
      '-nn',
      '-r',
      pcap,
      'tcp dst port 15008 and tcp[tcpflags] & tcp-syn != 0',
    ]);
    t.true(
      tls.stdout.trim().split('\n').filter(Boolean).length >= 1,
      'tunnel connections went to port 15008',
    );
    const plainToApp = await lab.exec(node0.netns, [
      'tcpdump',
      '-nn',
      '-r',
      pcap,
      `tcp port ${PORT}`,
    ]);
    t.is(plainToApp.stdout.trim(), '', 'nothing went to the application port across the link');

    const out = (await mesh.waitForAccessLog('node-0', outBefore + 3)).slice(outBefore);
    t.is(out.length, 3);
    t.true(out.every((e) => e.path === 'hbone'));
    const inbound = (await mesh.waitForAccessLog('node-1', inBefore + 3)).slice(inBefore);
    t.is(inbound.length, 3);
    t.true(inbound.every((e) => e.path === 'hbone' && e.dstWorkload === 'shop/server'));
    const closed = await server.waitForClosed(3);
    t.true(
      closed.slice(-3).every((c) => c.remote.split(':')[0] === lab.pod('client').ip),
      'the server saw the real client pod IP (forwarded, matching the peer identity)',
    );
    t.true(closed.slice(-3).every((c) => c.bytesIn === marker.length));
  },
);

test.serial('identities: each end proves the workload it speaks for', async (t) => {
  const metrics = await scrape('node-1');
  t.regex(metrics, new RegExp(`source_principal="${CLIENT_ID}"`));
  t.regex(metrics, new RegExp(`destination_principal="${SERVER_ID}"`));
  t.regex(metrics, /connection_security_policy="mutual_tls"/);
});

async function writeSvid(
  name: string,
  spiffeId: string,
  caDir: string,
  opts: { ttlMs?: number; now?: Date } = {},
) {
  const issuer = await loadIssuer(caDir);
  const svid = await mintSvid(issuer, { spiffeId, ttlMs: opts.ttlMs ?? 3_600_000, now: opts.now });
  const dir = `${lab.dir}/certs`;
  await mkdir(dir, { recursive: true });
  await writeFile(`${dir}/${name}.crt`, svid.chainPem);
  await writeFile(`${dir}/${name}.key`, svid.keyPem);
  return { cert: `${dir}/${name}.crt`, key: `${dir}/${name}.key` };
}

interface PyResult {
  status?: number;
  echo_ok?: boolean;
  closed?: boolean;
  error?: string;
  version?: string;
  alpn?: string;
}

async function pythonHbone(
  from: string,
  cert: string,
  key: string,
  authority: string,
  bytes = 4096,
): Promise<PyResult> {
  const run = await lab.exec(
    lab.pod(from).netns,
    [
      '/usr/bin/python3',
      PY_CLIENT,
      lab.pod('server').ip,
      '15008',
      cert,
      key,
      authority,
      String(bytes),
    ],
    { allowFail: true, timeoutMs: 30_000 },
  );
  try {
    return JSON.parse(run.stdout.trim().split('\n').pop() ?? '') as PyResult;
  } catch {
    return { error: `${run.code}: ${run.stderr.trim().split('\n').pop() ?? ''}` };
  }
}

test.serial(
  'an independent HTTP/2 stack (python3-h2) gets a tunnel through the real capture',
  async (t) => {
    const { cert, key } = await writeSvid(
      'outsider',
      'spiffe://cluster.local/ns/default/sa/outsider',
      mesh.caDir,
    );
    const accepted = server.accepted().length;
    const ok = await pythonHbone('neighbour', cert, key, `${lab.pod('server').ip}:${PORT}`);
    t.is(ok.version, 'TLSv1.3');
    t.is(ok.alpn, 'h2');
    t.is(ok.status, 200);
    t.true(ok.echo_ok, JSON.stringify(ok));
    const [closed] = (await server.waitForClosed(server.closed().length)).slice(-1);
    t.is(
      closed!.remote.split(':')[0],
      lab.pod('neighbour').ip,
      'forwarded for an IP that is not the peer pod is ignored',
    );
    t.is(server.accepted().length, accepted + 1);

    const wrongAuthority = await pythonHbone(
      'neighbour',
      cert,
      key,
      `${lab.pod('neighbour').ip}:${PORT}`,
    );
    t.is(wrongAuthority.status, 400, 'an authority on another IP than the one dialled is refused');
    const closedPort = await pythonHbone('neighbour', cert, key, `${lab.pod('server').ip}:9`);
    t.is(closedPort.status, 503, 'a target port nobody listens on answers 503');
  },
);

test.serial(
  'bad client certificates are refused before any byte reaches the application',
  async (t) => {
    const foreignCa = await initCa(`${lab.dir}/foreign-ca`, { force: true });
    const otherDomainCa = await initCa(`${lab.dir}/other-td-ca`, {
      trustDomain: 'other.example',
      force: true,
    });
    const cases = {
      'another CA': await writeSvid(
        'foreign',
        'spiffe://cluster.local/ns/default/sa/x',
        foreignCa.dir,
      ),
      expired: await writeSvid('expired', 'spiffe://cluster.local/ns/default/sa/x', mesh.caDir, {
        ttlMs: 60_000,
        now: new Date(Date.now() - 3_600_000),
      }),
      'another trust domain': await writeSvid(
        'other-td',
        'spiffe://other.example/ns/default/sa/x',
        otherDomainCa.dir,
      ),
    };
    const accepted = server.accepted().length;
    for (const [name, { cert, key }] of Object.entries(cases)) {
      const result = await pythonHbone('neighbour', cert, key, `${lab.pod('server').ip}:${PORT}`);
      t.not(result.status, 200, `${name}: ${JSON.stringify(result)}`);
    }
    t.is(server.accepted().length, accepted, 'nothing reached the server');
  },
);

test.serial(
  'a server presenting the wrong identity is refused by the client (no MITM)',
  async (t) => {
    // node-1 comes back believing the server pod runs as another service account: it presents
    // a valid certificate of this CA, but not the identity node-0 expects.
    const diverging = `${lab.dir}/diverging-config`;
    const pod = lab.pod('server');
    pod.serviceAccount = 'impostor';
    await mesh.writeManifests(diverging);
    pod.serviceAccount = 'api';
    await mesh.stopNode('node-1');
    await mesh.startNode('node-1', [], { configDir: diverging });
    const accepted = server.accepted().length;
    const [result] = await lab.connect('client', 'server', PORT, { bytes: 1024, timeoutMs: 5000 });
    t.false(result!.ok, 'the app connection is closed');
    t.is(server.accepted().length, accepted, 'nothing reached the server');
    const refused = mesh
      .accessLog('node-0')
      .filter((e) => e.refused)
      .pop();
    t.regex(refused?.refused ?? '', /tunnel failed/);

    await mesh.stopNode('node-1');
    await mesh.startNode('node-1');
    const [again] = await lab.connect('client', 'server', PORT, { bytes: 1024 });
    t.true(again!.ok && again!.match, 'works again once the identities agree');
  },
);

test.serial(
  'without a CA, cross-node mesh traffic is refused, never sent in plaintext',
  async (t) => {
    await mesh.stopNode('node-0');
    await mesh.startNode('node-0', [], { caDir: '' });
    try {
      const accepted = server.accepted().length;
      const [result] = await lab.connect('client', 'server', PORT, {
        bytes: 1024,
        timeoutMs: 5000,
      });
      t.false(result!.ok);
      t.is(server.accepted().length, accepted);
      const refused = mesh
        .accessLog('node-0')
        .filter((e) => e.refused)
        .pop();
      t.regex(refused?.refused ?? '', /no CA configured/);
    } finally {
      await mesh.stopNode('node-0');
      await mesh.startNode('node-0');
    }
  },
);

function scrape(nodeName: string): Promise<string> {
  return mesh.fetchFromNode(nodeName, '/metrics');
}
