// bench/lean-hbone.ts: what would a leaner HBONE cost? Moves LEAN_BYTES (default 1 GiB) one way
// through a cross-node tunnel between two processes and reports the CPU-seconds per GB of both
// tunnel processes (utime + stime from /proc/<pid>/stat) and Gbit/s, for:
//   tls     bare TLS 1.3 pipe (mutual auth, AES-128-GCM first): the floor;
//   h2      node:http2 CONNECT over that TLS, weft's settings (src/proxy/hbone/protocol.ts);
//   lean    a minimal HTTP/2 CONNECT framer written below, 16 KiB frames (the RFC default);
//   lean64  the same with SETTINGS_MAX_FRAME_SIZE 64 KiB advertised by both ends.
// Interleaved (tls h2 lean lean64, x3 rounds); medians and min-max. Run as root:
//   node dist/bench/lean-hbone.js            (LEAN_BYTES, LEAN_VARIANTS=tls,h2,lean to narrow)
// Topology: a 2-node lab; the tunnel client runs in node-0's netns, the server in node-1's, the
// sender in the pod of node-0 (connects to <node-0 IP>:front port), the sink in the pod of node-1.
// The same file is the child processes (`lean-hbone.js child <role> <json>`).
//
// The lean framer only talks to itself. A production version would add: a full HPACK decoder
// (Huffman, dynamic table, CONTINUATION) for ztunnel / python-h2 peers, PING (sending, for
// keepalive), GOAWAY and RST_STREAM (sending and acting on them), many concurrent streams per
// connection (stream ids, MAX_CONCURRENT_STREAMS, per-stream windows and a fair scheduler),
// enforcing the receive windows (FLOW_CONTROL_ERROR), frame and header-list size limits,
// SETTINGS timeouts, and the HBONE headers (forwarded, baggage) and their validation.

