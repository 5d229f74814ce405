// The node's BPF state as one object: the redirect program loaded with its maps pinned under
// the bpffs directory (adopted when already there), the program attached to interfaces, the
// listener slots, and the local-delivery routing. It does not decide WHICH pods are enrolled
// (see enrollment.ts) and never detaches anything except on explicit cleanup.
import { existsSync, mkdirSync, readdirSync, rmSync, statfsSync, unlinkSync } from 'node:fs';
import {
  attachIngress,
  attachedProgramId,
  detachIngress,
  listInterfaces,
  type AttachMode,
  type Interface,
} from '../bpf/attach.js';
import { check } from '../bpf/errors.js';
import { buildDir, libbpf, libc } from '../bpf/ffi.js';
import { BpfObject } from '../bpf/object.js';
import {
  MAP_NAMES,
  MAX_WORKERS,
  PROGRAM_NAME,
  SLOT_COUNT,
  WEFT_ABI_VERSION,
  openWeftMaps,
  type WeftMaps,
} from '../bpf/weft-maps.js';
import { ListenerSlots } from './listener-slots.js';
import { installLocalDelivery, removeLocalDelivery, type LocalDeliveryRouting } from './routing.js';

export interface DatapathOptions {
  /** Directory on a bpffs where maps, program and links are pinned. */
  readonly bpffsDir: string;
  readonly attachMode: AttachMode;
  readonly routing: LocalDeliveryRouting;
  readonly hbonePort: number;
  readonly objectPath?: string;
}

export const DEFAULT_OBJECT_PATH = `${buildDir}/redirect.bpf.o`;

function linkPinPath(bpffsDir: string, iface: Interface): string {
  return `${bpffsDir}/links/${iface.index}`;
}

export class Datapath {
  readonly maps: WeftMaps;
  readonly programFd: number;
  /** The capture listeners' SOCKMAP slots. */
  readonly slots: ListenerSlots;
  private readonly attached = new Map<number, Interface>();

  private constructor(
    private readonly object: BpfObject,
    readonly options: DatapathOptions,
  ) {
    this.maps = openWeftMaps(object);
    this.programFd = object.programFd(PROGRAM_NAME);
    this.slots = ListenerSlots.over(this.maps.listeners.fd);
  }

  /** Loads the program, adopting pinned maps, and installs the routing for captured packets. */
  static open(options: DatapathOptions): Datapath {
    assertBpffs(options.bpffsDir);
    const objectPath = options.objectPath ?? DEFAULT_OBJECT_PATH;
    if (!existsSync(objectPath)) {
      throw new Error(`${objectPath} is missing: run \`npm run build\` (needs clang)`);
    }
    const object = BpfObject.open(objectPath);
    try {
      object.pinMapsUnder(`${options.bpffsDir}/maps`, MAP_NAMES);
      object.load();
      const datapath = new Datapath(object, options);
      datapath.configure();
      datapath.pinProgram();
      installLocalDelivery(options.routing);
      return datapath;
    } catch (error) {
      object.close();
      throw error;
    }
  }

  private configure(): void {
    const previous = this.maps.config.get(0);
    if (previous && previous.abiVersion !== 0 && previous.abiVersion !== WEFT_ABI_VERSION) {
      throw new Error(
        `pinned maps in ${this.options.bpffsDir} come from an incompatible weft (layout ${previous.abiVersion}, this is ${WEFT_ABI_VERSION}); run \`weft node --cleanup\` with the same --bpffs`,
      );
    }
    this.maps.config.set(0, {
      abiVersion: WEFT_ABI_VERSION,
      mark: this.options.routing.mark,
      markMask: this.options.routing.mask,
      hbonePort: this.options.hbonePort,
      // A predecessor's workers keep serving until this process's are in their slots.
      workers: previous?.workers || 1,
    });
  }

