// The capture listeners' SOCKMAP slots, as one process sees them: put this process's
// listeners into the slots of a worker, read which socket a slot holds (its cookie), and see
// whether a successor has replaced them. A single-process node proxy is worker 0; with
// `--workers N` each data-plane worker process opens the pinned map itself and fills its own
// slots, since a socket fd means nothing outside the process that holds it.
import { check } from '../bpf/errors.js';
import { libbpf, libc } from '../bpf/ffi.js';
import { ListenerSlot, listenerSlot } from '../bpf/weft-maps.js';

/** The listener kinds in the order a worker opens them. */
export const LISTENER_KINDS = [ListenerSlot.Outbound, ListenerSlot.Inbound, ListenerSlot.Hbone];

export interface SlottedListener {
  readonly fd: number;
  readonly cookie: bigint;
}

export class ListenerSlots {
  private constructor(
    readonly fd: number,
    private readonly owned: boolean,
  ) {}

  /** Over an open map fd (the datapath's own); close() leaves it open. */
  static over(mapFd: number): ListenerSlots {
    return new ListenerSlots(mapFd, false);
  }

  /** Opens `<bpffs>/maps/weft_listeners`, pinned by the control plane. */
  static openPinned(bpffsDir: string): ListenerSlots {
    const path = `${bpffsDir}/maps/weft_listeners`;
    return new ListenerSlots(check(libbpf.objGet(path), `open pinned map ${path}`), true);
  }

  /** Puts a listening socket into a slot; the previous occupant leaves it atomically. */
  set(slot: number, socketFd: number): void {
    check(
      libbpf.mapUpdate(this.fd, u32(slot), u64(BigInt(socketFd)), 0),
      `put listener into slot ${slot}`,
    );
  }

  /** The cookie of the socket in a slot, or undefined when it is empty. */
  cookie(slot: number): bigint | undefined {
    const value = Buffer.alloc(8);
    if (libbpf.mapLookup(this.fd, u32(slot), value) !== 0) return undefined;
    return value.readBigUInt64LE();
  }

  /** Empties a slot (its listener keeps what it has queued); false when it was empty. */
  clear(slot: number): boolean {
    return libbpf.mapDelete(this.fd, u32(slot)) === 0;
  }

  /** Puts `listeners` (in LISTENER_KINDS order) into the slots of `worker`. */
  fill(worker: number, listeners: readonly SlottedListener[]): void {
    listeners.forEach((l, i) => this.set(listenerSlot(LISTENER_KINDS[i]!, worker), l.fd));
  }

  /** Whether another socket now holds a slot of `worker` that one of `listeners` held. */
  replaced(worker: number, listeners: readonly SlottedListener[]): boolean {
    return listeners.some(
      (l, i) => this.cookie(listenerSlot(LISTENER_KINDS[i]!, worker)) !== l.cookie,
    );
  }

  close(): void {
    if (this.owned) libc.close(this.fd);
  }
}

function u32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(value);
  return b;
}

function u64(value: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(value);
  return b;
}
