// test/hbone.test.ts: the HBONE server, client and pool over real loopback sockets
// (127.0.0.1 / 127.0.0.2 only), with certificates minted here (ECDSA P-256, SPIFFE URI SANs),
// plus interop with an independent stack (Python ssl + python3-h2) in both directions. Every
// server, socket and child process is torn down in t.teardown, even on failure; every wait is
// bounded.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { X509Certificate, createHash, webcrypto } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http2 from 'node:http2';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import tls from 'node:tls';
import type { Endpoint } from '../src/proxy/flow.js';
import {
  HbonePool,
  HboneServer,
  HboneStatusError,
  HboneTunnelError,
  connectTls,
  createHboneSecureContext,
  parseForwardedFor,
  parseHostPort,
  relayStream,
  type AuthorizeVerdict,
  type HboneConnectionRejection,
  type HboneOpenRequest,
  type HbonePoolOptions,
  type HboneRequestInfo,
  type HboneServerOptions,
  type HboneStreamRecord,
  type PeerVerdict,
} from '../src/proxy/hbone/index.js';
import { ReadBuffers } from '../src/proxy/socket-reader.js';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const FIXTURES = new URL('../../test/fixtures/', import.meta.url).pathname;
const PYTHON = '/usr/bin/python3';
const TD = 'spiffe://cluster.local';
const CLIENT_ID = `${TD}/ns/default/sa/client`;
const SERVER_ID = `${TD}/ns/default/sa/echo`;
const SERVER2_ID = `${TD}/ns/default/sa/other`;

// ---------------------------------------------------------------- certificates

interface Pem {
  readonly cert: string;
  readonly key: string;
}

interface Ca extends Pem {
  readonly keys: webcrypto.CryptoKeyPair;
  readonly x509: x509.X509Certificate;
  readonly node: X509Certificate;
}

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
let serial = 1;

async function keyPem(keys: webcrypto.CryptoKeyPair): Promise<string> {
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey as webcrypto.CryptoKey);
  return x509.PemConverter.encode(pkcs8, 'PRIVATE KEY');
}

async function makeCa(name: string): Promise<Ca> {
  const keys = (await webcrypto.subtle.generateKey(ALG, true, [
    'sign',
    'verify',
  ])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: (serial++).toString(16).padStart(2, '0'),
    name: `CN=${name}, O=cluster.local`,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    signingAlgorithm: ALG,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true,
      ),
    ],
  });
  const pem = cert.toString('pem');
  return { cert: pem, key: await keyPem(keys), keys, x509: cert, node: new X509Certificate(pem) };
}

async function makeLeaf(ca: Ca, spiffeId: string): Promise<Pem> {
  const keys = (await webcrypto.subtle.generateKey(ALG, true, [
    'sign',
    'verify',
  ])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: (serial++).toString(16).padStart(2, '0'),
    subject: 'O=cluster.local',
    issuer: ca.x509.subject,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    signingAlgorithm: ALG,
    publicKey: keys.publicKey,
    signingKey: ca.keys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([
        x509.ExtendedKeyUsage.serverAuth,
        x509.ExtendedKeyUsage.clientAuth,
      ]),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: spiffeId }], true),
    ],
  });
  return { cert: cert.toString('pem'), key: await keyPem(keys) };
}

interface Pki {
  readonly ca: Ca;
  readonly otherCa: Ca;
  readonly client: Pem;
  readonly server: Pem;
  readonly server2: Pem;
  /** A client certificate from a CA nobody trusts. */
  readonly rogueClient: Pem;
}

let pkiPromise: Promise<Pki> | undefined;
function pki(): Promise<Pki> {
  pkiPromise ??= (async () => {
    const ca = await makeCa('weft test CA');
    const otherCa = await makeCa('rogue CA');
    return {
      ca,
      otherCa,
      client: await makeLeaf(ca, CLIENT_ID),
      server: await makeLeaf(ca, SERVER_ID),
      server2: await makeLeaf(ca, SERVER2_ID),
      rogueClient: await makeLeaf(otherCa, CLIENT_ID),
    };
  })();
  return pkiPromise;
}

