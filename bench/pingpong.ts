// bench/pingpong.ts: the tiny latency tool bench/crossnode.ts runs inside lab pod namespaces.
// node: builtins only; every loop is bounded in count and in time; never retries.
//
//   node pingpong.js server --port P
//       TCP echo server; prints {"event":"listening","port":P} once ready; exits on SIGTERM.
//   node pingpong.js rtt --host H --port P [--size 64] [--count 2000] [--warmup 200]
//                        [--timeout-ms 30000]
//       One connection; sends `size` bytes, waits until all `size` come back, repeats
//       warmup + count times; prints one JSON line with round-trip percentiles in µs.
//   node pingpong.js connect --host H --port P [--size 64] [--count 500] [--timeout-ms 30000]
//       `count` sequential connections: connect, send `size` bytes, read them back, close
//       (FIN, wait for the server's FIN); prints one JSON line with connections/s and
//       per-connection time percentiles in µs.
//   node pingpong.js hold --host H --port P [--count 1000] [--parallel 50] [--timeout-ms 60000]
//                         [--hold-ms 120000]
//       Opens `count` connections (at most `parallel` opening at once); each sends one byte and
//       waits for its echo, so it is open end to end. Then prints one JSON line
//       ({"kind":"hold","ok":true,"open":N,...}) and holds them until SIGTERM/SIGINT or
//       `hold-ms`, then closes them all and exits. On any failure it prints ok:false and exits 1.

import net from 'node:net';
import { parseArgs } from 'node:util';

const MAX_COUNT = 1_000_000;
const MAX_SIZE = 1024 * 1024;

export interface RttResult {
  kind: 'rtt';
  ok: boolean;
  count: number;
  size: number;
  p50Us: number;
  p90Us: number;
  p99Us: number;
  maxUs: number;
  meanUs: number;
  error?: string;
}

export interface ConnectRateResult {
  kind: 'connect';
  ok: boolean;
  count: number;
  size: number;
  elapsedMs: number;
  perSecond: number;
  p50Us: number;
  p99Us: number;
  error?: string;
}

function fail(msg: string): never {
  process.stderr.write(`pingpong: ${msg}\n`);
  process.exit(2);
}

function intArg(name: string, v: string | undefined, def: number, min: number, max: number) {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) {
    fail(`--${name} must be an integer in ${min}..${max}`);
  }
  return n;
}

function percentile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i]!;
}

function round1(x: number): number {
  return Math.round(x * 10) / 10;
}

