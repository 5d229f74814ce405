// Relaying one HBONE stream against one TCP socket, both directions, with the mapping the
// protocol needs: END_STREAM <-> FIN (half-close), RST_STREAM <-> TCP RST, and bytes counted
// each way. Used by the server (stream <-> target) and by callers of the pool (client socket
// <-> stream).
import type { Socket } from 'node:net';
import type { Http2Stream } from 'node:http2';
import { H2_CONNECT_ERROR, H2_NO_ERROR } from './protocol.js';
import { readSocket, type ReadBuffers, type SocketReader } from '../socket-reader.js';

export interface StreamRelayResult {
  /** Bytes read from the HTTP/2 stream and written to the socket. */
  readonly fromStream: number;
  /** Bytes read from the socket and written to the HTTP/2 stream. */
  readonly fromSocket: number;
  /** Why the relay ended abnormally: a socket error, or the stream's reset code. */
  readonly error?: string;
}

/**
 * Pipes `stream` and `socket` into each other until both are closed. A FIN from the socket ends
 * the stream (END_STREAM) and END_STREAM ends the socket (FIN); a socket error resets the
 * stream with CONNECT_ERROR (RFC 9113 section 8.5), and a reset stream resets the socket
 * (TCP RST). Never rejects.
 */
export function relayStream(
  stream: Http2Stream,
  socket: Socket,
  buffers: ReadBuffers,
): Promise<StreamRelayResult> {
  return new Promise((resolve) => {
    let fromStream = 0;
    let error: string | undefined;
    let open = 2;
    // Replaced below, once every listener is in place; 'close' never comes synchronously.
    let reader: SocketReader = { bytes: 0 };
    const done = () => {
      if (--open > 0) return;
      resolve({ fromStream, fromSocket: reader.bytes, error });
    };
    socket.on('error', (e: NodeJS.ErrnoException) => {
      error ??= `socket: ${e.code ?? e.message}`;
      if (!stream.closed && !stream.destroyed) stream.close(H2_CONNECT_ERROR);
      socket.destroy();
    });
    socket.once('close', (hadError) => {
      // A socket destroyed before both directions finished (an abort on our side) must not
      // leave the stream open: reset it.
      if (!stream.closed && !stream.destroyed && (hadError || !socket.writableFinished)) {
        error ??= 'socket closed';
        stream.close(H2_CONNECT_ERROR);
      }
      done();
    });
    stream.on('error', (e: NodeJS.ErrnoException) => {
      error ??= `stream: ${e.code ?? e.message}`;
    });
    stream.once('close', () => {
      const code = stream.rstCode ?? H2_NO_ERROR;
      if (code !== H2_NO_ERROR) error ??= `stream reset (code ${code})`;
      // A reset aborts the connection. So does a stream closed before the socket's FIN was
      // forwarded (the peer reset with NO_ERROR): the socket's data has nowhere to go.
      if (!socket.destroyed && (code !== H2_NO_ERROR || !socket.readableEnded)) {
        resetSocket(socket);
      }
      done();
    });

    // Stream -> socket. One read from the tunnel (up to four TLS records) yields several
    // 'data' events, each from its own callback out of C++, so nextTick would run between
    // them. Corking until setImmediate (after this poll phase) gives the kernel one writev
    // for all of them instead of two sends per 16 KiB (a DATA frame straddles TLS records).
    let corked = false;
    const uncork = () => {
      corked = false;
      socket.uncork();
    };
    stream.on('data', (chunk: Buffer) => {
      fromStream += chunk.length;
      if (!corked && !socket.destroyed) {
        corked = true;
        socket.cork();
        setImmediate(uncork);
      }
      if (!socket.write(chunk)) stream.pause();
    });
    socket.on('drain', () => stream.resume());
    // The server pauses the stream until its 200 is sent; a 'data' listener alone does not
    // undo an explicit pause().
    stream.resume();
    // Node quirk: an Http2Stream emits 'end' for a received RST_STREAM too (rstCode still 0
    // at that point, 'aborted' follows), so ending the socket on 'end' would turn a reset
    // into a FIN. Forward END_STREAM as FIN only once it is clear the stream was not aborted.
    stream.once('end', () =>
      setImmediate(() => {
        if (!stream.aborted && (stream.rstCode ?? H2_NO_ERROR) === H2_NO_ERROR) socket.end();
      }),
    );

    // Socket -> stream: a FIN ends the stream (END_STREAM) once the data before it is queued.
    socket.once('end', () => {
      if (!stream.destroyed) stream.end();
    });
    reader = readSocket(
      socket,
      (chunk, release) => {
        if (stream.destroyed) release();
        else stream.write(chunk, release);
      },
      buffers,
    );
  });
}

/** TCP RST where possible (resetAndDestroy needs a TCP handle), else a plain destroy. */
export function resetSocket(socket: Socket): void {
  if (socket.destroyed) return;
  // Node quirk: after end() (a shutdown in progress) libuv refuses the reset, and the socket
  // then never emits 'close'. Destroy it plainly in that case.
  if (socket.writableEnded) {
    socket.destroy();
    return;
  }
  try {
    socket.resetAndDestroy();
  } catch {
    socket.destroy();
  }
}