import { mkdtemp, rm } from 'node:fs/promises';
import http2 from 'node:http2';
import net, { type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import tls, { type TLSSocket } from 'node:tls';
import { Lab, type LabProcess } from '../src/lab/cluster.js';
import { waitFor } from '../src/lab/proc.js';
import { makePki } from './peers.js';
import { clkTck, processTicks } from './procfs.js';

const SELF = fileURLToPath(import.meta.url);

// weft's values (src/proxy/hbone/protocol.ts), repeated so the children need no weft import.
const CIPHERSUITES = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';
const STREAM_WINDOW = 4 * 1024 * 1024;
const CONN_WINDOW = 16 * 1024 * 1024;
const SESSION_MEMORY_MB = 64;
const MAX_HEADER_LIST = 64 * 1024;

type Variant = 'tls' | 'h2' | 'lean' | 'lean64';
const ALL_VARIANTS: readonly Variant[] = ['tls', 'h2', 'lean', 'lean64'];

interface TunnelConfig {
  variant: Variant;
  listenIp: string;
  listenPort: number;
  /** client: the server end's address; server: unused. */
  peerIp: string;
  peerPort: number;
  /** client: the CONNECT authority / (tls) where the server relays to. */
  targetIp: string;
  targetPort: number;
  peerName: string;
  ca: string;
  cert: string;
  key: string;
}

function tlsOptions(c: TunnelConfig): tls.SecureContextOptions & tls.CommonConnectionOptions {
  return {
    ca: readFileSync(c.ca),
    cert: readFileSync(c.cert),
    key: readFileSync(c.key),
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    ciphers: CIPHERSUITES,
    honorCipherOrder: true,
    ALPNProtocols: ['h2'],
  };
}

function say(obj: object): void {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

/** Relays a and b into each other (stream pipes: what weft's own relay amounts to). */
function pipeBoth(a: Duplex, b: Duplex): void {
  a.pipe(b);
  b.pipe(a);
  const kill = () => {
    a.destroy();
    b.destroy();
  };
  a.on('error', kill);
  b.on('error', kill);
}

// ---------------------------------------------------------------------------------------------
// Lean HTTP/2 CONNECT (RFC 9113 frames, RFC 7541 HPACK subset). One stream (id 1) per TLS
// connection; talks to itself only (see the header comment for what production would add).
// LEAN-BEGIN
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const DATA = 0x0;
const HEADERS = 0x1;
const RST_STREAM = 0x3;
const SETTINGS = 0x4;
const PING = 0x6;
const GOAWAY = 0x7;
const WINDOW_UPDATE = 0x8;
const END_STREAM = 0x1; // also SETTINGS/PING ACK
const END_HEADERS = 0x4;
const PADDED = 0x8;
const PRIORITY = 0x20;
const SID = 1;
const DEFAULT_WINDOW = 65_535;
const EMPTY = Buffer.alloc(0);

function frameHead(len: number, type: number, flags: number, sid: number): Buffer {
  const h = Buffer.allocUnsafe(9); // from Node's shared pool: no syscall, no zeroing
  h.writeUIntBE(len, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(sid, 5);
  return h;
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n, 0);
  return b;
}

/** HPACK integer with an N-bit prefix; `first` holds the pattern bits above the prefix. */
function hpackInt(out: number[], n: number, bits: number, first: number): void {
  const max = (1 << bits) - 1;
  if (n < max) return void out.push(first | n);
  out.push(first | max);
  for (n -= max; n >= 128; n >>>= 7) out.push((n & 127) | 128);
  out.push(n);
}

/** Literal header fields without indexing, indexed name (static table), no Huffman. */
function encodeHeaders(fields: ReadonlyArray<readonly [number, string]>): Buffer {
  const out: number[] = [];
  for (const [nameIndex, value] of fields) {
    hpackInt(out, nameIndex, 4, 0x00);
    const v = Buffer.from(value, 'latin1');
    hpackInt(out, v.length, 7, 0x00);
    out.push(...v);
  }
  return Buffer.from(out);
}

const STATIC: ReadonlyArray<readonly [string, string]> = [
  ['', ''],
  [':authority', ''],
  [':method', 'GET'],
  [':method', 'POST'],
  [':path', '/'],
  [':path', '/index.html'],
  [':scheme', 'http'],
  [':scheme', 'https'],
  [':status', '200'],
  [':status', '204'],
  [':status', '206'],
  [':status', '304'],
  [':status', '400'],
  [':status', '404'],
  [':status', '500'],
];

/** Decodes the subset we emit (and static-indexed fields 1-14); throws on the rest. */
function decodeHeaders(b: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  const int = (bits: number): number => {
    const max = (1 << bits) - 1;
    let n = b[i++]! & max;
    if (n < max) return n;
    for (let shift = 0; shift < 28; shift += 7) {
      const c = b[i++];
      if (c === undefined) throw new Error('hpack: truncated integer');
      n += (c & 127) * 2 ** shift;
      if (c < 128) return n;
    }
    throw new Error('hpack: integer too long');
  };
  const str = (): string => {
    if (b[i]! & 0x80) throw new Error('hpack: Huffman strings not supported by the lean decoder');
    const len = int(7);
    if (i + len > b.length) throw new Error('hpack: truncated string');
    i += len;
    return b.toString('latin1', i - len, i);
  };
  const name = (idx: number): string => {
    const e = STATIC[idx];
    if (idx === 0 || !e) throw new Error(`hpack: index ${idx} outside the lean static subset`);
    return e[0];
  };
  while (i < b.length) {
    const c = b[i]!;
    if (c & 0x80) {
      const idx = int(7);
      out.set(name(idx), STATIC[idx]![1]);
    } else if (c & 0x40) {
      throw new Error('hpack: incremental indexing (dynamic table) not supported');
    } else if (c & 0x20) {
      int(5); // dynamic table size update: we keep no table
    } else {
      const idx = int(4);
      const n = idx === 0 ? str() : name(idx);
      out.set(n, str());
    }
  }
  return out;
}

/** One TLS connection carrying one CONNECT stream, either end. */
class LeanTunnel {
  private plain: Socket | null = null;
  private early: Buffer[] = [];
  private sendConn = DEFAULT_WINDOW;
  private sendStream = DEFAULT_WINDOW;
  private peerInitial = DEFAULT_WINDOW;
  private peerMaxFrame = 16_384;
  private recvConnUnacked = 0;
  private recvStreamUnacked = 0;
  private uncredited = 0;
  private queue: Buffer[] = [];
  private srcEnded = false;
  private endSent = false;
  private recvEnded = false;
  // frame reader state
  private prefaceLeft: number;
  private readonly head = Buffer.alloc(9);
  private headFill = 0;
  private need = 0;
  private type = 0;
  private flags = 0;
  private sid = 0;
  private streaming = false;
  private parts: Buffer[] = [];

  constructor(
    private readonly tls: TLSSocket,
    server: boolean,
    frameSize: number,
    private readonly onHeaders: (h: Map<string, string>, t: LeanTunnel) => void,
  ) {
    this.prefaceLeft = server ? PREFACE.length : 0;
    tls.setNoDelay(true); // small control frames (WINDOW_UPDATE) must not wait for ACKs
    // id 4 INITIAL_WINDOW_SIZE; id 2 ENABLE_PUSH = 0 (client only); id 5 MAX_FRAME_SIZE if raised
    const s = Buffer.concat([
      Buffer.from([0, 4]),
      u32(STREAM_WINDOW),
      ...(server ? [] : [Buffer.from([0, 2, 0, 0, 0, 0])]),
      ...(frameSize > 16_384 ? [Buffer.from([0, 5]), u32(frameSize)] : []),
    ]);
    tls.cork();
    if (!server) tls.write(PREFACE);
    tls.write(frameHead(s.length, SETTINGS, 0, 0));
    tls.write(s);
    tls.write(frameHead(4, WINDOW_UPDATE, 0, 0));
    tls.write(u32(CONN_WINDOW - DEFAULT_WINDOW));
    tls.uncork();
    tls.on('data', (chunk: Buffer) => this.read(chunk));
    tls.on('drain', () => this.flush());
    tls.on('error', () => this.abort());
    tls.on('close', () => this.abort());
  }

  sendHeaders(fields: ReadonlyArray<readonly [number, string]>): void {
    const block = encodeHeaders(fields);
    this.tls.write(Buffer.concat([frameHead(block.length, HEADERS, END_HEADERS, SID), block]));
  }

  /** Starts relaying the stream against `plain` (after the CONNECT exchange). */
  attach(plain: Socket): void {
    this.plain = plain;
    plain.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.flush();
    });
    plain.on('end', () => {
      this.srcEnded = true;
      this.flush();
    });
    plain.on('drain', () => this.credit(0));
    plain.on('error', () => this.abort());
    plain.on('close', () => this.abort());
    for (const b of this.early.splice(0)) this.deliver(b);
    if (this.recvEnded) plain.end();
    plain.resume();
  }

  abort(): void {
    if (this.plain && !this.plain.destroyed && !(this.recvEnded && this.endSent)) {
      this.plain.destroy();
    }
    if (!this.tls.destroyed && !(this.recvEnded && this.endSent)) this.tls.destroy();
  }

  /** Sends queued plaintext as DATA frames as far as both send windows allow. */
  private flush(): void {
    const q = this.queue;
    let n = 0;
    this.tls.cork();
    while (n < q.length) {
      const win = Math.min(this.sendConn, this.sendStream, this.peerMaxFrame);
      if (win <= 0) break;
      const c = q[n]!;
      const take = Math.min(win, c.length);
      this.tls.write(frameHead(take, DATA, 0, SID));
      this.tls.write(take === c.length ? c : c.subarray(0, take));
      this.sendConn -= take;
      this.sendStream -= take;
      if (take === c.length) n++;
      else q[n] = c.subarray(take);
    }
    if (n > 0) q.splice(0, n);
    if (q.length === 0 && this.srcEnded && !this.endSent) {
      this.endSent = true;
      this.tls.write(frameHead(0, DATA, END_STREAM, SID));
      if (this.recvEnded) this.tls.end();
    }
    this.tls.uncork();
    if (!this.plain) return;
    if (q.length > 0 || this.tls.writableNeedDrain) this.plain.pause();
    else if (!this.srcEnded && this.plain.isPaused()) this.plain.resume();
  }

  /** Parses frames out of a TLS chunk; DATA payloads are passed on as slices of it. */
  private read(chunk: Buffer): void {
    let off = 0;
    if (this.prefaceLeft > 0) {
      const take = Math.min(this.prefaceLeft, chunk.length);
      const at = PREFACE.length - this.prefaceLeft;
      if (!chunk.subarray(0, take).equals(PREFACE.subarray(at, at + take))) return this.abort();
      this.prefaceLeft -= take;
      off = take;
    }
    while (off < chunk.length) {
      if (this.headFill < 9) {
        const take = Math.min(9 - this.headFill, chunk.length - off);
        chunk.copy(this.head, this.headFill, off, off + take);
        this.headFill += take;
        off += take;
        if (this.headFill < 9) return;
        const h = this.head;
        this.need = h.readUIntBE(0, 3);
        this.type = h[3]!;
        this.flags = h[4]!;
        this.sid = h.readUInt32BE(5) & 0x7fff_ffff;
        this.streaming = this.type === DATA && !(this.flags & PADDED);
        if (this.need === 0) this.frameDone(EMPTY);
        continue;
      }
      const take = Math.min(this.need, chunk.length - off);
      const piece = chunk.subarray(off, off + take);
      off += take;
      this.need -= take;
      if (!this.streaming) this.parts.push(piece);
      else if (take > 0) this.deliver(piece);
      if (this.need === 0) {
        const p = this.parts;
        this.parts = [];
        this.frameDone(p.length === 0 ? EMPTY : p.length === 1 ? p[0]! : Buffer.concat(p));
      }
    }
  }

  private deliver(piece: Buffer, flowBytes = piece.length): void {
    if (!this.plain) return void this.early.push(piece);
    if (this.plain.write(piece)) this.credit(flowBytes);
    else this.uncredited += flowBytes;
  }

  /** Returns consumed bytes to the sender: WINDOW_UPDATE once half a window is used. */
  private credit(n: number): void {
    if (this.plain?.writableNeedDrain) return void (this.uncredited += n);
    n += this.uncredited;
    this.uncredited = 0;
    this.recvStreamUnacked += n;
    this.recvConnUnacked += n;
    if (this.recvStreamUnacked >= STREAM_WINDOW / 2 && !this.recvEnded) {
      this.tls.write(frameHead(4, WINDOW_UPDATE, 0, SID));
      this.tls.write(u32(this.recvStreamUnacked));
      this.recvStreamUnacked = 0;
    }
    if (this.recvConnUnacked >= CONN_WINDOW / 2) {
      this.tls.write(frameHead(4, WINDOW_UPDATE, 0, 0));
      this.tls.write(u32(this.recvConnUnacked));
      this.recvConnUnacked = 0;
    }
  }

  private frameDone(p: Buffer): void {
    const { type, flags } = this;
    this.headFill = 0;
    if (type === DATA) {
      if (!this.streaming) {
        const d = p.subarray(1, p.length - p[0]!); // PADDED: pad length, data, padding
        if (d.length > 0)
          this.deliver(d, p.length); // flow control counts the padding too
        else this.credit(p.length);
      }
      if (flags & END_STREAM) {
        this.recvEnded = true;
        this.plain?.end();
        if (this.endSent) this.tls.end();
      }
    } else if (type === HEADERS) {
      if (!(flags & END_HEADERS)) return this.abort(); // CONTINUATION: not supported
      let start = 0;
      let end = p.length;
      if (flags & PADDED) end -= p[start++]!;
      if (flags & PRIORITY) start += 5;
      let h: Map<string, string>;
      try {
        h = decodeHeaders(p.subarray(start, end));
      } catch {
        return this.abort(); // production: GOAWAY COMPRESSION_ERROR
      }
      this.onHeaders(h, this);
    } else if (type === SETTINGS && !(flags & END_STREAM)) {
      for (let i = 0; i + 6 <= p.length; i += 6) {
        const id = p.readUInt16BE(i);
        const v = p.readUInt32BE(i + 2);
        if (id === 4) {
          this.sendStream += v - this.peerInitial;
          this.peerInitial = v;
        } else if (id === 5) this.peerMaxFrame = v;
      }
      this.tls.write(frameHead(0, SETTINGS, END_STREAM, 0));
      this.flush();
    } else if (type === WINDOW_UPDATE) {
      const inc = p.readUInt32BE(0) & 0x7fff_ffff;
      if (this.sid === 0) this.sendConn += inc;
      else this.sendStream += inc;
      this.flush();
    } else if (type === PING && !(flags & END_STREAM)) {
      this.tls.write(Buffer.concat([frameHead(8, PING, END_STREAM, 0), p]));
    } else if (type === RST_STREAM || type === GOAWAY) {
      this.abort();
    } // PRIORITY, PUSH_PROMISE (never sent to us: ENABLE_PUSH 0), unknown types: ignored
  }
}
// LEAN-END

