// lab/podapp.ts: the tiny application the namespace lab runs inside pod namespaces (tests, bench,
// `weft demo`): `serve` (TCP echo/sink server) and `connect` (bounded echo client). It prints
// one JSON line per event (see protocol.ts) and depends on node: builtins only. It must never
// retry, never loop without a bound, and never import the rest of weft.
//
//   node podapp.js serve --port P [--port P2 ...] [--mode echo|sink] [--idle-timeout-ms T]
//   node podapp.js connect --host H --port P [--bytes N] [--count K] [--connect-timeout-ms T]
//                          [--timeout-ms T] [--payload TEXT] [--expect echo|eof]

import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { parseArgs } from 'node:util';
import type { AcceptedEvent, ClosedEvent, ConnectResult, ListeningEvent } from './protocol.js';

const MAX_COUNT = 100_000;
const CHUNK = 64 * 1024;

function print(obj: object): void {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function fail(msg: string): never {
  process.stderr.write(`podapp: ${msg}\n`);
  process.exit(2);
}

function addr(ip: string | undefined, port: number | undefined): string {
  if (!ip) return '';
  const v4 = ip.startsWith('::ffff:') ? ip.slice(7) : ip;
  return v4.includes(':') ? `[${v4}]:${port}` : `${v4}:${port}`;
}

function intArg(name: string, v: string | undefined, def: number, min: number, max: number) {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max)
    fail(`--${name} must be an integer in ${min}..${max}`);
  return n;
}

function errText(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  return err?.code ?? err?.message ?? String(e);
}

