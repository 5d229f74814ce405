// End-to-end: workload certificates rotate under continuous cross-node traffic with no failed
// connection. The node proxies run with 4 s certificates (renewed at half life, ~2 s), so a
// 10 s run sees several rotations on both ends. Checked three ways: the node logs (every
// 'certificate issued' event), the proxies' own view (HBONE pool and server handshakes, access
// log) and the wire: the proxies write their TLS secrets to a key log (Node's --tls-keylog),
// so tshark can decrypt the TLS 1.3 handshakes and show which certificate each side served.
// A connection opened before a rotation must outlive the certificates it was opened with.
import test from 'ava';
import { X509Certificate } from 'node:crypto';
import { Lab, type LabProcess, type PodServer } from '../src/lab/cluster.js';
import { LabMesh, type AccessEntry } from '../src/lab/mesh.js';
import { requireRoot } from './helpers/root.js';

const AMBIENT = { 'weft.io/dataplane-mode': 'ambient' };
const PORT = 8080;
const TTL_MS = 4000;
const CLIENT_ID = 'spiffe://cluster.local/ns/default/sa/web';
const SERVER_ID = 'spiffe://cluster.local/ns/shop/sa/api';

let lab: Lab;
let mesh: LabMesh;
let server: PodServer;
let keylog: string;

test.before(async () => {
  requireRoot();
  lab = await Lab.create({
    nodes: 2,
    podsPerNode: 1,
    pods: {
      'pod-0-0': { name: 'client', serviceAccount: 'web', annotations: AMBIENT },
      'pod-1-0': { name: 'server', namespace: 'shop', serviceAccount: 'api', annotations: AMBIENT },
    },
  });
  // The proxies inherit this environment: Node appends every TLS secret they negotiate to the
  // key log, which is what lets tshark read the (encrypted) TLS 1.3 Certificate messages.
  keylog = `${lab.dir}/tls-keys.log`;
  const nodeOptions = process.env['NODE_OPTIONS'];
  process.env['NODE_OPTIONS'] = `${nodeOptions ?? ''} --tls-keylog=${keylog}`.trim();
  try {
    mesh = await LabMesh.start(lab, { nodeArgs: ['--cert-ttl', `${TTL_MS / 1000}s`] });
  } finally {
    if (nodeOptions === undefined) delete process.env['NODE_OPTIONS'];
    else process.env['NODE_OPTIONS'] = nodeOptions;
  }
  server = await lab.serve('server', PORT);
});

test.after.always(async () => {
  await mesh?.stop();
  await lab?.destroy();
});