function serve(port: number): void {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (sock) => {
    sockets.add(sock);
    sock.setNoDelay(true);
    sock.setTimeout(120_000, () => sock.destroy());
    sock.on('data', (chunk: Buffer) => {
      if (!sock.write(chunk)) {
        sock.pause();
        sock.once('drain', () => sock.resume());
      }
    });
    sock.on('end', () => sock.end());
    sock.on('error', () => sock.destroy());
    sock.on('close', () => sockets.delete(sock));
  });
  server.on('error', (e) => fail(`listen ${port}: ${e.message}`));
  server.listen({ host: '0.0.0.0', port, backlog: 1024 }, () => {
    process.stdout.write(JSON.stringify({ event: 'listening', port }) + '\n');
  });
  const stop = () => {
    server.close();
    for (const s of sockets) s.destroy();
    setTimeout(() => process.exit(0), 100).unref();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

/** One connection, warmup + count round trips of `size` bytes. */
function rtt(
  host: string,
  port: number,
  size: number,
  count: number,
  warmup: number,
  timeoutMs: number,
) {
  return new Promise<RttResult>((resolve) => {
    const payload = Buffer.alloc(size, 0x61);
    const samples = new Float64Array(count);
    const total = warmup + count;
    let done = 0;
    let got = 0;
    let t0 = 0n;
    let settled = false;
    const sock = net.connect({ host, port, noDelay: true });
    const finish = (error?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      const n = error ? Math.max(0, done - warmup) : count;
      const s = samples.slice(0, n).sort();
      let sum = 0;
      for (const x of s) sum += x;
      resolve({
        kind: 'rtt',
        ok: !error,
        count: n,
        size,
        p50Us: round1(percentile(s, 0.5)),
        p90Us: round1(percentile(s, 0.9)),
        p99Us: round1(percentile(s, 0.99)),
        maxUs: round1(s.length ? s[s.length - 1]! : NaN),
        meanUs: round1(n ? sum / n : NaN),
        ...(error ? { error } : {}),
      });
    };
    const timer = setTimeout(
      () => finish(`timeout after ${timeoutMs} ms (${done}/${total})`),
      timeoutMs,
    );
    const send = () => {
      got = 0;
      t0 = process.hrtime.bigint();
      sock.write(payload);
    };
    sock.on('connect', send);
    sock.on('data', (chunk: Buffer) => {
      got += chunk.length;
      if (got < size) return;
      if (got > size) {
        finish(`got ${got} bytes for a ${size}-byte message`);
        return;
      }
      const us = Number(process.hrtime.bigint() - t0) / 1000;
      if (done >= warmup) samples[done - warmup] = us;
      done++;
      if (done >= total) finish();
      else send();
    });
    sock.on('error', (e: NodeJS.ErrnoException) => finish(`socket: ${e.code ?? e.message}`));
    sock.on('close', () => finish(`closed after ${done}/${total}`));
  });
}

/** One short connection: connect, request, response, orderly close. Resolves with µs or an error. */
function oneConnection(host: string, port: number, payload: Buffer, timeoutMs: number) {
  return new Promise<{ us: number } | { error: string }>((resolve) => {
    const t0 = process.hrtime.bigint();
    let got = 0;
    let settled = false;
    const sock = net.connect({ host, port, noDelay: true });
    const finish = (r: { us: number } | { error: string }) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => finish({ error: `timeout after ${timeoutMs} ms` }), timeoutMs);
    sock.on('connect', () => sock.write(payload));
    sock.on('data', (chunk: Buffer) => {
      got += chunk.length;
      if (got === payload.length) sock.end();
      else if (got > payload.length) finish({ error: `got ${got} bytes` });
    });
    sock.on('end', () => {
      if (got !== payload.length) finish({ error: `EOF after ${got} bytes` });
    });
    sock.on('error', (e: NodeJS.ErrnoException) =>
      finish({ error: `socket: ${e.code ?? e.message}` }),
    );
    sock.on('close', () => {
      if (got === payload.length) finish({ us: Number(process.hrtime.bigint() - t0) / 1000 });
      else finish({ error: `closed after ${got} bytes` });
    });
  });
}

async function connectRate(
  host: string,
  port: number,
  size: number,
  count: number,
  timeoutMs: number,
): Promise<ConnectRateResult> {
  const payload = Buffer.alloc(size, 0x62);
  const samples = new Float64Array(count);
  const start = performance.now();
  const deadline = start + timeoutMs;
  let n = 0;
  let error: string | undefined;
  for (let i = 0; i < count; i++) {
    const left = deadline - performance.now();
    if (left <= 0) {
      error = `overall timeout after ${timeoutMs} ms (${n}/${count})`;
      break;
    }
    const r = await oneConnection(host, port, payload, Math.min(5000, left));
    if ('error' in r) {
      error = `connection ${i + 1}: ${r.error}`;
      break;
    }
    samples[n++] = r.us;
  }
  const elapsedMs = performance.now() - start;
  const s = samples.slice(0, n).sort();
  return {
    kind: 'connect',
    ok: !error,
    count: n,
    size,
    elapsedMs: round1(elapsedMs),
    perSecond: round1((n * 1000) / elapsedMs),
    p50Us: round1(percentile(s, 0.5)),
    p99Us: round1(percentile(s, 0.99)),
    ...(error ? { error } : {}),
  };
}

export interface HoldResult {
  kind: 'hold';
  ok: boolean;
  open: number;
  count: number;
  elapsedMs: number;
  error?: string;
}

