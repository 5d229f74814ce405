// bench/tlsprobe.ts: a small TLS tool bench/crossnode.ts runs inside lab namespaces to prove
// that the peer tunnels (HAProxy, stunnel4) do what the benchmark claims: TLS 1.3 only, and
// certificates verified both ways. node: builtins only; every wait is bounded; never retries.
//
//   node tlsprobe.js client --host H --port P --ca FILE [--cert FILE --key FILE]
//                           [--max-version TLSv1.2] [--timeout-ms 5000]
//       Connects with TLS (the server's certificate must chain to --ca and name H), sends 64
//       bytes, waits for them to come back. Prints one JSON line: whether the bytes came back
//       (`echoed`), the protocol, cipher and peer subject, or the error. Exit 0 either way.
//   node tlsprobe.js server --host H --port P --cert FILE --key FILE
//       A TLS echo server that asks for a client certificate but accepts anyone: the "wrong
//       server" a verifying client must refuse. Prints {"event":"listening"}; exits on SIGTERM.

import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { parseArgs } from 'node:util';

export interface ProbeResult {
  kind: 'tlsprobe';
  /** Whether the 64 bytes came back through the TLS connection. */
  echoed: boolean;
  /** Whether the TLS handshake completed on our side (TLS 1.3: before the server's verdict). */
  handshake: boolean;
  protocol?: string;
  cipher?: string;
  peerSubject?: string;
  error?: string;
}

function fail(msg: string): never {
  process.stderr.write(`tlsprobe: ${msg}\n`);
  process.exit(2);
}

function probe(opts: {
  host: string;
  port: number;
  ca: Buffer;
  cert?: Buffer;
  key?: Buffer;
  maxVersion?: tls.SecureVersion;
  timeoutMs: number;
}): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const payload = Buffer.alloc(64, 0x70);
    const result: ProbeResult = { kind: 'tlsprobe', echoed: false, handshake: false };
    let got = 0;
    let settled = false;
    const sock = tls.connect({
      host: opts.host,
      port: opts.port,
      ca: opts.ca,
      ...(opts.cert && opts.key ? { cert: opts.cert, key: opts.key } : {}),
      ...(opts.maxVersion ? { maxVersion: opts.maxVersion } : {}),
      rejectUnauthorized: true,
    });
    const finish = (error?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (error && !result.echoed) result.error = error;
      resolve(result);
    };
    const timer = setTimeout(() => finish(`timeout after ${opts.timeoutMs} ms`), opts.timeoutMs);
    sock.on('secureConnect', () => {
      result.handshake = true;
      result.protocol = sock.getProtocol() ?? undefined;
      result.cipher = sock.getCipher()?.standardName;
      const subject = sock.getPeerCertificate()?.subject;
      result.peerSubject = subject ? `CN=${String(subject.CN)}` : undefined;
      sock.write(payload);
    });
    sock.on('data', (chunk: Buffer) => {
      got += chunk.length;
      if (got >= payload.length) {
        result.echoed = got === payload.length;
        finish(result.echoed ? undefined : `got ${got} bytes`);
      }
    });
    sock.on('error', (e: NodeJS.ErrnoException) => finish(`${e.code ?? ''} ${e.message}`.trim()));
    sock.on('close', () => finish('closed before the echo'));
  });
}

function serve(host: string, port: number, cert: Buffer, key: Buffer): void {
  const sockets = new Set<net.Socket>();
  const server = tls.createServer(
    { cert, key, requestCert: true, rejectUnauthorized: false },
    (sock) => {
      sockets.add(sock);
      sock.setTimeout(30_000, () => sock.destroy());
      sock.on('data', (chunk: Buffer) => sock.write(chunk));
      sock.on('end', () => sock.end());
      sock.on('error', () => sock.destroy());
      sock.on('close', () => sockets.delete(sock));
    },
  );
  server.on('tlsClientError', () => {});
  server.on('error', (e) => fail(`listen ${host}:${port}: ${e.message}`));
  server.listen({ host, port }, () => {
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

async function main(): Promise<void> {
  const [cmd, ...rest] = process.argv.slice(2);
  const { values } = parseArgs({
    args: rest,
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      ca: { type: 'string' },
      cert: { type: 'string' },
      key: { type: 'string' },
      'max-version': { type: 'string' },
      'timeout-ms': { type: 'string' },
    },
  });
  const host = values.host ?? fail('--host is required');
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) fail('--port must be 1..65535');
  const read = (f: string | undefined) => (f === undefined ? undefined : readFileSync(f));
  if (cmd === 'server') {
    const cert = read(values.cert) ?? fail('--cert is required');
    const key = read(values.key) ?? fail('--key is required');
    serve(host, port, cert, key);
    return;
  }
  if (cmd !== 'client') fail(`unknown command ${JSON.stringify(cmd)}: want client or server`);
  const timeoutMs = Number(values['timeout-ms'] ?? 5000);
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 60_000) {
    fail('--timeout-ms must be 1..60000');
  }
  const maxVersion = values['max-version'];
  if (maxVersion !== undefined && !['TLSv1.2', 'TLSv1.3'].includes(maxVersion)) {
    fail('--max-version takes TLSv1.2 or TLSv1.3');
  }
  const cert = read(values.cert);
  const key = read(values.key);
  const r = await probe({
    host,
    port,
    ca: read(values.ca) ?? fail('--ca is required'),
    ...(cert && key ? { cert, key } : {}),
    ...(maxVersion ? { maxVersion: maxVersion as tls.SecureVersion } : {}),
    timeoutMs,
  });
  process.stdout.write(JSON.stringify(r) + '\n');
}

void main();