test.serial(
  'certificates rotate under continuous traffic: no failed connection, new certificates on the wire',
  async (t) => {
    const node0 = lab.node('node-0');
    const pcap = `${lab.dir}/rotation.pcap`;
    const capture = lab.spawn(node0.netns, [
      'tcpdump',
      '--immediate-mode',
      '-i',
      node0.uplink,
      '-U',
      '-s',
      '0',
      '-w',
      pcap,
      'tcp port 15008',
    ]);
    await waitForStderr(capture, /listening on/);
    const pools0 = await pools('node-0');
    const pools1 = await pools('node-1');
    const outBefore = mesh.accessLog('node-0').length;
    const inBefore = mesh.accessLog('node-1').length;
    const closedBefore = server.closed().length;
    const startedAt = Date.now();

    // ~10 s of back-to-back connections (5 per podapp run), bounded by time and by rounds.
    const results: Awaited<ReturnType<Lab['connect']>> = [];
    for (let round = 0; round < 200 && Date.now() - startedAt < 10_000; round++) {
      results.push(
        ...(await lab.connect('client', 'server', PORT, {
          bytes: 2048,
          count: 5,
          timeoutMs: 5000,
        })),
      );
    }
    const endedAt = Date.now();
    await new Promise((r) => setTimeout(r, 300));
    await capture.stop('SIGINT');

    const failures = results.filter(
      (r) => !r.ok || !r.match || r.bytesSent !== 2048 || r.bytesReceived !== 2048,
    );
    t.deepEqual(failures, [], `${failures.length} of ${results.length} connections failed`);
    t.true(results.length >= 50, `continuous traffic: ${results.length} connections in 10 s`);
    const atServer = (await server.waitForClosed(closedBefore + results.length)).slice(
      closedBefore,
    );
    t.deepEqual(
      atServer.filter(
        (c) =>
          c.bytesIn !== 2048 ||
          c.error !== null ||
          !c.remote.startsWith(`${lab.pod('client').ip}:`),
      ),
      [],
      'the server got every connection, from the client pod, whole',
    );

    // Rotation happened on both nodes, during the traffic, and only for local identities.
    const issued0 = certificateEvents('node-0');
    const issued1 = certificateEvents('node-1');
    t.deepEqual([...new Set(issued0.map((e) => e.identity))], [CLIENT_ID], 'node-0: web only');
    t.deepEqual([...new Set(issued1.map((e) => e.identity))], [SERVER_ID], 'node-1: api only');
    for (const [node, issued] of [
      ['node-0', issued0],
      ['node-1', issued1],
    ] as const) {
      const serials = new Set(issued.map((e) => e.serial));
      t.is(serials.size, issued.length, `${node}: every certificate has its own serial`);
      t.true(issued.length >= 3, `${node}: ${issued.length} certificates issued`);
      const during = issued.filter((e) => e.time >= startedAt && e.time <= endedAt);
      t.true(during.length >= 3, `${node}: ${during.length} rotations during the traffic`);
      t.false(
        mesh.proxy(node).lines.some((l) => l.includes('certificate minting failed')),
        `${node}: no failed mint`,
      );
    }

    // The proxies' own view: a new tunnel per client certificate, no failed dial, no refusal.
    const after0 = await pools('node-0');
    const after1 = await pools('node-1');
    const clientHandshakes = after0.client.handshakes - pools0.client.handshakes;
    const serverHandshakes = after1.server.handshakes - pools1.server.handshakes;
    t.true(clientHandshakes >= 2, `node-0 dialled ${clientHandshakes} new tunnels`);
    t.is(after0.client.dialFailures, pools0.client.dialFailures, 'no tunnel dial failed');
    t.is(serverHandshakes, clientHandshakes, 'node-1 accepted every tunnel node-0 dialled');
    t.is(after1.server.rejected, pools1.server.rejected, 'node-1 refused no tunnel');

    // Every connection is in both access logs: through HBONE, with the client's identity.
    const out = (await mesh.waitForAccessLog('node-0', outBefore + results.length)).slice(
      outBefore,
    );
    const inbound = (await mesh.waitForAccessLog('node-1', inBefore + results.length)).slice(
      inBefore,
    );
    t.is(out.length, results.length, 'node-0 logged every connection');
    t.is(inbound.length, results.length, 'node-1 logged every connection');
    const badOut = out.filter(
      (e) =>
        e.path !== 'hbone' ||
        e.srcIdentity !== CLIENT_ID ||
        e.dstIdentity !== SERVER_ID ||
        !clean(e) ||
        e.bytesSent !== 2048 ||
        e.bytesReceived !== 2048,
    );
    t.deepEqual(badOut, [], 'node-0: every connection went through HBONE, cleanly');
    const badIn = inbound.filter(
      (e) =>
        e.path !== 'hbone' ||
        e.srcIdentity !== CLIENT_ID ||
        e.dstIdentity !== SERVER_ID ||
        e.dstWorkload !== 'shop/server' ||
        !clean(e),
    );
    t.deepEqual(badIn, [], 'node-1: every connection came through HBONE from web, cleanly');

    // The wire: which certificate each side presented in each TLS handshake.
    const handshakes = await servedCertificates(pcap);
    const byClient = handshakes.filter((h) => h.from === 'client');
    const byServer = handshakes.filter((h) => h.from === 'server');
    t.is(byClient.length, clientHandshakes, 'one client Certificate per tunnel dialled');
    t.is(byServer.length, clientHandshakes, 'one server Certificate per tunnel dialled');
    t.true(
      handshakes.every((h) => h.identity === (h.from === 'client' ? CLIENT_ID : SERVER_ID)),
      JSON.stringify(handshakes),
    );
    const clientSerials = new Set(byClient.map((h) => h.serial));
    const serverSerials = new Set(byServer.map((h) => h.serial));
    t.log(
      `${results.length} connections; issued ${issued0.length} (node-0) / ${issued1.length} (node-1); ` +
        `${clientHandshakes} tunnels (${after0.client.connections} still pooled); on the wire ${clientSerials.size} client / ${serverSerials.size} server serials`,
    );
    t.is(clientSerials.size, byClient.length, 'each new tunnel came with a new client serial');
    t.true(serverSerials.size >= 2, `node-1 served ${serverSerials.size} server certificates`);
    for (const [who, seen, issued] of [
      ['client', byClient, issued0],
      ['server', byServer, issued1],
    ] as const) {
      const known = new Map(issued.map((e) => [normalSerial(e.serial), e]));
      for (const h of seen) {
        const cert = known.get(h.serial);
        t.truthy(cert, `${who} served ${h.serial}, a serial its node issued`);
        // A handshake never uses a certificate that expired, nor one minted after it.
        t.true(cert !== undefined && h.time < cert.notAfter, `${who} ${h.serial} not expired`);
        t.true(cert !== undefined && h.time >= cert.time - 1000, `${who} ${h.serial} issued`);
      }
    }
  },
);