function leanClient(c: TunnelConfig, frameSize: number): void {
  const opts = tlsOptions(c);
  net
    .createServer({ allowHalfOpen: true, pauseOnConnect: true }, (plain) => {
      plain.on('error', () => plain.destroy());
      const t = tls.connect({ ...opts, host: c.peerIp, port: c.peerPort, servername: c.peerName });
      t.setNoDelay(true); // as weft does (src/proxy/hbone/client.ts)
      plain.setNoDelay(true);
      t.on('error', () => plain.destroy());
      t.once('secureConnect', () => {
        reportTls(t);
        new LeanTunnel(t, false, frameSize, (h, tunnel) => {
          if (h.get(':status') === '200') tunnel.attach(plain);
          else tunnel.abort();
        }).sendHeaders([
          [2, 'CONNECT'],
          [1, `${c.targetIp}:${c.targetPort}`],
        ]);
      });
    })
    .listen(c.listenPort, c.listenIp, () => say({ event: 'ready' }));
}

function leanServer(c: TunnelConfig, frameSize: number): void {
  tlsServer(c, (t) => {
    new LeanTunnel(t, true, frameSize, (h, tunnel) => {
      const [ip, port] = splitAuthority(h.get(':authority'));
      if (h.get(':method') !== 'CONNECT' || !ip) return tunnel.abort();
      const up = net.connect({ host: ip, port, allowHalfOpen: true, noDelay: true });
      up.on('error', () => tunnel.abort());
      up.once('connect', () => {
        tunnel.sendHeaders([[8, '200']]);
        tunnel.attach(up);
      });
    });
  });
}