  /**
   * Spreads new connections over `count` workers' slots, then empties the slots of workers
   * beyond them (a predecessor that ran more workers sees its listeners replaced). Call once
   * every one of those workers has filled its slots.
   */
  setWorkerCount(count: number): void {
    if (!Number.isInteger(count) || count < 1 || count > MAX_WORKERS) {
      throw new RangeError(`worker count ${count} is outside 1..${MAX_WORKERS}`);
    }
    const config = this.maps.config.get(0)!;
    this.maps.config.set(0, { ...config, workers: count });
    for (let slot = count * SLOT_COUNT; slot < MAX_WORKERS * SLOT_COUNT; slot++) {
      this.slots.clear(slot);
    }
  }

  private pinProgram(): void {
    const path = `${this.options.bpffsDir}/prog_redirect`;
    if (existsSync(path)) unlinkSync(path);
    check(libbpf.objPin(this.programFd, path), `pin program at ${path}`);
  }

  /** Attaches (or atomically replaces) the program on an interface; idempotent. */
  attach(iface: Interface): void {
    const known = this.attached.get(iface.index);
    if (known && known.name === iface.name) return;
    attachIngress({
      iface,
      programFd: this.programFd,
      mode: this.options.attachMode,
      linkPinPath: linkPinPath(this.options.bpffsDir, iface),
      programName: 'redirect',
    });
    this.attached.set(iface.index, iface);
  }

  attachedInterfaces(): Interface[] {
    return [...this.attached.values()];
  }

  /** Forgets interfaces that no longer exist (their tcx links went with them). */
  forgetMissing(present: readonly Interface[]): Interface[] {
    const alive = new Set(present.map((i) => i.index));
    const gone: Interface[] = [];
    for (const [index, iface] of this.attached) {
      if (!alive.has(index)) {
        this.attached.delete(index);
        gone.push(iface);
        const pin = linkPinPath(this.options.bpffsDir, iface);
        if (existsSync(pin)) unlinkSync(pin);
      }
    }
    return gone;
  }

  /** Whether the program id on `iface` is the one this process loaded. */
  programIdOn(iface: Interface): number | undefined {
    return attachedProgramId(
      iface,
      this.options.attachMode,
      linkPinPath(this.options.bpffsDir, iface),
    );
  }

  /** Releases this process's handles; pinned and attached state stays (fail closed). */
  close(): void {
    this.object.close();
  }
}

/** Removes every program, link, pin, rule and route weft added (`weft node --cleanup`). */
export function removeDatapath(options: Omit<DatapathOptions, 'hbonePort'>): string[] {
  const removed: string[] = [];
  for (const iface of listInterfaces()) {
    if (iface.name === 'lo') continue;
    const pin = linkPinPath(options.bpffsDir, iface);
    const hadProgram =
      options.attachMode === 'tc'
        ? attachedProgramId(iface, 'tc', pin) !== undefined
        : existsSync(pin);
    if (hadProgram) {
      detachIngress(iface, options.attachMode, pin);
      removed.push(`program on ${iface.name}`);
    }
  }
  removeLocalDelivery(options.routing);
  removed.push('fwmark rule and local route');
  if (existsSync(options.bpffsDir)) {
    for (const entry of readdirSync(options.bpffsDir)) {
      rmSync(`${options.bpffsDir}/${entry}`, { recursive: true, force: true });
      removed.push(`pin ${entry}`);
    }
    rmSync(options.bpffsDir, { recursive: true, force: true });
  }
  return removed;
}

const BPF_FS_MAGIC = 0xcafe4a11;

function assertBpffs(dir: string): void {
  mkdirSync(dir, { recursive: true });
  if (statfsSync(dir).type !== BPF_FS_MAGIC) {
    throw new Error(
      `${dir} is not on a bpffs: mount one (mount -t bpf bpf /sys/fs/bpf) or pass --bpffs <dir on bpffs>`,
    );
  }
}

function u32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(value);
  return b;
}

/**
 * Whether another weft process already serves this bpffs directory: its pinned listener
 * map holds a live socket. A successor then takes over instead of failing on busy ports.
 */
export function predecessorServes(bpffsDir: string): boolean {
  const path = `${bpffsDir}/maps/weft_listeners`;
  if (!existsSync(path)) return false;
  const fd = libbpf.objGet(path);
  if (fd < 0) return false;
  try {
    const value = Buffer.alloc(8);
    return libbpf.mapLookup(fd, u32(0), value) === 0;
  } finally {
    libc.close(fd);
  }
}