/** The tests' stand-in for identity/: issued by the bundle's CA, one SPIFFE URI SAN. */
function verifierFor(ca: Ca): (socket: tls.TLSSocket) => PeerVerdict {
  return (socket) => {
    const cert = socket.getPeerX509Certificate();
    if (!cert) return { ok: false, reason: 'no certificate' };
    if (!cert.checkIssued(ca.node) || !cert.verify(ca.node.publicKey)) {
      return { ok: false, reason: 'not issued by the trust bundle' };
    }
    const uris = (cert.subjectAltName ?? '')
      .split(', ')
      .filter((s) => s.startsWith('URI:'))
      .map((s) => s.slice(4));
    if (uris.length !== 1 || !uris[0]!.startsWith('spiffe://')) {
      return { ok: false, reason: 'not exactly one SPIFFE URI SAN' };
    }
    return { ok: true, identity: uris[0]! };
  };
}

// ---------------------------------------------------------------- helpers

async function waitFor(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function withTimeout<T>(what: string, p: Promise<T>, ms = 10_000): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function listen(
  t: ExecutionContext,
  host: string,
  onConnection: (s: net.Socket) => void,
): Promise<number> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    onConnection(socket);
  });
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve((server.address() as net.AddressInfo).port));
  });
}

/** Echoes everything; its FIN follows the client's (after the echo). */
function echoTarget(t: ExecutionContext, host = '127.0.0.1'): Promise<number> {
  return listen(t, host, (socket) => {
    socket.on('error', () => socket.destroy());
    socket.pipe(socket);
  });
}

/** Reads until FIN, then answers `got <n> <sha256>` and FINs: proves half-close both ways. */
function collectorTarget(t: ExecutionContext): Promise<number> {
  return listen(t, '127.0.0.1', (socket) => {
    socket.on('error', () => socket.destroy());
    const hash = createHash('sha256');
    let n = 0;
    socket.on('data', (chunk: Buffer) => {
      n += chunk.length;
      hash.update(chunk);
    });
    socket.on('end', () => socket.end(`got ${n} ${hash.digest('hex')}`));
  });
}

async function freePort(host: string): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function payload(n: number): Buffer {
  const out = Buffer.alloc(n);
  let i = 0;
  for (let off = 0; off < n; off += 32) {
    createHash('sha256').update(String(i++)).digest().copy(out, off);
  }
  return out;
}

/** Writes `data` to a duplex, ends it, and collects everything read until its end. */
function exchange(stream: NodeJS.ReadWriteStream, data: Buffer): Promise<Buffer> {
  return withTimeout(
    'exchange',
    new Promise<Buffer>((resolve, reject) => {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => resolve(Buffer.concat(chunks)));
      stream.on('error', reject);
      stream.on('close', () => reject(new Error('closed before its end')));
      stream.end(data);
    }),
  );
}

interface Harness {
  readonly pki: Pki;
  readonly hbonePort: number;
  readonly echoPort: number;
  readonly server: HboneServer;
  readonly records: HboneStreamRecord[];
  readonly rejections: HboneConnectionRejection[];
  readonly authorized: HboneRequestInfo[];
  readonly connects: { target: Endpoint; client: Endpoint }[];
  /** What the server saw in each TLS handshake. */
  readonly handshakes: { servername: string | false; cipher: string; protocol: string | null }[];
  /** Swaps in a fresh HboneServer behind the same listener. */
  replaceServer(): HboneServer;
  pool(options?: HbonePoolOptions): HbonePool;
  request(overrides?: Partial<HboneOpenRequest>): HboneOpenRequest;
}