function splitAuthority(a: string | undefined): [string | undefined, number] {
  const i = a?.lastIndexOf(':') ?? -1;
  return a && i > 0 ? [a.slice(0, i), Number(a.slice(i + 1))] : [undefined, 0];
}

let reported = false;
function reportTls(t: TLSSocket): void {
  if (reported) return;
  reported = true;
  say({
    event: 'tls',
    protocol: t.getProtocol(),
    cipher: t.getCipher().standardName,
    alpn: t.alpnProtocol,
    authorized: t.authorized,
  });
}

/** TLS server demanding a client certificate from our CA naming node-0. */
function tlsServer(c: TunnelConfig, onConn: (t: TLSSocket) => void): void {
  tls
    .createServer({ ...tlsOptions(c), requestCert: true, rejectUnauthorized: true }, (t) => {
      t.setNoDelay(true);
      if (!t.authorized || t.getPeerCertificate().subject?.CN !== c.peerName) return t.destroy();
      t.on('error', () => t.destroy());
      onConn(t);
    })
    .listen(c.listenPort, c.listenIp, () => say({ event: 'ready' }));
}

function tlsClient(c: TunnelConfig): void {
  const opts = tlsOptions(c);
  net
    .createServer({ allowHalfOpen: true, pauseOnConnect: true }, (plain) => {
      const t = tls.connect({ ...opts, host: c.peerIp, port: c.peerPort, servername: c.peerName });
      t.setNoDelay(true); // as weft does (src/proxy/hbone/client.ts)
      plain.setNoDelay(true);
      t.once('secureConnect', () => {
        reportTls(t);
        pipeBoth(plain, t);
        plain.resume();
      });
      t.on('error', () => plain.destroy());
    })
    .listen(c.listenPort, c.listenIp, () => say({ event: 'ready' }));
}

