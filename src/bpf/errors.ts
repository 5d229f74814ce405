// Errors from the kernel, libbpf and libc, carried as TypeScript errors with errno attached.
import { constants } from 'node:os';

const errnoNames = new Map<number, string>(
  Object.entries(constants.errno).map(([name, value]) => [value, name]),
);

/** Readable text for an errno, e.g. 1 -> "Operation not permitted". */
const errnoText: Record<string, string> = {
  EPERM: 'operation not permitted (weft needs root, or CAP_BPF + CAP_NET_ADMIN)',
  EACCES: 'permission denied',
  ENOENT: 'no such object',
  EEXIST: 'already exists',
  EINVAL: 'invalid argument',
  ENODEV: 'no such device',
  EADDRINUSE: 'address already in use',
  EADDRNOTAVAIL: 'address not available',
  EBUSY: 'resource busy',
  ENOMEM: 'out of memory (or locked-memory limit)',
  ENOTSUP: 'not supported by this kernel',
  EOPNOTSUPP: 'not supported by this kernel',
  E2BIG: 'too big',
  ENOSPC: 'no space left',
  ETIMEDOUT: 'timed out',
  EBADF: 'bad file descriptor',
  ENOTDIR: 'not a directory',
  EINPROGRESS: 'in progress',
};

export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

/**
 * A failed kernel interaction. `message` reads "<what>: <ERRNO>: <text>", e.g.
 * "attach redirect to veth3: EPERM: operation not permitted ...".
 */
export class KernelError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly operation: string;

  constructor(operation: string, errno: number, detail?: string) {
    const code = errnoName(errno);
    const text = detail ?? errnoText[code] ?? 'failed';
    super(`${operation}: ${code}: ${text}`);
    this.name = 'KernelError';
    this.errno = errno;
    this.code = code;
    this.operation = operation;
  }
}

/** Throws a KernelError when `result` is a negative errno (the shim's and libbpf's convention). */
export function check(result: number, operation: string): number {
  if (result < 0) throw new KernelError(operation, -result);
  return result;
}
