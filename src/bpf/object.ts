// Loading an eBPF object file with libbpf: open, pin maps (adopting already-pinned ones so a
// restarted proxy keeps its state), load, and hand out program and map file descriptors.
import { mkdirSync } from 'node:fs';
import { KernelError, check } from './errors.js';
import { libbpf, lastErrno } from './ffi.js';

type Handle = unknown; // an opaque libbpf pointer held by koffi

export class BpfObject {
  private handle: Handle | null;
  private readonly path: string;

  private constructor(handle: Handle, path: string) {
    this.handle = handle;
    this.path = path;
  }

  static open(path: string): BpfObject {
    const handle = libbpf.openFile(path, null);
    if (!handle) throw new KernelError(`open BPF object ${path}`, lastErrno());
    return new BpfObject(handle, path);
  }

  /**
   * Pins the named maps under `dir` at load time. libbpf reuses a map already pinned there
   * when its type, key, value and size match (so a restart adopts it) and fails the load when
   * they do not (an incompatible older layout), instead of silently replacing it.
   */
  pinMapsUnder(dir: string, names: readonly string[]): void {
    mkdirSync(dir, { recursive: true });
    for (const name of names) {
      check(libbpf.mapSetPinPath(this.mapHandle(name), `${dir}/${name}`), `pin path for ${name}`);
    }
  }

  load(): void {
    const result = libbpf.load(this.live());
    if (result < 0) {
      const code = -result;
      const hint =
        code === 1
          ? 'loading BPF programs needs root or CAP_BPF + CAP_NET_ADMIN'
          : code === 22
            ? 'the kernel rejected the object or a pinned map has an incompatible layout (run `weft node --cleanup`)'
            : undefined;
      throw new KernelError(`load BPF object ${this.path}`, code, hint);
    }
  }

  programFd(name: string): number {
    const program = libbpf.findProgram(this.live(), name);
    if (!program) throw new Error(`BPF object ${this.path} has no program ${name}`);
    return check(libbpf.programFd(program), `program ${name} fd`);
  }

  mapFd(name: string): number {
    return check(libbpf.mapFd(this.mapHandle(name)), `map ${name} fd`);
  }

  /** Frees libbpf's memory. Kernel objects stay alive while pinned, attached or referenced. */
  close(): void {
    if (this.handle) libbpf.close(this.handle);
    this.handle = null;
  }

  private mapHandle(name: string): Handle {
    const map = libbpf.findMap(this.live(), name);
    if (!map) throw new Error(`BPF object ${this.path} has no map ${name}`);
    return map;
  }

  private live(): Handle {
    if (!this.handle) throw new Error(`BPF object ${this.path} is closed`);
    return this.handle;
  }
}