test.serial(
  'a connection opened before a rotation outlives the certificates it was opened with',
  async (t) => {
    const ticks = 22;
    const everyMs = 500;
    const held = lab.spawn(lab.pod('client').netns, [
      process.execPath,
      '-e',
      HOLD_CLIENT,
      lab.pod('server').ip,
      String(PORT),
      String(ticks),
      String(everyMs),
    ]);
    const first = parseEcho(await held.waitForLine((l) => l.includes('"echo":0'), 5000));
    const openedAt = first.at - first.rttMs;
    // Its tunnel was chosen before the first echo came back: only certificates issued by then
    // can have authenticated it.
    const before0 = certificateEvents('node-0').filter((e) => e.time <= first.at);
    const before1 = certificateEvents('node-1').filter((e) => e.time <= first.at);

    // Meanwhile, new connections keep working (they take tunnels with the newer certificates).
    const fresh: Awaited<ReturnType<Lab['connect']>> = [];
    for (let i = 0; i < 40 && held.running; i++) {
      fresh.push(...(await lab.connect('client', 'server', PORT, { bytes: 512, timeoutMs: 5000 })));
      await new Promise((r) => setTimeout(r, 250));
    }
    let timer: NodeJS.Timeout | undefined;
    const exited = await Promise.race([
      held.exited,
      new Promise<undefined>(
        (r) => (timer = setTimeout(() => r(undefined), ticks * everyMs + 5000)),
      ),
    ]);
    clearTimeout(timer);
    if (!exited) await held.stop('SIGKILL', 1000);

    const done = held.lines.map((l) => JSON.parse(l) as HoldLine).find((l) => 'done' in l) as
      HoldDone | undefined;
    t.is(exited?.code, 0, `the held connection: ${JSON.stringify(done)} ${held.stderr}`);
    t.true(done?.ok, JSON.stringify(done));
    t.is(done?.echoed, ticks, 'every byte came back, in order');
    const echoes = held.lines.filter((l) => l.includes('"echo"')).map(parseEcho);
    const lastEcho = Math.max(...echoes.map((e) => e.at));
    t.true(lastEcho - openedAt >= 2 * TTL_MS, `held for ${lastEcho - openedAt} ms (> 2 lifetimes)`);
    t.true(
      echoes.every((e) => e.rttMs < everyMs),
      `every echo within ${everyMs} ms: ${JSON.stringify(echoes.map((e) => e.rttMs))}`,
    );

    // Whatever certificates authenticated its tunnel (both issued before it opened) had
    // expired well before its last echo, and rotations happened while it was open.
    const newestBefore = Math.max(...[...before0, ...before1].map((e) => e.notAfter));
    t.true(before0.length > 0 && before1.length > 0);
    t.true(
      lastEcho > newestBefore + 1000,
      `last echo ${lastEcho - newestBefore} ms after every certificate it could use expired`,
    );
    const rotatedWhileOpen = certificateEvents('node-0').filter(
      (e) => e.time > openedAt && e.time < lastEcho,
    );
    t.true(rotatedWhileOpen.length >= 2, `${rotatedWhileOpen.length} rotations while it was open`);

    t.log(
      `held ${lastEcho - openedAt} ms; ${rotatedWhileOpen.length} rotations while open; ` +
        `last echo ${lastEcho - newestBefore} ms after its certificates expired; ${fresh.length} new connections alongside`,
    );
    const freshFailures = fresh.filter((r) => !r.ok || !r.match);
    t.true(fresh.length >= 5, `${fresh.length} new connections alongside`);
    t.deepEqual(freshFailures, [], 'new connections alongside it all worked');

    // It went through HBONE and closed cleanly on both ends.
    const port = Number(first.local.split(':')[1]);
    const mine = (e: AccessEntry) => e.src === `${lab.pod('client').ip}:${port}`;
    const out = await waitForEntry('node-0', mine);
    const inbound = await waitForEntry('node-1', mine);
    t.is(out?.path, 'hbone', JSON.stringify(out));
    t.true(out !== undefined && clean(out), JSON.stringify(out));
    t.is(out?.bytesSent, ticks);
    t.is(out?.bytesReceived, ticks);
    t.is(inbound?.path, 'hbone', JSON.stringify(inbound));
    t.is(inbound?.srcIdentity, CLIENT_ID);
    t.true(inbound !== undefined && clean(inbound), JSON.stringify(inbound));
  },
);