async function harness(
  t: ExecutionContext,
  overrides: Partial<HboneServerOptions> = {},
): Promise<Harness> {
  const p = await pki();
  const records: HboneStreamRecord[] = [];
  const rejections: HboneConnectionRejection[] = [];
  const authorized: HboneRequestInfo[] = [];
  const connects: { target: Endpoint; client: Endpoint }[] = [];
  const handshakes: Harness['handshakes'] = [];
  const contexts = new Map([
    ['127.0.0.1', createHboneSecureContext(p.server)],
    ['127.0.0.2', createHboneSecureContext(p.server2)],
  ]);
  const verify = verifierFor(p.ca);
  const options: HboneServerOptions = {
    contextForLocalAddress: (ip) => contexts.get(ip),
    verifyPeer: (socket) => {
      handshakes.push({
        servername: (socket as unknown as { servername: string | false }).servername,
        cipher: socket.getCipher().name,
        protocol: socket.getProtocol(),
      });
      return verify(socket);
    },
    authorize: (info): AuthorizeVerdict => {
      authorized.push(info);
      return { allow: true };
    },
    connectTarget: (target, client) => {
      connects.push({ target, client });
      return new Promise((resolve, reject) => {
        const s = net.connect({ host: target.ip, port: target.port, allowHalfOpen: true });
        s.once('error', reject);
        s.once('connect', () => {
          s.removeListener('error', reject);
          resolve(s);
        });
      });
    },
    observer: {
      onStreamClosed: (r) => records.push(r),
      onConnectionRejected: (r) => rejections.push(r),
    },
    timeouts: { handshakeMs: 3000, firstStreamMs: 3000 },
    ...overrides,
  };
  let server = new HboneServer(options);
  t.teardown(() => server.close());
  const hbonePort = await listen(t, '127.0.0.1', (socket) => server.handle(socket));
  // The same port on 127.0.0.2 (a second "pod"): separate listener, same server.
  const echoPort = await echoTarget(t);
  const pools: HbonePool[] = [];
  t.teardown(() => Promise.all(pools.map((pool) => pool.close())).then(() => undefined));
  return {
    pki: p,
    hbonePort,
    echoPort,
    get server() {
      return server;
    },
    records,
    rejections,
    authorized,
    connects,
    handshakes,
    replaceServer() {
      const old = server;
      server = new HboneServer(options);
      t.teardown(() => server.close());
      void old;
      return server;
    },
    pool(poolOptions) {
      const pool = new HbonePool({
        responseTimeoutMs: 5000,
        connectTimeoutMs: 5000,
        ...poolOptions,
      });
      pools.push(pool);
      return pool;
    },
    request(o = {}) {
      return {
        sourceIdentity: CLIENT_ID,
        sourceContext: createHboneSecureContext(p.client),
        expectedServerIdentity: SERVER_ID,
        verifyServer: verify,
        destinationIp: '127.0.0.1',
        port: hbonePort,
        target: { ip: '127.0.0.1', port: echoPort },
        forwardedFor: '127.0.0.1:40001',
        traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
        baggage: 'k8s.namespace.name=default,k8s.deployment.name=client',
        ...o,
      };
    },
  };
}

// ---------------------------------------------------------------- parsing

test('authority and forwarded parsing', (t) => {
  t.deepEqual(parseHostPort('10.0.0.1:80'), { ip: '10.0.0.1', port: 80 });
  t.deepEqual(parseHostPort('[fd00::1]:8080'), { ip: 'fd00::1', port: 8080 });
  for (const bad of [
    '10.0.0.1',
    'host:80',
    '10.0.0.1:0',
    '10.0.0.1:65536',
    '10.0.0.1:8a',
    '',
    '[x]:1',
  ]) {
    t.is(parseHostPort(bad), undefined, bad);
  }
  t.deepEqual(parseForwardedFor('for="10.1.2.3:4567"'), { ip: '10.1.2.3', port: 4567 });
  t.deepEqual(parseForwardedFor('for=10.1.2.3'), { ip: '10.1.2.3', port: 0 });
  t.deepEqual(parseForwardedFor('For="[fd00::2]:99";host=svc.example'), {
    ip: 'fd00::2',
    port: 99,
  });
  t.deepEqual(parseForwardedFor('proto=https;for="10.0.0.9:1", for=10.0.0.8'), {
    ip: '10.0.0.9',
    port: 1,
  });
  t.is(parseForwardedFor('for=_hidden'), undefined);
  t.is(parseForwardedFor(undefined), undefined);
});

// ---------------------------------------------------------------- happy path

