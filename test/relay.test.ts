// The plaintext relay loops (src/proxy/socket-reader.ts, src/proxy/relay.ts) on loopback:
// exact bytes and counts, data the client sent before the relay took over, half-closes, and
// a bounded amount of buffered data when the receiver stops reading.
import test, { type ExecutionContext } from 'ava';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import net, { type AddressInfo, type Server, type Socket } from 'node:net';
import { relay } from '../src/proxy/relay.js';
import {
  MAX_BYTES_IN_FLIGHT,
  ReadBuffers,
  readSocket,
  type ChunkSink,
} from '../src/proxy/socket-reader.js';

const CHUNK = 64 * 1024;

/** The proxy's read buffers, as one NodeProxy owns them. */
const buffers = new ReadBuffers();
const read = (socket: Socket, sink: ChunkSink) => readSocket(socket, sink, buffers);

/**
 * A connected pair: `client` (ours, the far end) and `accepted` (what the proxy holds), torn
 * down when the test ends.
 */
async function pair(
  t: ExecutionContext,
): Promise<{ client: Socket; accepted: Socket; server: Server }> {
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const acceptedP = once(server, 'connection') as Promise<[Socket]>;
  const client = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  await once(client, 'connect');
  const [accepted] = await acceptedP;
  t.teardown(() => {
    client.destroy();
    accepted.destroy();
    server.close();
  });
  return { client, accepted, server };
}

