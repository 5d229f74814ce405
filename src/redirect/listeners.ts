// Capture listeners: IP_TRANSPARENT listening sockets made through FFI (Node cannot set that
// option) and adopted by net.Server, so the node proxy accepts connections for any original
// destination that the redirect program hands it.
import { Server, type Socket } from 'node:net';
import { KernelError } from '../bpf/errors.js';
import { libc, native } from '../bpf/ffi.js';

export interface CaptureListener {
  readonly name: string;
  readonly fd: number;
  readonly port: number;
  /** The socket's kernel cookie: what the SOCKMAP slot holds while this listener is in it. */
  readonly cookie: bigint;
  readonly server: Server;
  close(): Promise<void>;
}

export interface CaptureListenerOptions {
  /**
   * When the port is taken, listen on an ephemeral port instead: a predecessor weft holds it,
   * and the SOCKMAP, not the port, routes packets to a capture listener.
   */
  readonly takeover?: boolean;
}

const EADDRINUSE = 98;

export async function openCaptureListener(
  name: string,
  ip: string,
  port: number,
  onConnection: (socket: Socket) => void,
  options: CaptureListenerOptions = {},
): Promise<CaptureListener> {
  let fd = native.listenTransparent(ip, port, 4096);
  if (fd === -EADDRINUSE && options.takeover) fd = native.listenTransparent(ip, 0, 4096);
  if (fd < 0) {
    const hint =
      -fd === EADDRINUSE
        ? `port ${port} is in use: stop what holds it, or is another weft node already running with these flags?`
        : undefined;
    throw new KernelError(`open ${name} listener on ${ip}:${port}`, -fd, hint);
  }
  const server = new Server({ allowHalfOpen: true, pauseOnConnect: false }, onConnection);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd }, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (error) {
    libc.close(fd);
    throw error;
  }
  const cookie = [0n];
  native.socketCookie(fd, cookie);
  const address = server.address();
  return {
    name,
    fd,
    port: typeof address === 'object' && address ? address.port : port,
    cookie: BigInt(cookie[0]!),
    server,
    // Stops accepting at once (the kernel drops the socket from the SOCKMAP as it closes);
    // connections already accepted live on and are drained by their owner.
    close: async () => {
      if (server.listening) server.close();
    },
  };
}
