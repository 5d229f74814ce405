// Reading a plaintext TCP socket without a fresh ArrayBuffer per read. Node's default read
// path allocates a 64 KiB backing store for every read and hands it to JS as a new
// ArrayBuffer; at a few Gbit/s that is thousands of external allocations per second, and V8
// answers the external-memory growth with back-to-back Mark-Compacts of the whole heap
// (the "GC in old space requested" storms of docs/benchmarks.md). Here every socket reads into
// one shared buffer (net.Socket's `onread` mechanism), and each read is copied into a chunk
// from a small free list that goes back to the list once the consumer's write has completed.
// The buffer and the list belong to a ReadBuffers object that the proxy owns and hands to
// its relays. Bytes in flight per socket are bounded, so a slow consumer pauses the socket
// (TCP backpressure) instead of making the proxy buffer.
import { Socket } from 'node:net';

/** Largest single read; Node's own default read size. */
const READ_BYTES = 64 * 1024;
/** Reads below this are copied into a small buffer from Node's slab, not a whole chunk. */
const SMALL_READ_BYTES = 4 * 1024;
/**
 * Bytes handed to the consumer and not yet released, per socket, before reads stop: about
 * what Node's own pipe() let a socket hold (a 64 KiB read buffer plus the writable buffer),
 * so a thousand connections facing slow readers still fit in a node proxy's memory. A chunk
 * counts with its whole size, so this bounds the memory pinned, not just the bytes read.
 */
export const MAX_BYTES_IN_FLIGHT = 256 * 1024;
/** Free chunks kept for reuse (4 MiB); the rest are left to the GC. */
const MAX_FREE_CHUNKS = 64;

/** The read buffer and the chunk free list shared by the sockets of one proxy. */
export class ReadBuffers {
  /**
   * One buffer for every socket's reads: the data is copied out before the read callback
   * returns, and Node's event loop never runs two read callbacks at once.
   */
  readonly shared = Buffer.allocUnsafeSlow(READ_BYTES);
  private readonly free: Buffer[] = [];

  /** A READ_BYTES chunk, reused if one is free. */
  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafeSlow(READ_BYTES);
  }

  /** A chunk whose bytes are no longer referenced. */
  give(chunk: Buffer): void {
    if (this.free.length < MAX_FREE_CHUNKS) this.free.push(chunk);
  }
}

/**
 * net.Socket keeps its `onread` state under private symbols. They are found once on a
 * socket made with `onread`, so that sockets Node created for us (accepted ones) can be
 * switched to the same mode. Undefined if this Node does not have them: callers fall back
 * to 'data' events.
 */
const onreadSymbols = (() => {
  // @types/node 20 types `onread` for net.connect() only; the Socket constructor takes it too.
  const options = { onread: { buffer: Buffer.alloc(1), callback: () => true } };
  const probe = new Socket(options as ConstructorParameters<typeof Socket>[0]);
  const find = (name: string) =>
    Object.getOwnPropertySymbols(probe).find((s) => s.description === name);
  const buffer = find('kBuffer');
  const callback = find('kBufferCb');
  const generator = find('kBufferGen');
  probe.destroy();
  return buffer && callback && generator ? { buffer, callback, generator } : undefined;
})();

interface UserBufferHandle {
  useUserBuffer?(buffer: Uint8Array): void;
}

/**
 * Consumes one chunk. `release` must be called exactly once, when the chunk's memory is no
 * longer referenced (a write's completion callback, whatever its outcome).
 */
export type ChunkSink = (chunk: Buffer, release: () => void) => void;

/** Bytes read so far, for metrics and the access log. */
export interface SocketReader {
  readonly bytes: number;
}

/**
 * Starts reading `socket` into `sink` until EOF ('end' is emitted as usual) or an error. Data
 * Node had already buffered (a client that spoke first) goes to the sink first. The caller
 * listens for 'end', 'error' and 'close' itself.
 */
export function readSocket(socket: Socket, sink: ChunkSink, buffers: ReadBuffers): SocketReader {
  const reader = { bytes: 0 };
  const handle = (socket as unknown as { _handle?: UserBufferHandle })._handle;
  if (!onreadSymbols || typeof handle?.useUserBuffer !== 'function' || socket.destroyed) {
    readWithDataEvents(socket, sink, reader);
    return reader;
  }
  // What Node read before we took over: its buffer may end with EOF, which read() then
  // turns into 'end' on a later tick, after this data has gone to the sink.
  for (let data = socket.read() as Buffer | null; data !== null; data = socket.read()) {
    reader.bytes += data.length;
    sink(data, noop);
  }
  let inFlight = 0;
  let stalled = false;
  const release = (chunk: Buffer | undefined, bytes: number) => {
    if (chunk) buffers.give(chunk);
    inFlight -= bytes;
    if (stalled && inFlight < MAX_BYTES_IN_FLIGHT) {
      stalled = false;
      if (!socket.destroyed) socket.resume();
    }
  };
  const onRead = (nread: number, buffer: Uint8Array): boolean => {
    reader.bytes += nread;
    if (nread < SMALL_READ_BYTES) {
      inFlight += nread;
      const copy = Buffer.allocUnsafe(nread);
      copy.set(buffer.subarray(0, nread));
      sink(copy, () => release(undefined, nread));
    } else {
      // A chunk pins its whole size however little of it a read filled.
      const chunk = buffers.take();
      inFlight += chunk.length;
      chunk.set(buffer.subarray(0, nread));
      let released = false;
      sink(chunk.subarray(0, nread), () => {
        if (released) return;
        released = true;
        release(chunk, chunk.length);
      });
    }
    if (inFlight < MAX_BYTES_IN_FLIGHT) return true;
    // Returning false makes Node stop reading; release() resumes.
    stalled = true;
    return false;
  };
  const s = socket as unknown as Record<symbol, unknown>;
  s[onreadSymbols.buffer] = buffers.shared;
  s[onreadSymbols.callback] = onRead;
  s[onreadSymbols.generator] = null;
  handle.useUserBuffer(buffers.shared);
  // With the symbols set, resume() (re)starts the handle's reads.
  socket.resume();
  return reader;
}

/** The portable path, for a Node without the onread internals used above. */
function readWithDataEvents(socket: Socket, sink: ChunkSink, reader: { bytes: number }): void {
  let inFlight = 0;
  socket.on('data', (chunk: Buffer) => {
    const bytes = chunk.length;
    reader.bytes += bytes;
    inFlight += bytes;
    sink(chunk, () => {
      inFlight -= bytes;
      if (inFlight < MAX_BYTES_IN_FLIGHT && socket.isPaused()) socket.resume();
    });
    if (inFlight >= MAX_BYTES_IN_FLIGHT) socket.pause();
  });
  socket.resume();
}

function noop(): void {}