test('client -> server -> echo: exact bytes both ways, headers, no SNI, TLS 1.3 AES-128', async (t) => {
  const h = await harness(t);
  const pool = h.pool();
  const stream = await pool.open(h.request());
  const data = payload(3 * 1024 * 1024 + 17);
  const back = await exchange(stream, data);
  t.true(back.equals(data), 'echoed bytes are identical');
  await waitFor('stream record', () => h.records.length === 1);
  const r = h.records[0]!;
  t.is(r.status, 200);
  t.is(r.peerIdentity, CLIENT_ID);
  t.deepEqual(r.target, { ip: '127.0.0.1', port: h.echoPort });
  t.is(r.bytesIn, data.length);
  t.is(r.bytesOut, data.length);
  t.is(r.reason, undefined);
  t.deepEqual(r.forwardedFor, { ip: '127.0.0.1', port: 40001 });
  t.is(r.traceparent, '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01');
  t.is(r.baggage, 'k8s.namespace.name=default,k8s.deployment.name=client');
  t.is(h.authorized[0]!.peerIdentity, CLIENT_ID);
  // The upstream connect is told the original client (forwarded: for).
  t.deepEqual(h.connects[0]!.client, { ip: '127.0.0.1', port: 40001 });
  t.deepEqual(h.handshakes, [
    { servername: false, cipher: 'TLS_AES_128_GCM_SHA256', protocol: 'TLSv1.3' },
  ]);
});

test('half-close: client FIN reaches the target, which answers after it', async (t) => {
  const h = await harness(t);
  const collector = await collectorTarget(t);
  const pool = h.pool();
  const stream = await pool.open(h.request({ target: { ip: '127.0.0.1', port: collector } }));
  const data = payload(200_000);
  const back = await exchange(stream, data);
  t.is(back.toString(), `got ${data.length} ${createHash('sha256').update(data).digest('hex')}`);
  await waitFor('stream record', () => h.records.length === 1);
  t.is(h.records[0]!.bytesIn, data.length);
  t.is(h.records[0]!.bytesOut, back.length);
});

test('a target reset resets the stream (CONNECT_ERROR); a stream reset resets the target', async (t) => {
  const h = await harness(t);
  let targetSocket: net.Socket | undefined;
  const targetErrors: string[] = [];
  const port = await listen(t, '127.0.0.1', (s) => {
    targetSocket = s;
    // Reading, so the kernel's RST surfaces as an error.
    s.resume();
    s.on('error', (e: NodeJS.ErrnoException) => targetErrors.push(e.code ?? e.message));
  });
  const pool = h.pool();
  const req = h.request({ target: { ip: '127.0.0.1', port } });

  // Target -> RST: the client's stream is reset with CONNECT_ERROR (0xa).
  const s1 = await pool.open(req);
  s1.on('error', () => {});
  s1.resume();
  await waitFor('target connection', () => targetSocket !== undefined);
  targetSocket!.resetAndDestroy();
  await withTimeout('stream close', new Promise((resolve) => s1.once('close', resolve)));
  t.is(s1.rstCode, http2.constants.NGHTTP2_CONNECT_ERROR);

  // Client RST_STREAM(CANCEL) -> the target sees a TCP reset.
  targetSocket = undefined;
  const s2 = await pool.open(req);
  s2.on('error', () => {});
  await waitFor('target connection', () => targetSocket !== undefined);
  s2.close(http2.constants.NGHTTP2_CANCEL);
  await waitFor('target reset', () => targetErrors.includes('ECONNRESET'));
  await waitFor('records', () => h.records.length === 2);
  t.regex(h.records[0]!.reason ?? '', /ECONNRESET/);
  t.regex(h.records[1]!.reason ?? '', /code 8/);
});

// ---------------------------------------------------------------- refusals

test('400 when the authority IP is not the dialled IP', async (t) => {
  const h = await harness(t);
  const echo2 = await echoTarget(t, '127.0.0.2');
  const pool = h.pool();
  const error = await t.throwsAsync(
    pool.open(h.request({ target: { ip: '127.0.0.2', port: echo2 } })),
    { instanceOf: HboneStatusError },
  );
  t.is(error.status, 400);
  t.is(h.authorized.length, 0, 'not authorized');
  t.is(h.connects.length, 0, 'no upstream connect');
  await waitFor('record', () => h.records.length === 1);
  t.regex(h.records[0]!.reason ?? '', /not the dialled address/);
  // The connection survives a refused stream.
  const ok = await pool.open(h.request());
  t.true((await exchange(ok, Buffer.from('hi'))).equals(Buffer.from('hi')));
  t.is(pool.stats().handshakes, 1);
});

