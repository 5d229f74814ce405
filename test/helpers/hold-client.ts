// test/helpers/hold-client.ts: run inside a pod namespace, it keeps ONE TCP connection to an
// echo server open and writes 5 bytes on it every --interval-ms, for at most --duration-ms
// (bounded to 2 min). It prints one JSON line per echo and one when the connection ends:
//
//   {"event":"connected","t":<epoch ms>,"local":"ip:port"}
//   {"event":"echo","t":<epoch ms>,"bytes":5}
//   {"event":"closed","t":<epoch ms>,"error":"ECONNRESET"|null}
//
// so a test can see what happens to a connection that already exists when something changes.
//
//   node dist/test/helpers/hold-client.js --host H --port P [--interval-ms 200]
//        [--duration-ms 60000]
import { connect } from 'node:net';
import { resolve as resolvePath } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

export interface HoldLine {
  event: 'connected' | 'echo' | 'closed';
  t: number;
  local?: string;
  bytes?: number;
  error?: string | null;
}

export function parseHoldLine(line: string): HoldLine | undefined {
  if (!line.startsWith('{"event":')) return undefined;
  try {
    const v = JSON.parse(line) as HoldLine;
    return ['connected', 'echo', 'closed'].includes(v.event) ? v : undefined;
  } catch {
    return undefined;
  }
}

function main(): void {
  const { values } = parseArgs({
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      'interval-ms': { type: 'string' },
      'duration-ms': { type: 'string' },
    },
  });
  const port = Number(values.port);
  const interval = Number(values['interval-ms'] ?? 200);
  const duration = Math.min(Number(values['duration-ms'] ?? 60_000), 120_000);
  if (!values.host || !(port > 0 && port < 65536) || !(interval > 0) || !(duration > 0)) {
    process.stderr.write(
      'usage: hold-client --host H --port P [--interval-ms N] [--duration-ms N]\n',
    );
    process.exit(2);
  }
  const print = (v: HoldLine) => process.stdout.write(`${JSON.stringify(v)}\n`);
  let error: string | null = null;
  let timer: NodeJS.Timeout | undefined;
  const sock = connect({ host: values.host, port });
  sock.on('connect', () => {
    print({ event: 'connected', t: Date.now(), local: `${sock.localAddress}:${sock.localPort}` });
    sock.write('ping\n');
    timer = setInterval(() => sock.write('ping\n'), interval);
  });
  sock.on('data', (chunk: Buffer) => print({ event: 'echo', t: Date.now(), bytes: chunk.length }));
  sock.on('error', (e: NodeJS.ErrnoException) => {
    error ??= e.code ?? e.message;
  });
  sock.on('close', () => {
    clearInterval(timer);
    print({ event: 'closed', t: Date.now(), error });
    process.exit(0);
  });
  const stop = () => sock.destroy();
  setTimeout(stop, duration).unref();
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolvePath(process.argv[1])).href) {
  main();
}
