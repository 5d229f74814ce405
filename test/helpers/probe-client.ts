// test/helpers/probe-client.ts: run inside a pod namespace, it starts one short TCP connection
// to an echo server every --interval-ms for --duration-ms (bounded to 2 min; at most 200 in
// flight), sends 6 bytes, waits for them back and closes. One JSON line per connection, as it
// ends:
//
//   {"event":"probe","seq":1,"start":<epoch ms>,"local":"ip:port","ok":true,"ms":2,"error":null}
//
// so a test can match each connection (by its local address) with the proxy's access log and
// tell when, in one process that never restarts, its connections started being captured.
//
//   node dist/test/helpers/probe-client.js --host H --port P [--interval-ms 20]
//        [--duration-ms 20000] [--timeout-ms 1500]
import { connect } from 'node:net';
import { resolve as resolvePath } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const PAYLOAD = Buffer.from('probe\n');
const MAX_IN_FLIGHT = 200;

export interface ProbeLine {
  event: 'probe';
  seq: number;
  start: number;
  local: string;
  ok: boolean;
  ms: number;
  error: string | null;
}

export function parseProbeLine(line: string): ProbeLine | undefined {
  if (!line.startsWith('{"event":"probe"')) return undefined;
  try {
    return JSON.parse(line) as ProbeLine;
  } catch {
    return undefined;
  }
}

function bounded(name: string, v: string | undefined, def: number, min: number, max: number) {
  const n = v === undefined ? def : Number(v);
  if (!Number.isInteger(n) || n < min || n > max) {
    process.stderr.write(`probe-client: --${name} must be an integer in ${min}..${max}\n`);
    process.exit(2);
  }
  return n;
}

function once(host: string, port: number, timeoutMs: number, seq: number): Promise<ProbeLine> {
  const start = Date.now();
  return new Promise((resolve) => {
    let local = '';
    let received = 0;
    let error: string | null = null;
    const sock = connect({ host, port });
    const timer = setTimeout(() => {
      error ??= `timeout after ${timeoutMs} ms`;
      sock.destroy();
    }, timeoutMs);
    sock.on('connect', () => {
      local = `${sock.localAddress}:${sock.localPort}`;
      sock.write(PAYLOAD);
    });
    sock.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (received >= PAYLOAD.length) sock.end();
    });
    sock.on('error', (e: NodeJS.ErrnoException) => {
      error ??= e.code ?? e.message;
    });
    sock.on('close', () => {
      clearTimeout(timer);
      resolve({
        event: 'probe',
        seq,
        start,
        local,
        ok: error === null && received === PAYLOAD.length,
        ms: Date.now() - start,
        error,
      });
    });
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      'interval-ms': { type: 'string' },
      'duration-ms': { type: 'string' },
      'timeout-ms': { type: 'string' },
    },
  });
  if (!values.host) throw new Error('--host is required');
  const port = bounded('port', values.port, 0, 1, 65535);
  const interval = bounded('interval-ms', values['interval-ms'], 20, 1, 10_000);
  const duration = bounded('duration-ms', values['duration-ms'], 20_000, 1, 120_000);
  const timeout = bounded('timeout-ms', values['timeout-ms'], 1500, 10, 10_000);
  let stopping = false;
  process.once('SIGTERM', () => (stopping = true));
  process.once('SIGINT', () => (stopping = true));
  // A fixed cadence, not one after the other: a connection that hangs must not delay the
  // next, or the time a change takes effect would include that connection's timeout.
  const inFlight = new Set<Promise<void>>();
  const end = Date.now() + duration;
  for (let seq = 1; !stopping && Date.now() < end; seq++) {
    const started = Date.now();
    if (inFlight.size < MAX_IN_FLIGHT) {
      const p: Promise<void> = once(values.host, port, timeout, seq).then((line) => {
        process.stdout.write(`${JSON.stringify(line)}\n`);
        inFlight.delete(p);
      });
      inFlight.add(p);
    }
    const wait = interval - (Date.now() - started);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  await Promise.all(inFlight);
  process.stdout.write('{"event":"done"}\n');
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolvePath(process.argv[1])).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`probe-client: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