test('400 on malformed CONNECTs and non-CONNECT methods', async (t) => {
  const h = await harness(t);
  const pool = h.pool();
  const e1 = await t.throwsAsync(pool.open(h.request({ target: { ip: 'localhost', port: 80 } })), {
    instanceOf: HboneStatusError,
  });
  t.is(e1.status, 400);

  // A raw session for what our client never sends: GET, and a CONNECT to a portless IP.
  const { tls: socket } = await connectTls({
    destinationIp: '127.0.0.1',
    port: h.hbonePort,
    sourceContext: createHboneSecureContext(h.pki.client),
    expectedServerIdentity: SERVER_ID,
    verifyServer: verifierFor(h.pki.ca),
  });
  const session = http2.connect(`https://127.0.0.1:${h.hbonePort}`, {
    createConnection: () => socket,
  });
  t.teardown(() => session.destroy());
  const status = (headers: http2.OutgoingHttpHeaders) =>
    withTimeout(
      'response',
      new Promise<number>((resolve, reject) => {
        const s = session.request(headers);
        s.on('error', reject);
        s.on('response', (r) => resolve(Number(r[':status'])));
        s.resume();
      }),
    );
  t.is(
    await status({ ':method': 'GET', ':path': '/', ':authority': `127.0.0.1:${h.echoPort}` }),
    400,
  );
  t.is(await status({ ':method': 'POST', ':path': '/x', ':authority': '127.0.0.1:1' }), 400);
  t.is(await status({ ':method': 'CONNECT', ':authority': '127.0.0.1' }), 400);
  t.is(h.connects.length, 0);
});

test('401 when authorization denies', async (t) => {
  const h = await harness(t, {
    authorize: (info) =>
      info.target.port === 1 ? { allow: false, reason: 'policy deny-all' } : { allow: true },
  });
  const pool = h.pool();
  const error = await t.throwsAsync(
    pool.open(h.request({ target: { ip: '127.0.0.1', port: 1 } })),
    {
      instanceOf: HboneStatusError,
    },
  );
  t.is(error.status, 401);
  await waitFor('record', () => h.records.length === 1);
  t.is(h.records[0]!.status, 401);
  t.is(h.records[0]!.reason, 'policy deny-all');
  t.is(h.connects.length, 0);
});

test('503 when the target refuses', async (t) => {
  const h = await harness(t);
  const closed = await freePort('127.0.0.1');
  const pool = h.pool();
  const error = await t.throwsAsync(
    pool.open(h.request({ target: { ip: '127.0.0.1', port: closed } })),
    { instanceOf: HboneStatusError },
  );
  t.is(error.status, 503);
  await waitFor('record', () => h.records.length === 1);
  t.regex(h.records[0]!.reason ?? '', /ECONNREFUSED/);
});

test('wrong server identity: the client refuses and sends no CONNECT', async (t) => {
  const h = await harness(t);
  const pool = h.pool();
  const error = await t.throwsAsync(pool.open(h.request({ expectedServerIdentity: SERVER2_ID })), {
    instanceOf: HboneTunnelError,
  });
  t.is(error.code, 'IDENTITY');
  t.regex(error.message, /sa\/echo, expected .*sa\/other/);
  // A server whose certificate does not verify at all is refused the same way.
  const rogue = await t.throwsAsync(
    pool.open(h.request({ verifyServer: verifierFor(h.pki.otherCa) })),
    { instanceOf: HboneTunnelError },
  );
  t.is(rogue.code, 'IDENTITY');
  await waitFor('server saw the connections close', () => h.server.stats().connections === 0);
  t.is(h.server.stats().requests, 0, 'no CONNECT reached the server');
  t.is(pool.stats().connections, 0);
  t.is(pool.stats().dialFailures, 2);
});

/** Raw TLS client: sends the HTTP/2 preface and counts what comes back until close. */
function rawAttempt(
  port: number,
  context: tls.SecureContext,
): Promise<{ bytes: number; error?: string }> {
  return withTimeout(
    'raw attempt',
    new Promise((resolve) => {
      let bytes = 0;
      let error: string | undefined;
      const s = tls.connect({
        host: '127.0.0.1',
        port,
        secureContext: context,
        ALPNProtocols: ['h2'],
        rejectUnauthorized: false,
      });
      s.on('secureConnect', () => {
        // Preface + empty SETTINGS.
        s.write(
          Buffer.concat([
            Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'),
            Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]),
          ]),
        );
      });
      s.on('data', (c: Buffer) => (bytes += c.length));
      s.on('error', (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
      s.on('close', () => resolve({ bytes, error }));
    }),
  );
}