function sha(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function collect(socket: Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  return new Promise((resolve, reject) => {
    socket.once('end', () => resolve(Buffer.concat(chunks)));
    socket.once('error', reject);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

test('readSocket: data and FIN sent before the takeover come first, then the rest, exactly', async (t) => {
  const { client, accepted } = await pair(t);
  accepted.pause();
  const early = randomBytes(3000);
  const late = randomBytes(5 * CHUNK + 123);
  client.write(early);
  await sleep(50);
  const chunks: Buffer[] = [];
  const ended = once(accepted, 'end');
  const reader = read(accepted, (chunk, release) => {
    // Copy: the chunk's memory is reused once released.
    chunks.push(Buffer.from(chunk));
    release();
  });
  client.end(late);
  await ended;
  const got = Buffer.concat(chunks);
  t.is(got.length, early.length + late.length);
  t.is(sha(got), sha(Buffer.concat([early, late])));
  t.is(reader.bytes, got.length);
});

test('readSocket: a socket that already got its FIN before the takeover still ends', async (t) => {
  const { client, accepted } = await pair(t);
  accepted.pause();
  client.end(Buffer.from('all at once'));
  await sleep(50);
  const chunks: Buffer[] = [];
  const ended = once(accepted, 'end');
  const reader = read(accepted, (chunk, release) => {
    chunks.push(Buffer.from(chunk));
    release();
  });
  await ended;
  t.is(Buffer.concat(chunks).toString(), 'all at once');
  t.is(reader.bytes, 11);
});

test('readSocket: a chunk counts whole, so many small reads cannot pin many chunks', async (t) => {
  const { client, accepted } = await pair(t);
  // 8 KiB messages read one at a time: each takes a 64 KiB chunk. Counted by the bytes read,
  // 32 of them (2 MiB of chunks) would fit under the limit; counted by chunk, only 4 do.
  const held: (() => void)[] = [];
  let bytes = 0;
  read(accepted, (chunk, release) => {
    bytes += chunk.length;
    held.push(release);
  });
  const message = randomBytes(8 * 1024);
  let written = 0;
  for (let i = 0; i < 12; i++) {
    const before = held.length;
    client.write(message);
    written += message.length;
    for (let w = 0; w < 20 && held.length === before; w++) await sleep(10);
    if (held.length === before) break;
  }
  t.is(held.length, MAX_BYTES_IN_FLIGHT / CHUNK, `${held.length} reads before the stop`);
  // Releasing resumes the reads: every byte written arrives.
  const ended = once(accepted, 'end');
  const drainHeld = setInterval(() => {
    for (const release of held.splice(0)) release();
  }, 5);
  t.teardown(() => clearInterval(drainHeld));
  client.end();
  await ended;
  t.is(bytes, written);
});

test('readSocket: unreleased chunks stop the reads (bounded), releasing resumes them', async (t) => {
  const { client, accepted } = await pair(t);
  const held: { chunk: Buffer; release: () => void }[] = [];
  let total = 0;
  const reader = read(accepted, (chunk, release) => {
    total += chunk.length;
    held.push({ chunk: Buffer.from(chunk), release });
  });
  // Far more than the kernel's socket buffers hold, so the sender must be stopped by us.
  const data = randomBytes(64 * 1024 * 1024);
  let sent = 0;
  const writeMore = () => {
    while (sent < data.length) {
      const piece = data.subarray(sent, sent + CHUNK);
      sent += piece.length;
      if (!client.write(piece)) return;
    }
    client.end();
  };
  client.on('drain', writeMore);
  writeMore();
  await sleep(300);
  // Reads stop once the limit is reached; the last read may cross it by one read.
  t.true(total < MAX_BYTES_IN_FLIGHT + CHUNK, `${total} bytes held`);
  t.true(sent < data.length, 'the sender was held back');
  // Release everything from now on: the rest flows and ends.
  const ended = once(accepted, 'end');
  const all: Buffer[] = held.map((h) => h.chunk);
  for (const h of held.splice(0)) h.release();
  accepted.removeAllListeners('data');
  const drainHeld = setInterval(() => {
    for (const h of held.splice(0)) {
      all.push(h.chunk);
      h.release();
    }
  }, 1);
  t.teardown(() => clearInterval(drainHeld));
  await ended;
  clearInterval(drainHeld);
  for (const h of held.splice(0)) {
    all.push(h.chunk);
    h.release();
  }
  const got = Buffer.concat(all);
  t.is(got.length, data.length);
  t.is(sha(got), sha(data));
  t.is(reader.bytes, data.length);
});

test('relay: exact bytes and counts both ways, half-close answered after the FIN', async (t) => {
  const a = await pair(t); // client app <-> proxy (downstream)
  const b = await pair(t); // proxy (upstream) <-> target app
  const downstream = a.accepted;
  const upstream = b.client;
  const target = b.accepted;
  const request = randomBytes(3 * 1024 * 1024 + 17);
  const response = randomBytes(2 * 1024 * 1024 + 5);
  const result = relay(downstream, upstream, buffers);
  // The target answers only after the client's FIN arrived: the half-close must carry.
  const atTarget = collect(target).then((got) => {
    target.end(response);
    return got;
  });
  const atClient = collect(a.client);
  a.client.end(request);
  t.is(sha(await atTarget), sha(request));
  t.is(sha(await atClient), sha(response));
  const r = await result;
  t.is(r.sent, request.length);
  t.is(r.received, response.length);
  t.is(r.error, undefined);
});

test('relay: a receiver that stops reading holds the sender back (bounded buffering)', async (t) => {
  const a = await pair(t);
  const b = await pair(t);
  const upstream = b.client;
  const target = b.accepted;
  target.pause();
  void relay(a.accepted, upstream, buffers);
  const piece = randomBytes(CHUNK);
  let sent = 0;
  const limit = 256 * 1024 * 1024;
  const writeMore = () => {
    while (sent < limit && a.client.write(piece)) sent += piece.length;
  };
  a.client.on('drain', writeMore);
  writeMore();
  await sleep(500);
  // What the proxy holds in user space: at most the chunks in flight.
  t.true(
    upstream.writableLength < MAX_BYTES_IN_FLIGHT + CHUNK,
    `${upstream.writableLength} bytes buffered`,
  );
  t.true(sent < limit, 'the sender was held back');
});

test('relay: a reset on one side closes the other and reports the error', async (t) => {
  const a = await pair(t);
  const b = await pair(t);
  const result = relay(a.accepted, b.client, buffers);
  a.client.write('hello');
  await once(b.accepted, 'data');
  a.client.on('error', () => {});
  a.client.resume();
  const clientEnded = once(a.client, 'end');
  b.accepted.resetAndDestroy();
  const r = await result;
  t.is((r.error as NodeJS.ErrnoException | undefined)?.code, 'ECONNRESET');
  t.is(r.sent, 5);
  await clientEnded;
  t.pass();
});