function tlsRelayServer(c: TunnelConfig): void {
  tlsServer(c, (t) => {
    t.pause();
    const up = net.connect({
      host: c.targetIp,
      port: c.targetPort,
      allowHalfOpen: true,
      noDelay: true,
    });
    up.on('error', () => t.destroy());
    up.once('connect', () => {
      pipeBoth(t, up);
      t.resume();
    });
  });
}

function h2Client(c: TunnelConfig): void {
  const opts = tlsOptions(c);
  net
    .createServer({ allowHalfOpen: true, pauseOnConnect: true }, (plain) => {
      plain.on('error', () => plain.destroy());
      const t = tls.connect({ ...opts, host: c.peerIp, port: c.peerPort, servername: c.peerName });
      t.setNoDelay(true); // as weft does (src/proxy/hbone/client.ts)
      plain.setNoDelay(true);
      t.on('error', () => plain.destroy());
      t.once('secureConnect', () => {
        reportTls(t);
        const session = http2.connect(`https://${c.peerIp}:${c.peerPort}`, {
          createConnection: () => t,
          maxSessionMemory: SESSION_MEMORY_MB,
          settings: {
            initialWindowSize: STREAM_WINDOW,
            maxHeaderListSize: MAX_HEADER_LIST,
            enablePush: false,
          },
        });
        session.on('error', () => plain.destroy());
        session.setLocalWindowSize(CONN_WINDOW);
        const req = session.request({
          ':method': 'CONNECT',
          ':authority': `${c.targetIp}:${c.targetPort}`,
        });
        req.on('response', (h) => {
          if (h[':status'] !== 200) return void req.close();
          pipeBoth(plain, req);
          plain.resume();
        });
        req.on('error', () => plain.destroy());
        req.on('close', () => session.close());
      });
    })
    .listen(c.listenPort, c.listenIp, () => say({ event: 'ready' }));
}