test('client without a certificate, or with one failing verification: closed before HTTP/2', async (t) => {
  const h = await harness(t);
  const noCert = await rawAttempt(h.hbonePort, tls.createSecureContext({ minVersion: 'TLSv1.3' }));
  t.is(noCert.bytes, 0, 'not one HTTP/2 byte (no SETTINGS) came back');
  const rogue = await rawAttempt(h.hbonePort, createHboneSecureContext(h.pki.rogueClient));
  t.is(rogue.bytes, 0);
  await waitFor('rejections', () => h.rejections.length === 2);
  t.is(h.rejections[0]!.reason, 'no client certificate');
  t.regex(h.rejections[1]!.reason, /peer refused: not issued by the trust bundle/);
  t.is(h.server.stats().requests, 0);

  // Through the pool: the open fails (TLS 1.3 finishes client-side before the server has
  // checked the certificate, so the failure shows as a closed connection, not a TLS error).
  const pool = h.pool();
  const error = await t.throwsAsync(
    pool.open(h.request({ sourceContext: createHboneSecureContext(h.pki.rogueClient) })),
    { instanceOf: HboneTunnelError },
  );
  t.true(['CLOSED', 'RESET', 'TLS'].includes(error.code), error.code);
  t.is(h.server.stats().requests, 0);
});

test('a TLS 1.2 client is refused at the handshake', async (t) => {
  const h = await harness(t);
  const result = await rawAttempt(
    h.hbonePort,
    tls.createSecureContext({ ...h.pki.client, maxVersion: 'TLSv1.2' }),
  );
  t.is(result.bytes, 0);
  t.truthy(result.error);
  await waitFor('rejection', () => h.rejections.length === 1);
  t.regex(h.rejections[0]!.reason, /^TLS: /);
});

test('a socket for an address with no local pod is dropped', async (t) => {
  const h = await harness(t, { contextForLocalAddress: () => undefined });
  const result = await rawAttempt(h.hbonePort, createHboneSecureContext(h.pki.client));
  t.is(result.bytes, 0);
  await waitFor('rejection', () => h.rejections.length === 1);
  t.regex(h.rejections[0]!.reason, /no local pod owns 127.0.0.1/);
});

test('a silent peer is cut at the handshake timeout', async (t) => {
  const h = await harness(t, { timeouts: { handshakeMs: 200 } });
  const socket = net.connect({ host: '127.0.0.1', port: h.hbonePort });
  t.teardown(() => socket.destroy());
  socket.on('error', () => {});
  await withTimeout('server closes', new Promise((resolve) => socket.once('close', resolve)), 3000);
  t.is(h.rejections[0]?.reason, 'TLS handshake timeout');
});

// ---------------------------------------------------------------- pooling

test('sequential and concurrent opens share one TLS connection', async (t) => {
  const h = await harness(t);
  const pool = h.pool();
  for (let i = 0; i < 5; i++) {
    const s = await pool.open(h.request());
    t.true((await exchange(s, Buffer.from(`seq ${i}`))).equals(Buffer.from(`seq ${i}`)));
  }
  const streams = await Promise.all(Array.from({ length: 30 }, () => pool.open(h.request())));
  t.is(pool.stats().streams, 30);
  const answers = await Promise.all(streams.map((s, i) => exchange(s, Buffer.from(`c ${i}`))));
  answers.forEach((a, i) => t.is(a.toString(), `c ${i}`));
  t.is(pool.stats().handshakes, 1);
  t.is(h.server.stats().handshakes, 1, 'the server counted one TLS handshake');
  t.is(pool.stats().connections, 1);
  await waitFor('streams released', () => pool.stats().streams === 0);
  // Another source identity, or another destination, is another connection.
  const other = await pool.open(h.request({ sourceIdentity: `${TD}/ns/default/sa/client2` }));
  await exchange(other, Buffer.from('x'));
  t.is(pool.stats().handshakes, 2);
  t.is(h.server.stats().handshakes, 2);
});

