// Relaying bytes between two connected sockets in both directions, keeping half-closes
// (one side's FIN becomes the other side's FIN) and reporting bytes each way.
import type { Socket } from 'node:net';
import { readSocket, type ReadBuffers } from './socket-reader.js';

export interface RelayResult {
  /** Bytes the downstream (client side) sent, delivered upstream. */
  readonly sent: number;
  /** Bytes the upstream sent back, delivered downstream. */
  readonly received: number;
  /** The first socket error, if the relay ended by one (the other side was reset). */
  readonly error?: Error;
}

export function relay(
  downstream: Socket,
  upstream: Socket,
  buffers: ReadBuffers,
): Promise<RelayResult> {
  return new Promise((resolve) => {
    let firstError: Error | undefined;
    let open = 2;
    const onError = (error: Error) => {
      firstError ??= error;
      downstream.destroy();
      upstream.destroy();
    };
    const onClose = () => {
      if (--open > 0) return;
      resolve({
        sent: upstream.bytesWritten,
        received: downstream.bytesWritten,
        error: firstError,
      });
    };
    downstream.on('error', onError);
    upstream.on('error', onError);
    downstream.once('close', onClose);
    upstream.once('close', onClose);
    pump(downstream, upstream, buffers);
    pump(upstream, downstream, buffers);
    // Each socket is destroyed by Node once it has both received and sent FIN (autoDestroy).
  });
}

/** One direction: `from`'s bytes to `to`, and its FIN after them. */
function pump(from: Socket, to: Socket, buffers: ReadBuffers): void {
  from.once('end', () => to.end());
  readSocket(
    from,
    (chunk, release) => {
      if (to.destroyed) release();
      else to.write(chunk, release);
    },
    buffers,
  );
}