function h2Server(c: TunnelConfig): void {
  const server = http2.createSecureServer({
    ...tlsOptions(c),
    requestCert: true,
    rejectUnauthorized: true,
    maxSessionMemory: SESSION_MEMORY_MB,
    settings: {
      initialWindowSize: STREAM_WINDOW,
      maxConcurrentStreams: 200,
      maxHeaderListSize: MAX_HEADER_LIST,
      enablePush: false,
    },
  });
  server.on('secureConnection', (t: TLSSocket) => t.setNoDelay(true));
  server.on('session', (s) => {
    const t = s.socket as TLSSocket;
    if (!t.authorized || t.getPeerCertificate().subject?.CN !== c.peerName) return s.destroy();
    s.setLocalWindowSize(CONN_WINDOW);
    s.on('error', () => s.destroy());
  });
  server.on('stream', (stream, h) => {
    const [ip, port] = splitAuthority(h[':authority']);
    if (h[':method'] !== 'CONNECT' || !ip)
      return void stream.close(http2.constants.NGHTTP2_CONNECT_ERROR);
    const up = net.connect({ host: ip, port, allowHalfOpen: true, noDelay: true });
    up.on('error', () => stream.close(http2.constants.NGHTTP2_CONNECT_ERROR));
    up.once('connect', () => {
      stream.respond({ ':status': 200 });
      pipeBoth(stream, up);
    });
  });
  server.listen(c.listenPort, c.listenIp, () => say({ event: 'ready' }));
}

// ---------------------------------------------------------------------------------------------
// Load: a sink (pod on node-1) and a sender (pod on node-0).

function sink(cfg: { ip: string; port: number }): void {
  let seq = 0;
  net
    .createServer({ allowHalfOpen: true }, (s) => {
      const id = ++seq;
      let bytes = 0;
      let t0 = 0n;
      s.on('data', (c: Buffer) => {
        if (bytes === 0) t0 = process.hrtime.bigint();
        bytes += c.length;
      });
      s.on('end', () => {
        say({ event: 'done', seq: id, bytes, ns: Number(process.hrtime.bigint() - t0) });
        s.end();
      });
      s.on('error', () => s.destroy());
    })
    .listen(cfg.port, cfg.ip, () => say({ event: 'ready' }));
}

function sender(cfg: { ip: string; port: number; bytes: number }): void {
  const buf = Buffer.alloc(256 * 1024, 0x5a);
  let sent = 0;
  const s = net.connect({ host: cfg.ip, port: cfg.port, allowHalfOpen: true });
  setTimeout(() => {
    process.stderr.write('sender: timed out\n');
    process.exit(1);
  }, 90_000).unref();
  const pump = () => {
    while (sent < cfg.bytes) {
      const n = Math.min(buf.length, cfg.bytes - sent);
      sent += n;
      if (!s.write(n === buf.length ? buf : buf.subarray(0, n))) return void s.once('drain', pump);
    }
    s.end();
  };
  s.once('connect', pump);
  s.on('data', () => {});
  s.on('end', () => s.end());
  s.on('close', () => process.exit(0));
  s.on('error', (e) => {
    process.stderr.write(`sender: ${e.message}\n`);
    process.exit(1);
  });
}