test('more than 100 concurrent streams open a second connection', async (t) => {
  const h = await harness(t);
  const pool = h.pool();
  const streams = await Promise.all(Array.from({ length: 101 }, () => pool.open(h.request())));
  t.is(pool.stats().connections, 2);
  t.is(pool.stats().streams, 101);
  t.is(h.server.stats().handshakes, 2);
  await waitFor('server streams', () => h.server.stats().streams === 101);
  const answers = await Promise.all(streams.map((s, i) => exchange(s, Buffer.from(`s${i}`))));
  answers.forEach((a, i) => t.is(a.toString(), `s${i}`));
});

test('idle connections close after the idle timeout; the next open dials afresh', async (t) => {
  const h = await harness(t);
  const pool = h.pool({ idleTimeoutMs: 150 });
  await exchange(await pool.open(h.request()), Buffer.from('a'));
  await waitFor('pool closes the idle connection', () => pool.stats().connections === 0, 3000);
  await waitFor('server sees it go', () => h.server.stats().connections === 0, 3000);
  await exchange(await pool.open(h.request()), Buffer.from('b'));
  t.is(pool.stats().handshakes, 2);
  t.is(h.server.stats().handshakes, 2, 'the server counted both handshakes');
});

test('a connection the server closed (GOAWAY) is dropped; the next open dials afresh', async (t) => {
  const h = await harness(t);
  const pool = h.pool();
  await exchange(await pool.open(h.request()), Buffer.from('a'));
  const first = h.server;
  const second = h.replaceServer();
  await first.close(100);
  await waitFor('pool drops the dead connection', () => pool.stats().connections === 0, 3000);
  await exchange(await pool.open(h.request()), Buffer.from('b'));
  t.is(pool.stats().handshakes, 2);
  t.is(second.stats().handshakes, 1);
});

test('keepalive pings keep a healthy idle connection open', async (t) => {
  const h = await harness(t, { timeouts: { pingIntervalMs: 50, pingTimeoutMs: 2000 } });
  const pool = h.pool({ pingIntervalMs: 50, pingTimeoutMs: 2000 });
  const s = await pool.open(h.request());
  await new Promise((resolve) => setTimeout(resolve, 600));
  t.true((await exchange(s, Buffer.from('still here'))).equals(Buffer.from('still here')));
  t.is(pool.stats().handshakes, 1);
});

test('relayStream carries a downstream socket through the pool (outbound shape)', async (t) => {
  const h = await harness(t);
  const pool = h.pool();
  // A "pod" connects to a local listener; the proxy relays it into a pooled stream.
  const proxied = await listen(t, '127.0.0.1', (downstream) => {
    downstream.pause();
    pool.open(h.request()).then(
      (stream) => void relayStream(stream, downstream, new ReadBuffers()),
      () => downstream.destroy(),
    );
  });
  const client = net.connect({ host: '127.0.0.1', port: proxied, allowHalfOpen: true });
  t.teardown(() => client.destroy());
  const data = payload(500_000);
  const back = await exchange(client, data);
  t.true(back.equals(data));
});

// ---------------------------------------------------------------- interop

interface Child {
  readonly lines: AsyncIterator<string>;
  readonly stderr: () => string;
  readonly done: Promise<number | null>;
}

function runPython(t: ExecutionContext, args: string[]): Child {
  const child = spawn(PYTHON, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const done = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      process.kill(child.pid, 'SIGKILL');
    }
    await withTimeout('python exit', done, 5000).catch(() => undefined);
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  return { lines, stderr: () => stderr, done };
}

async function nextJson(child: Child, what: string): Promise<Record<string, unknown>> {
  const next = await withTimeout(what, child.lines.next(), 25_000);
  if (next.done) throw new Error(`${what}: python exited: ${child.stderr()}`);
  return JSON.parse(next.value) as Record<string, unknown>;
}