/** Opens one connection and waits for the echo of one byte; resolves with it or an error. */
function openEchoed(host: string, port: number, timeoutMs: number) {
  return new Promise<{ sock: net.Socket } | { error: string }>((resolve) => {
    let settled = false;
    const sock = net.connect({ host, port, noDelay: true });
    const finish = (r: { sock: net.Socket } | { error: string }) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.removeAllListeners('data');
      if ('error' in r) sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => finish({ error: `timeout after ${timeoutMs} ms` }), timeoutMs);
    sock.on('connect', () => sock.write('h'));
    sock.once('data', () => finish({ sock }));
    sock.on('error', (e: NodeJS.ErrnoException) =>
      finish({ error: `socket: ${e.code ?? e.message}` }),
    );
    sock.on('close', () => finish({ error: 'closed before the echo' }));
  });
}

/** Opens and holds `count` echoed connections; see the header. */
async function hold(
  host: string,
  port: number,
  count: number,
  parallel: number,
  timeoutMs: number,
  holdMs: number,
): Promise<HoldResult> {
  const socks: net.Socket[] = [];
  const start = performance.now();
  const deadline = start + timeoutMs;
  let next = 0;
  let error: string | undefined;
  let closing = false;
  const worker = async () => {
    while (next < count && !error) {
      next++;
      const left = deadline - performance.now();
      if (left <= 0) {
        error = `overall timeout after ${timeoutMs} ms (${socks.length}/${count} open)`;
        return;
      }
      const r = await openEchoed(host, port, Math.min(10_000, left));
      if ('error' in r) {
        error ??= `connection ${socks.length + 1}: ${r.error}`;
        return;
      }
      socks.push(r.sock);
      // A connection the far end closes while held is a failure of the figure: report it.
      r.sock.on('close', () => {
        if (!closing) process.stderr.write(`pingpong hold: a held connection closed early\n`);
      });
      r.sock.on('error', () => {});
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, () => worker()));
  const result: HoldResult = {
    kind: 'hold',
    ok: !error && socks.length === count,
    open: socks.length,
    count,
    elapsedMs: round1(performance.now() - start),
    ...(error ? { error } : {}),
  };
  process.stdout.write(JSON.stringify(result) + '\n');
  if (result.ok) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, holdMs);
      const stop = () => {
        clearTimeout(timer);
        resolve();
      };
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
  }
  closing = true;
  for (const s of socks) s.destroy();
  return result;
}

async function main(): Promise<void> {
  const [cmd, ...rest] = process.argv.slice(2);
  const { values } = parseArgs({
    args: rest,
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      size: { type: 'string' },
      count: { type: 'string' },
      warmup: { type: 'string' },
      'timeout-ms': { type: 'string' },
      parallel: { type: 'string' },
      'hold-ms': { type: 'string' },
    },
  });
  const port = intArg('port', values.port, 0, 1, 65535);
  if (port === 0) fail('--port is required');
  if (cmd === 'server') {
    serve(port);
    return;
  }
  const host = values.host ?? fail('--host is required');
  const size = intArg('size', values.size, 64, 1, MAX_SIZE);
  const timeoutMs = intArg('timeout-ms', values['timeout-ms'], 30_000, 1, 600_000);
  if (cmd === 'hold') {
    const count = intArg('count', values.count, 1000, 1, 100_000);
    const parallel = intArg('parallel', values.parallel, 50, 1, 1000);
    const holdMs = intArg('hold-ms', values['hold-ms'], 120_000, 0, 600_000);
    const r = await hold(host, port, count, parallel, timeoutMs, holdMs);
    // Exit explicitly: destroyed sockets may still hold the loop briefly.
    process.exit(r.ok ? 0 : 1);
  }
  let result: RttResult | ConnectRateResult;
  if (cmd === 'rtt') {
    const count = intArg('count', values.count, 2000, 1, MAX_COUNT);
    const warmup = intArg('warmup', values.warmup, 200, 0, MAX_COUNT);
    result = await rtt(host, port, size, count, warmup, timeoutMs);
  } else if (cmd === 'connect') {
    const count = intArg('count', values.count, 500, 1, MAX_COUNT);
    result = await connectRate(host, port, size, count, timeoutMs);
  } else {
    fail(`unknown command ${JSON.stringify(cmd)}: want server, rtt, connect or hold`);
  }
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exitCode = result.ok ? 0 : 1;
}

void main();
