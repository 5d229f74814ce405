// Attaching a tc program to an interface's ingress. On kernels >= 6.6 this is a tcx link
// placed first in the chain and pinned (so it outlives the process and a successor can swap
// the program in place); on older kernels a clsact filter at weft's own priority/handle.
// Replacing the program is always atomic; nothing here ever leaves a gap with no program.
import { existsSync, mkdirSync, unlinkSync } from 'node:fs';
import { release } from 'node:os';
import { KernelError, check } from './errors.js';
import { koffi, libbpf, libc, native } from './ffi.js';

export type AttachMode = 'tcx' | 'tc';

/** weft's clsact filter identity: priority 1 runs before filters CNIs add at default priority. */
export const TC_PRIORITY = 1;
export const TC_HANDLE = 0x77ef;

const BPF_LINK_TYPE_TCX = 11;

export function kernelSupportsTcx(kernelRelease = release()): boolean {
  const [major = 0, minor = 0] = kernelRelease.split(/[.-]/).map(Number);
  return major > 6 || (major === 6 && minor >= 6);
}

export function resolveAttachMode(requested: AttachMode | 'auto'): AttachMode {
  return requested === 'auto' ? (kernelSupportsTcx() ? 'tcx' : 'tc') : requested;
}

export interface Interface {
  readonly name: string;
  readonly index: number;
}

/** Every interface of this network namespace, from if_nameindex(3). */
export function listInterfaces(): Interface[] {
  const head = libc.ifNameIndex();
  if (!head) throw new KernelError('list interfaces', 12);
  const out: Interface[] = [];
  try {
    const entrySize = koffi.sizeof(libc.ifNameIndexType);
    for (let i = 0; i < 65536; i++) {
      const entry = koffi.decode(head, i * entrySize, libc.ifNameIndexType) as {
        if_index: number;
        if_name: string | null;
      };
      if (entry.if_index === 0 || entry.if_name === null) break;
      out.push({ name: entry.if_name, index: entry.if_index });
    }
  } finally {
    libc.ifFreeNameIndex(head);
  }
  return out;
}

export function interfaceIndex(name: string): number {
  const index = libc.ifNameToIndex(name);
  if (index === 0) throw new KernelError(`find interface ${name}`, 19, 'no such interface');
  return index;
}

export interface AttachRequest {
  readonly iface: Interface;
  readonly programFd: number;
  readonly mode: AttachMode;
  /** Where the tcx link of this interface is pinned (ignored for tc). */
  readonly linkPinPath: string;
  /** For messages: "redirect". */
  readonly programName: string;
}

/** Attaches, or atomically replaces weft's program already on the interface. */
export function attachIngress(request: AttachRequest): void {
  const { iface, programFd, mode, linkPinPath, programName } = request;
  const what = `attach ${programName} to ${iface.name}`;
  if (mode === 'tc') {
    check(native.tcAttach(iface.index, programFd, TC_PRIORITY, TC_HANDLE, 1), what);
    return;
  }
  const existing = openLiveLink(linkPinPath, iface.index);
  if (existing !== undefined) {
    try {
      check(libbpf.linkUpdate(existing, programFd, null), `${what} (replace)`);
    } finally {
      libc.close(existing);
    }
    return;
  }
  const linkFd = check(native.tcxAttach(iface.index, programFd), what);
  try {
    mkdirSync(linkPinPath.slice(0, linkPinPath.lastIndexOf('/')), { recursive: true });
    check(libbpf.objPin(linkFd, linkPinPath), `pin ${programName} link of ${iface.name}`);
  } finally {
    // The pin now holds the link; closing our fd does not detach it.
    libc.close(linkFd);
  }
}

/** Removes weft's program from the interface (only by --cleanup and for unknown interfaces). */
export function detachIngress(iface: Interface, mode: AttachMode, linkPinPath: string): void {
  if (mode === 'tc') {
    const result = native.tcDetach(iface.index, TC_PRIORITY, TC_HANDLE);
    if (result !== -2) check(result, `detach from ${iface.name}`);
    return;
  }
  // A tcx link detaches when its last reference (the pin) goes.
  if (existsSync(linkPinPath)) unlinkSync(linkPinPath);
}

/** The id of the program weft attached to `iface`, or undefined when none is there. */
export function attachedProgramId(
  iface: Interface,
  mode: AttachMode,
  linkPinPath: string,
): number | undefined {
  if (mode === 'tc') {
    const id = [0];
    const result = native.tcQuery(iface.index, TC_PRIORITY, TC_HANDLE, id);
    if (result === -2) return undefined;
    check(result, `query ${iface.name}`);
    return id[0];
  }
  const fd = openLiveLink(linkPinPath, iface.index);
  if (fd === undefined) return undefined;
  try {
    return linkInfo(fd).programId;
  } finally {
    libc.close(fd);
  }
}

export interface LinkInfo {
  readonly type: number;
  readonly programId: number;
  /** 0 once the interface is gone (a defunct link). */
  readonly ifindex: number;
}

export function linkInfo(fd: number): LinkInfo {
  const type = [0];
  const programId = [0];
  const ifindex = [0];
  check(native.linkInfo(fd, type, programId, ifindex), 'read link info');
  return { type: type[0]!, programId: programId[0]!, ifindex: ifindex[0]! };
}

/**
 * Opens the pinned tcx link when it is still attached to `ifindex`; a pin left by an
 * interface that is gone (or whose index was reused) is removed and undefined returned.
 */
function openLiveLink(pinPath: string, ifindex: number): number | undefined {
  if (!existsSync(pinPath)) return undefined;
  const fd = libbpf.objGet(pinPath);
  if (fd < 0) {
    unlinkSync(pinPath);
    return undefined;
  }
  const info = linkInfo(fd);
  if (info.type === BPF_LINK_TYPE_TCX && info.ifindex === ifindex) return fd;
  libc.close(fd);
  unlinkSync(pinPath);
  return undefined;
}