function serve(args: string[]): void {
  const { values } = parseArgs({
    args,
    options: {
      port: { type: 'string', multiple: true },
      mode: { type: 'string', default: 'echo' },
      'idle-timeout-ms': { type: 'string' },
    },
  });
  const mode = values.mode;
  if (mode !== 'echo' && mode !== 'sink') fail('--mode must be echo or sink');
  const ports = (values.port ?? []).map((p) => intArg('port', p, 0, 1, 65535));
  if (ports.length === 0) fail('serve needs at least one --port');
  const idleMs = intArg('idle-timeout-ms', values['idle-timeout-ms'], 120_000, 1, 86_400_000);

  const sockets = new Set<net.Socket>();
  const servers: net.Server[] = [];
  const onConnection = (sock: net.Socket) => {
    sockets.add(sock);
    const local = addr(sock.localAddress, sock.localPort);
    const remote = addr(sock.remoteAddress, sock.remotePort);
    const accepted: AcceptedEvent = { event: 'accepted', local, remote };
    print(accepted);
    const hash = createHash('sha256');
    let bytesIn = 0;
    let bytesOut = 0;
    let error: string | null = null;
    sock.setTimeout(idleMs, () => {
      error = 'idle timeout';
      sock.destroy();
    });
    sock.on('data', (chunk: Buffer) => {
      bytesIn += chunk.length;
      hash.update(chunk);
      if (mode === 'echo') {
        const more = sock.write(chunk, (err) => {
          if (!err) bytesOut += chunk.length;
        });
        if (!more) {
          sock.pause();
          sock.once('drain', () => sock.resume());
        }
      }
    });
    sock.on('end', () => sock.end());
    sock.on('error', (e) => {
      error ??= errText(e);
    });
    sock.on('close', () => {
      sockets.delete(sock);
      const closed: ClosedEvent = {
        event: 'closed',
        local,
        remote,
        bytesIn,
        bytesOut,
        sha256In: hash.digest('hex'),
        error,
      };
      print(closed);
    });
  };

  let pending = ports.length;
  for (const port of ports) {
    const server = net.createServer({ allowHalfOpen: true }, onConnection);
    servers.push(server);
    server.on('error', (e) => fail(`port ${port}: ${errText(e)}`));
    server.listen({ host: '0.0.0.0', port }, () => {
      if (--pending === 0) {
        const ev: ListeningEvent = { event: 'listening', ports, mode };
        print(ev);
      }
    });
  }

  const stop = () => {
    for (const s of servers) s.close();
    for (const s of sockets) s.destroy();
    // Let the 'closed' lines print, then leave (bounded).
    setTimeout(() => process.exit(0), 200).unref();
    const t = setInterval(() => {
      if (sockets.size === 0) process.exit(0);
    }, 10);
    t.unref();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

interface ConnectParams {
  host: string;
  port: number;
  bytes: number;
  payload: Buffer | null;
  connectTimeoutMs: number;
  timeoutMs: number;
  expect: 'echo' | 'eof';
}

function connectOnce(p: ConnectParams): Promise<ConnectResult> {
  const start = performance.now();
  return new Promise<ConnectResult>((resolve) => {
    const sentHash = createHash('sha256');
    const recvHash = createHash('sha256');
    let bytesSent = 0;
    let bytesReceived = 0;
    let local = '';
    let error: string | null = null;
    let sawEnd = false;
    const sock = net.connect({ host: p.host, port: p.port });
    const remote = addr(p.host, p.port);
    const connectTimer = setTimeout(() => {
      error ??= `connect timeout after ${p.connectTimeoutMs} ms`;
      sock.destroy();
    }, p.connectTimeoutMs);
    const overallTimer = setTimeout(() => {
      error ??= `timeout after ${p.timeoutMs} ms`;
      sock.destroy();
    }, p.timeoutMs);

    const send = async () => {
      if (p.payload) {
        sentHash.update(p.payload);
        bytesSent += p.payload.length;
        sock.write(p.payload);
      } else {
        let left = p.bytes;
        while (left > 0 && !sock.destroyed) {
          const chunk = randomBytes(Math.min(CHUNK, left));
          left -= chunk.length;
          sentHash.update(chunk);
          bytesSent += chunk.length;
          if (!sock.write(chunk)) {
            await new Promise<void>((r) => {
              const done = () => {
                sock.off('drain', done);
                sock.off('close', done);
                r();
              };
              sock.on('drain', done);
              sock.on('close', done);
            });
          }
        }
      }
      if (!sock.destroyed) sock.end();
    };

    sock.on('connect', () => {
      clearTimeout(connectTimer);
      local = addr(sock.localAddress, sock.localPort);
      void send();
    });
    sock.on('data', (chunk: Buffer) => {
      bytesReceived += chunk.length;
      recvHash.update(chunk);
    });
    sock.on('end', () => {
      sawEnd = true;
    });
    sock.on('error', (e) => {
      error ??= errText(e);
    });
    sock.on('close', () => {
      clearTimeout(connectTimer);
      clearTimeout(overallTimer);
      const sha256Sent = sentHash.digest('hex');
      const sha256Recv = recvHash.digest('hex');
      const match = local !== '' && bytesReceived === bytesSent && sha256Recv === sha256Sent;
      if (!error && !sawEnd) error = 'closed without EOF';
      const ok = error === null && (p.expect === 'eof' || match);
      if (!error && !ok) error = 'echo mismatch';
      resolve({
        ok,
        local,
        remote,
        bytesSent,
        bytesReceived,
        match,
        sha256Sent,
        error,
        ms: Math.round((performance.now() - start) * 10) / 10,
      });
    });
  });
}

async function connect(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      bytes: { type: 'string' },
      count: { type: 'string' },
      'connect-timeout-ms': { type: 'string' },
      'timeout-ms': { type: 'string' },
      payload: { type: 'string' },
      expect: { type: 'string', default: 'echo' },
    },
  });
  if (!values.host) fail('connect needs --host');
  if (values.expect !== 'echo' && values.expect !== 'eof') fail('--expect must be echo or eof');
  const params: ConnectParams = {
    host: values.host,
    port: intArg('port', values.port, 0, 1, 65535),
    bytes: intArg('bytes', values.bytes, 1024, 0, 16 * 1024 * 1024 * 1024),
    payload: values.payload !== undefined ? Buffer.from(values.payload, 'utf8') : null,
    connectTimeoutMs: intArg('connect-timeout-ms', values['connect-timeout-ms'], 2000, 1, 600_000),
    timeoutMs: intArg('timeout-ms', values['timeout-ms'], 10_000, 1, 3_600_000),
    expect: values.expect,
  };
  if (values.port === undefined) fail('connect needs --port');
  const count = intArg('count', values.count, 1, 1, MAX_COUNT);
  let allOk = true;
  for (let i = 0; i < count; i++) {
    const r = await connectOnce(params);
    print(r);
    if (!r.ok) allOk = false;
  }
  process.exitCode = allOk ? 0 : 1;
}

const [cmd, ...rest] = process.argv.slice(2);
try {
  if (cmd === 'serve') serve(rest);
  else if (cmd === 'connect') await connect(rest);
  else fail(`usage: podapp serve|connect ... (got ${JSON.stringify(cmd)})`);
} catch (e) {
  fail((e as Error).message);
}
