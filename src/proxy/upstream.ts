// Opening the proxy's upstream connection: from the node's own address, or from the original
// client's address (IP_TRANSPARENT bind through FFI) so a local pod sees its real peer.
import { Socket } from 'node:net';
import { KernelError } from '../bpf/errors.js';
import { libc, native } from '../bpf/ffi.js';

export interface UpstreamTarget {
  readonly host: string;
  readonly port: number;
  /** Source address to connect from; undefined means the node's own address. */
  readonly sourceIp?: string;
  readonly connectTimeoutMs: number;
}

export class UpstreamConnectError extends Error {
  constructor(
    readonly target: UpstreamTarget,
    readonly code: string,
    cause?: unknown,
  ) {
    super(`connect to ${target.host}:${target.port} failed: ${code}`, { cause });
    this.name = 'UpstreamConnectError';
  }
}

/** Resolves with a connected socket, or rejects with UpstreamConnectError. */
export function connectUpstream(target: UpstreamTarget): Promise<Socket> {
  let socket: Socket;
  if (target.sourceIp === undefined) {
    socket = new Socket({ allowHalfOpen: true });
  } else {
    const fd = native.socketTransparent(target.sourceIp, 0);
    if (fd < 0) {
      const cause = new KernelError(`bind to ${target.sourceIp}`, -fd);
      return Promise.reject(new UpstreamConnectError(target, cause.code, cause));
    }
    try {
      // A bound, unconnected fd: net.Socket adopts it and connect() reuses the handle.
      socket = new Socket({ fd, allowHalfOpen: true });
    } catch (error) {
      libc.close(fd);
      return Promise.reject(new UpstreamConnectError(target, 'EBADF', error));
    }
  }
  return new Promise<Socket>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new UpstreamConnectError(target, 'ETIMEDOUT'));
    }, target.connectTimeoutMs);
    socket.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.destroy();
      reject(new UpstreamConnectError(target, error.code ?? 'ECONNRESET', error));
    });
    socket.connect({ host: target.host, port: target.port }, () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
  });
}