function child(role: string, json: string): void {
  const cfg: unknown = JSON.parse(json);
  if (role === 'sink') return sink(cfg as { ip: string; port: number });
  if (role === 'send') return sender(cfg as { ip: string; port: number; bytes: number });
  const c = cfg as TunnelConfig;
  const client = role === 'client';
  if (c.variant === 'tls') return client ? tlsClient(c) : tlsRelayServer(c);
  if (c.variant === 'h2') return client ? h2Client(c) : h2Server(c);
  const frame = c.variant === 'lean64' ? 65_536 : 16_384;
  return client ? leanClient(c, frame) : leanServer(c, frame);
}

// ---------------------------------------------------------------------------------------------
// Orchestration.

interface Sample {
  variant: Variant;
  round: number;
  bytes: number;
  seconds: number;
  gbitPerS: number;
  cpuS: number;
  clientCpuS: number;
  serverCpuS: number;
  cpuSPerGB: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function main(): Promise<void> {
  const started = Date.now();
  const deadline = started + 225_000;
  const bytes = Number(process.env.LEAN_BYTES ?? 1024 ** 3);
  const variants = (process.env.LEAN_VARIANTS?.split(',') ?? ALL_VARIANTS) as Variant[];
  const rounds = 3;
  if (!(bytes > 0 && bytes <= 4e9)) throw new Error('LEAN_BYTES must be in (0, 4e9]');
  for (const v of variants) if (!ALL_VARIANTS.includes(v)) throw new Error(`variant ${v}?`);
  const tck = clkTck();
  const tmp = await mkdtemp(join(tmpdir(), 'weft-lean-hbone-'));
  const procs: LabProcess[] = [];
  let lab: Lab | undefined;
  const samples: Sample[] = [];
  const tlsInfo: Record<string, unknown> = {};
  try {
    lab = await Lab.create({ nodes: 2, podsPerNode: [1, 1] });
    const [n0, n1] = [lab.nodes[0]!, lab.nodes[1]!];
    const pod0 = lab.pods.find((p) => p.node.index === 0)!;
    const pod1 = lab.pods.find((p) => p.node.index === 1)!;
    const pki = await makePki(join(tmp, 'pki'), n0, n1);
    const start = async (netns: string, role: string, cfg: object) => {
      const p = lab!.spawn(netns, [process.execPath, SELF, 'child', role, JSON.stringify(cfg)]);
      procs.push(p);
      await p.waitForLine((l) => l.includes('"ready"'), 10_000);
      return p;
    };
    const SINK_PORT = 5201;
    const sinkProc = await start(pod1.netns, 'sink', { ip: pod1.ip, port: SINK_PORT });
    const pairs = new Map<Variant, { front: number; client: LabProcess; server: LabProcess }>();
    for (const [i, variant] of variants.entries()) {
      const base = {
        variant,
        ca: pki.ca,
        targetIp: pod1.ip,
        targetPort: SINK_PORT,
        peerIp: n1.ip,
        peerPort: 16_000 + i,
      };
      const server = await start(n1.netns, 'server', {
        ...base,
        listenIp: n1.ip,
        listenPort: 16_000 + i,
        peerName: n0.name,
        cert: pki.node1.crt,
        key: pki.node1.key,
      });
      const client = await start(n0.netns, 'client', {
        ...base,
        listenIp: n0.ip,
        listenPort: 17_000 + i,
        peerName: n1.name,
        cert: pki.node0.crt,
        key: pki.node0.key,
      });
      for (const p of [client, server]) {
        const exe = readFileSync(`/proc/${p.pid}/cmdline`, 'utf8').split('\0')[0];
        if (exe !== process.execPath) throw new Error(`pid ${p.pid} is ${exe}, not node`);
      }
      pairs.set(variant, { front: 17_000 + i, client, server });
    }
    let seq = 0;
    let lastRunMs = 0;
    for (let round = 1; round <= rounds; round++) {
      for (const variant of variants) {
        if (Date.now() + lastRunMs * 1.5 > deadline) {
          process.stderr.write(`time budget reached: skipping ${variant} round ${round}\n`);
          continue;
        }
        const t0 = Date.now();
        const pair = pairs.get(variant)!;
        const want = ++seq;
        const pids = [pair.client.pid, pair.server.pid];
        const before = pids.map(processTicks);
        const send = lab.spawn(pod0.netns, [
          process.execPath,
          SELF,
          'child',
          'send',
          JSON.stringify({ ip: n0.ip, port: pair.front, bytes }),
        ]);
        procs.push(send);
        const line = await sinkProc.waitForLine((l) => l.includes(`"seq":${want},`), 60_000);
        const after = pids.map(processTicks);
        if (!(await waitFor(send.exited, 10_000))) await send.stop('SIGKILL', 1000);
        const done = JSON.parse(line) as { bytes: number; ns: number };
        if (done.bytes !== bytes) throw new Error(`${variant}: sink got ${done.bytes} of ${bytes}`);
        const [cc, sc] = [0, 1].map((k) => (after[k]! - before[k]!) / tck) as [number, number];
        const s: Sample = {
          variant,
          round,
          bytes,
          seconds: done.ns / 1e9,
          gbitPerS: (bytes * 8) / done.ns,
          cpuS: cc + sc,
          clientCpuS: cc,
          serverCpuS: sc,
          cpuSPerGB: (cc + sc) / (bytes / 1e9),
        };
        samples.push(s);
        const tlsLine = pair.client.lines.find((l) => l.includes('"tls"'));
        if (tlsLine) tlsInfo[variant] = JSON.parse(tlsLine);
        process.stderr.write(
          `round ${round} ${variant}: ${s.gbitPerS.toFixed(2)} Gbit/s, ` +
            `${s.cpuSPerGB.toFixed(2)} CPU-s/GB (client ${cc.toFixed(2)} s, server ${sc.toFixed(2)} s)\n`,
        );
        lastRunMs = Math.max(lastRunMs, Date.now() - t0);
      }
    }
  } finally {
    for (const p of procs.reverse()) await p.stop('SIGTERM', 2000);
    await lab?.destroy();
    await rm(tmp, { recursive: true, force: true });
  }
  report(samples, variants, tlsInfo, bytes, Date.now() - started);
}

function report(
  samples: Sample[],
  variants: readonly Variant[],
  tlsInfo: Record<string, unknown>,
  bytes: number,
  wallMs: number,
): void {
  const label: Record<Variant, string> = {
    tls: '(a) bare TLS 1.3 pipe',
    h2: '(b) node:http2 CONNECT',
    lean: '(c) lean h2 CONNECT, 16 KiB frames',
    lean64: '(d) lean h2 CONNECT, 64 KiB frames',
  };
  const stat = (v: Variant, k: keyof Sample) => {
    const xs = samples.filter((s) => s.variant === v).map((s) => s[k] as number);
    return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs), n: xs.length };
  };
  const base = stat('tls', 'cpuSPerGB').median;
  const rows = variants.map((v) => ({
    variant: v,
    cpuSPerGB: stat(v, 'cpuSPerGB'),
    gbitPerS: stat(v, 'gbitPerS'),
    clientCpuSPerGB:
      median(samples.filter((s) => s.variant === v).map((s) => s.clientCpuS)) / (bytes / 1e9),
    serverCpuSPerGB:
      median(samples.filter((s) => s.variant === v).map((s) => s.serverCpuS)) / (bytes / 1e9),
    ratioToTls: stat(v, 'cpuSPerGB').median / base,
  }));
  const f = (x: number) => x.toFixed(2);
  const lines = [
    `${(bytes / 1e9).toFixed(2)} GB one way per run, ${Math.max(...rows.map((r) => r.cpuSPerGB.n))} rounds interleaved; medians (min-max)`,
    '',
    '| variant | CPU-s/GB (both tunnel procs) | ratio to (a) | client / server CPU-s/GB | Gbit/s |',
    '|---|---|---|---|---|',
    ...rows.map(
      (r) =>
        `| ${label[r.variant]} | ${f(r.cpuSPerGB.median)} (${f(r.cpuSPerGB.min)}-${f(r.cpuSPerGB.max)}) | ` +
        `${f(r.ratioToTls)} | ${f(r.clientCpuSPerGB)} / ${f(r.serverCpuSPerGB)} | ` +
        `${f(r.gbitPerS.median)} (${f(r.gbitPerS.min)}-${f(r.gbitPerS.max)}) |`,
    ),
  ];
  console.log(lines.join('\n'));
  console.log(JSON.stringify({ bytes, wallMs, tls: tlsInfo, rows, samples }, null, 2));
}

if (process.argv[2] === 'child') {
  child(process.argv[3] ?? '', process.argv[4] ?? '{}');
} else {
  main().catch((e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  });
}