// ---- helpers ----

interface IssuedEvent {
  identity: string;
  serial: string;
  /** When it was logged (ms since the epoch). */
  time: number;
  notAfter: number;
}

/** The node agent's 'certificate issued' log lines (one per certificate, first and renewals). */
function certificateEvents(nodeName: string): IssuedEvent[] {
  const out: IssuedEvent[] = [];
  for (const line of mesh.proxy(nodeName).lines) {
    if (!line.includes('"certificate issued"')) continue;
    const j = JSON.parse(line) as {
      msg?: string;
      identity?: string;
      serial?: string;
      time?: string;
      notAfter?: string;
    };
    // The agent's line carries `identity`; the manager logs its own line with `spiffeId`.
    if (j.msg !== 'certificate issued' || !j.identity || !j.serial) continue;
    out.push({
      identity: j.identity,
      serial: j.serial,
      time: Date.parse(j.time ?? ''),
      notAfter: Date.parse(j.notAfter ?? ''),
    });
  }
  return out;
}

interface PoolStats {
  client: { connections: number; streams: number; handshakes: number; dialFailures: number };
  server: { connections: number; handshakes: number; rejected: number; requests: number };
}

async function pools(nodeName: string): Promise<PoolStats> {
  const run = await lab.exec(lab.node(nodeName).netns, [
    process.execPath,
    '-e',
    "fetch('http://127.0.0.1:15000/debug/pools').then(r=>r.json()).then(j=>console.log(JSON.stringify(j)))",
  ]);
  return JSON.parse(run.stdout) as PoolStats;
}

function clean(e: AccessEntry): boolean {
  return !e.refused && !e.error && (e.responseFlags ?? '-') === '-';
}

async function waitForEntry(
  nodeName: string,
  match: (e: AccessEntry) => boolean,
): Promise<AccessEntry | undefined> {
  for (let i = 0; i < 50; i++) {
    const found = mesh.accessLog(nodeName).find(match);
    if (found) return found;
    await new Promise((r) => setTimeout(r, 100));
  }
  return undefined;
}

interface Served {
  from: 'client' | 'server';
  identity: string;
  serial: string;
  time: number;
}

/**
 * Decrypts the TLS 1.3 handshakes of a capture with the proxies' key log and returns the leaf
 * certificate each side presented (the first certificate of each Certificate message).
 */