async function pemFiles(
  t: ExecutionContext,
  files: Record<string, string>,
): Promise<Record<string, string>> {
  const dir = await mkdtemp(join(tmpdir(), 'weft-hbone-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const out: Record<string, string> = {};
  for (const [name, text] of Object.entries(files)) {
    out[name] = join(dir, name);
    await writeFile(out[name]!, text);
  }
  return out;
}

test('interop: python3-h2 client (TLS 1.3, client cert, CONNECT) through our server', async (t) => {
  const h = await harness(t);
  const f = await pemFiles(t, { 'cert.pem': h.pki.client.cert, 'key.pem': h.pki.client.key });
  const size = 300_000;
  const child = runPython(t, [
    `${FIXTURES}hbone_client.py`,
    '127.0.0.1',
    String(h.hbonePort),
    f['cert.pem']!,
    f['key.pem']!,
    `127.0.0.1:${h.echoPort}`,
    String(size),
  ]);
  const result = await nextJson(child, 'python client result');
  t.like(result, {
    status: 200,
    version: 'TLSv1.3',
    alpn: 'h2',
    cipher: 'TLS_AES_128_GCM_SHA256',
    sent: size,
    received: size,
    echo_ok: true,
    ended: true,
  });
  t.is(await withTimeout('python exit', child.done, 5000), 0);
  await waitFor('record', () => h.records.length === 1);
  t.like(h.records[0], { status: 200, peerIdentity: CLIENT_ID, bytesIn: size, bytesOut: size });
  t.deepEqual(h.records[0]!.forwardedFor, { ip: '127.0.0.1', port: 40000 });
  t.is(h.handshakes[0]!.servername, false, 'python sent no SNI');

  // And a refusal the python client understands: authority IP != dialled IP.
  const refused = runPython(t, [
    `${FIXTURES}hbone_client.py`,
    '127.0.0.1',
    String(h.hbonePort),
    f['cert.pem']!,
    f['key.pem']!,
    `127.0.0.2:${h.echoPort}`,
    '0',
  ]);
  t.like(await nextJson(refused, 'python refused result'), { status: 400 });
});

test('interop: our pool through a python3-h2 server', async (t) => {
  const p = await pki();
  const f = await pemFiles(t, {
    'cert.pem': p.server2.cert,
    'key.pem': p.server2.key,
    'ca.pem': p.ca.cert,
  });
  const child = runPython(t, [
    `${FIXTURES}hbone_server.py`,
    '127.0.0.2',
    f['cert.pem']!,
    f['key.pem']!,
    f['ca.pem']!,
  ]);
  const { port } = (await nextJson(child, 'python server port')) as { port: number };
  const pool = new HbonePool({ responseTimeoutMs: 5000, connectTimeoutMs: 5000 });
  t.teardown(() => pool.close());
  const request: HboneOpenRequest = {
    sourceIdentity: CLIENT_ID,
    sourceContext: createHboneSecureContext(p.client),
    expectedServerIdentity: SERVER2_ID,
    verifyServer: verifierFor(p.ca),
    destinationIp: '127.0.0.2',
    port,
    target: { ip: '127.0.0.2', port: 8080 },
    forwardedFor: '127.0.0.1:40002',
  };
  const data = payload(1_000_000);
  const stream = await pool.open(request);
  t.true((await exchange(stream, data)).equals(data), 'python echoed the exact bytes');
  const seen = await nextJson(child, 'python stream record');
  t.like(seen, {
    sni: null,
    method: 'CONNECT',
    authority: '127.0.0.2:8080',
    forwarded: 'for="127.0.0.1:40002"',
    alpn: 'h2',
    version: 'TLSv1.3',
  });
  t.deepEqual(seen['peer'], [CLIENT_ID]);
  // A second stream reuses the connection.
  t.true(
    (await exchange(await pool.open(request), Buffer.from('again'))).equals(Buffer.from('again')),
  );
  t.is(pool.stats().handshakes, 1);
  // Wrong identity expected: refused before any CONNECT (python would have printed a line).
  const error = await t.throwsAsync(pool.open({ ...request, expectedServerIdentity: SERVER_ID }), {
    instanceOf: HboneTunnelError,
  });
  t.is(error.code, 'IDENTITY');
  const after = await nextJson(child, 'python line after the refused dial');
  t.is(after['method'], 'CONNECT', 'the second stream, not a third');
  const extra = await Promise.race([
    child.lines.next().then((n) => (n.done ? 'exit' : n.value)),
    new Promise<string>((resolve) => setTimeout(() => resolve('quiet'), 300)),
  ]);
  t.false(extra.includes('"method"'), `no CONNECT from the refused dial: ${extra}`);
});