async function servedCertificates(pcap: string): Promise<Served[]> {
  const run = await lab.exec(
    lab.node('node-0').netns,
    [
      'tshark',
      '-n',
      '-r',
      pcap,
      '-o',
      `tls.keylog_file:${keylog}`,
      '-d',
      'tcp.port==15008,tls',
      '-Y',
      'tls.handshake.type == 11',
      '-T',
      'fields',
      '-E',
      'occurrence=a',
      '-E',
      'aggregator=;',
      '-e',
      'frame.time_epoch',
      '-e',
      'tcp.srcport',
      '-e',
      'tls.handshake.certificate',
    ],
    { timeoutMs: 30_000 },
  );
  const out: Served[] = [];
  for (const line of run.stdout.split('\n')) {
    const [time, srcPort, certs] = line.split('\t');
    if (!time || !certs) continue;
    // Each Certificate message holds the leaf first, then the issuing CA.
    const leaf = new X509Certificate(Buffer.from(certs.split(';')[0]!.replace(/:/g, ''), 'hex'));
    out.push({
      from: srcPort === '15008' ? 'server' : 'client',
      identity: /URI:([^,\s]+)/.exec(leaf.subjectAltName ?? '')?.[1] ?? '',
      serial: normalSerial(leaf.serialNumber),
      time: Number(time) * 1000,
    });
  }
  return out;
}

function normalSerial(serial: string): string {
  return serial.toLowerCase().replace(/^0+/, '');
}

async function waitForStderr(proc: LabProcess, pattern: RegExp): Promise<void> {
  for (let i = 0; i < 100 && !pattern.test(proc.stderr); i++)
    await new Promise((r) => setTimeout(r, 50));
}

interface HoldEcho {
  echo: number;
  at: number;
  rttMs: number;
  local: string;
}
interface HoldDone {
  done: true;
  ok: boolean;
  echoed: number;
  error?: string;
}
type HoldLine = HoldEcho | HoldDone;

function parseEcho(line: string): HoldEcho {
  return JSON.parse(line) as HoldEcho;
}

/**
 * A long-lived client: one TCP connection, one byte every `everyMs`, each echo checked before
 * the next byte goes; a JSON line per echo and a final summary. Bounded by its own deadline.
 */
const HOLD_CLIENT = `
const net = require('node:net');
const [host, port, ticks, everyMs] = process.argv.slice(1);
const n = Number(ticks), every = Number(everyMs);
const print = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
let echoed = 0, sentAt = 0, finished = false;
const finish = (ok, error) => {
  if (finished) return;
  finished = true;
  print({ done: true, ok, echoed, error });
  clearInterval(timer);
  clearTimeout(deadline);
  if (ok) sock.end(); else sock.destroy();
  sock.once('close', () => process.exit(ok ? 0 : 1));
  setTimeout(() => process.exit(ok ? 0 : 1), 2000).unref();
};
const sock = net.connect({ host, port: Number(port) });
sock.setNoDelay(true);
sock.on('data', (chunk) => {
  for (const b of chunk) {
    if (b !== (echoed & 0xff)) return finish(false, 'byte ' + echoed + ' came back as ' + b);
    const at = Date.now();
    print({ echo: echoed, at, rttMs: at - sentAt, local: sock.localAddress + ':' + sock.localPort });
    echoed++;
    if (echoed === n) finish(true);
  }
});
sock.on('error', (e) => finish(false, e.code || e.message));
sock.on('close', () => finish(false, 'closed by the peer after ' + echoed + ' echoes'));
let sent = 0;
const tick = () => {
  if (sent !== echoed) return finish(false, 'no echo for byte ' + echoed + ' within ' + every + ' ms');
  if (sent === n) return;
  sentAt = Date.now();
  sock.write(Buffer.from([sent & 0xff]));
  sent++;
};
let timer;
sock.once('connect', () => { tick(); timer = setInterval(tick, every); });
const deadline = setTimeout(() => finish(false, 'deadline'), n * every + 5000);
`;
