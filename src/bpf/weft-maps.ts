// The redirect program's maps, typed. Mirrors bpf/weft_maps.h field for field; this is the
// only TypeScript that knows those layouts.
import { check } from './errors.js';
import { libbpf, libc } from './ffi.js';
import {
  PerCpuCounterMap,
  TypedMap,
  ipv4Codec,
  u32Codec,
  u32StructCodec,
  u64Codec,
  type Codec,
} from './maps.js';
import type { BpfObject } from './object.js';

export const WEFT_ABI_VERSION = 4;

export const MAP_NAMES = [
  'weft_listeners',
  'weft_pods',
  'weft_ifaces',
  'weft_host_addrs',
  'weft_service_vips',
  'weft_config',
  'weft_counters',
  'weft_direct_verdicts',
  'weft_direct_flows',
  'weft_direct_cuts',
] as const;

export const PROGRAM_NAME = 'weft_redirect';

export enum ListenerSlot {
  Outbound = 0,
  Inbound = 1,
  Hbone = 2,
}

/** Listener kinds per worker (WEFT_SLOT_COUNT). */
export const SLOT_COUNT = 3;
/** Most data-plane workers the program spreads connections over (WEFT_MAX_WORKERS). */
export const MAX_WORKERS = 16;

/** The SOCKMAP slot of one worker's listener of one kind. */
export function listenerSlot(kind: ListenerSlot, worker: number): number {
  if (!Number.isInteger(worker) || worker < 0 || worker >= MAX_WORKERS) {
    throw new RangeError(`worker ${worker} is outside 0..${MAX_WORKERS - 1}`);
  }
  return kind + SLOT_COUNT * worker;
}

export const POD_ENROLLED = 1;

export type PodEntry = { flags: number; ifindex: number };
export type DatapathConfig = {
  abiVersion: number;
  mark: number;
  markMask: number;
  hbonePort: number;
  /** Workers whose listener slots new connections are spread over (0 counts as 1). */
  workers: number;
};
export type PodCounters = {
  capturedOutbound: bigint;
  capturedInbound: bigint;
  capturedHbone: bigint;
  bypassed: bigint;
  droppedNoListener: bigint;
  droppedSpoofed: bigint;
  droppedStray: bigint;
  droppedIpv6: bigint;
  droppedFragment: bigint;
  direct: bigint;
  droppedCut: bigint;
};

export const COUNTER_FIELDS: readonly (keyof PodCounters)[] = [
  'capturedOutbound',
  'capturedInbound',
  'capturedHbone',
  'bypassed',
  'droppedNoListener',
  'droppedSpoofed',
  'droppedStray',
  'droppedIpv6',
  'droppedFragment',
  'direct',
  'droppedCut',
];

/** A same-node direct-path verdict: this client pod may open connections to that pod port. */
export interface DirectVerdictKey {
  readonly clientIp: string;
  readonly serverIp: string;
  readonly serverPort: number;
}

/** A direct flow as its client opened it. */
export interface FlowKey {
  readonly clientIp: string;
  readonly clientPort: number;
  readonly serverIp: string;
  readonly serverPort: number;
}

export const FLOW_FIN_CLIENT = 1 << 0;
export const FLOW_FIN_SERVER = 1 << 1;
export const FLOW_RST = 1 << 2;

/** What the program keeps of a direct flow (struct weft_direct_flow without its lock). */
export interface DirectFlowState {
  readonly state: number;
  readonly clientBytes: bigint;
  readonly serverBytes: bigint;
  /** CLOCK_MONOTONIC nanoseconds, the clock of process.hrtime.bigint(). */
  readonly openedNs: bigint;
  readonly lastNs: bigint;
  /** 0 while open. */
  readonly closedNs: bigint;
}

/** Ports are stored in network byte order; IPs as raw network-order bytes. */
const directVerdictKeyCodec: Codec<DirectVerdictKey> = {
  size: 12,
  encode(value, into) {
    ipv4Codec.encode(value.clientIp, into.subarray(0, 4));
    ipv4Codec.encode(value.serverIp, into.subarray(4, 8));
    into.writeUInt16BE(value.serverPort, 8);
    into.writeUInt16LE(0, 10);
  },
  decode(from) {
    return {
      clientIp: ipv4Codec.decode(from.subarray(0, 4)),
      serverIp: ipv4Codec.decode(from.subarray(4, 8)),
      serverPort: from.readUInt16BE(8),
    };
  },
};

export const flowKeyCodec: Codec<FlowKey> = {
  size: 12,
  encode(value, into) {
    ipv4Codec.encode(value.clientIp, into.subarray(0, 4));
    ipv4Codec.encode(value.serverIp, into.subarray(4, 8));
    into.writeUInt16BE(value.clientPort, 8);
    into.writeUInt16BE(value.serverPort, 10);
  },
  decode(from) {
    return {
      clientIp: ipv4Codec.decode(from.subarray(0, 4)),
      serverIp: ipv4Codec.decode(from.subarray(4, 8)),
      clientPort: from.readUInt16BE(8),
      serverPort: from.readUInt16BE(10),
    };
  },
};

/** struct weft_direct_flow: lock(4) state(4) next seqs(4+4), then five u64 (56 bytes). */
const directFlowCodec: Codec<DirectFlowState> = {
  size: 56,
  encode() {
    throw new Error('weft_direct_flows entries are written by the BPF program only');
  },
  decode(from) {
    return {
      state: from.readUInt32LE(4),
      clientBytes: from.readBigUInt64LE(16),
      serverBytes: from.readBigUInt64LE(24),
      openedNs: from.readBigUInt64LE(32),
      lastNs: from.readBigUInt64LE(40),
      closedNs: from.readBigUInt64LE(48),
    };
  },
};

/** weft_ifaces stores the pod IP as raw network-order bytes; expose it as a dotted string. */
const ifaceCodec: Codec<{ podIp: string; flags: number }> = {
  size: 8,
  encode(value, into) {
    ipv4Codec.encode(value.podIp, into);
    into.writeUInt32LE(value.flags, 4);
  },
  decode(from) {
    return { podIp: ipv4Codec.decode(from), flags: from.readUInt32LE(4) };
  },
};

export interface WeftMaps {
  /** Slot (see listenerSlot) -> listener socket (update with a socket fd; lookup returns the socket cookie). */
  readonly listeners: TypedMap<number, bigint>;
  /** Local pod IP -> enrollment flags. */
  readonly pods: TypedMap<string, PodEntry>;
  /** Pod veth ifindex -> the pod IP that veth may carry. */
  readonly ifaces: TypedMap<number, { podIp: string; flags: number }>;
  /** The node's own addresses. */
  readonly hostAddrs: TypedMap<string, number>;
  /** Service cluster IPs (see weft_maps.h for why the program needs them). */
  readonly serviceVips: TypedMap<string, number>;
  readonly config: TypedMap<number, DatapathConfig>;
  /** Pod IP ('0.0.0.0' for traffic with no pod) -> counters summed over CPUs. */
  readonly counters: PerCpuCounterMap<string, PodCounters>;
  /** Same-node connections the proxy allowed and BPF may let through directly. */
  readonly directVerdicts: TypedMap<DirectVerdictKey, { flags: number; reserved: number }>;
  /** Live direct flows, kept by the program (read and delete only). */
  readonly directFlows: TypedMap<FlowKey, DirectFlowState>;
  /** Direct flows the proxy cut: their packets are dropped. */
  readonly directCuts: TypedMap<FlowKey, number>;
}

export function openWeftMaps(object: BpfObject): WeftMaps {
  const fd = (name: (typeof MAP_NAMES)[number]) => object.mapFd(name);
  return {
    listeners: new TypedMap('weft_listeners', fd('weft_listeners'), u32Codec, u64Codec),
    pods: new TypedMap(
      'weft_pods',
      fd('weft_pods'),
      ipv4Codec,
      u32StructCodec<PodEntry>(['flags', 'ifindex']),
    ),
    ifaces: new TypedMap('weft_ifaces', fd('weft_ifaces'), u32Codec, ifaceCodec),
    hostAddrs: new TypedMap('weft_host_addrs', fd('weft_host_addrs'), ipv4Codec, u32Codec),
    serviceVips: new TypedMap('weft_service_vips', fd('weft_service_vips'), ipv4Codec, u32Codec),
    config: new TypedMap(
      'weft_config',
      fd('weft_config'),
      u32Codec,
      u32StructCodec<DatapathConfig>(['abiVersion', 'mark', 'markMask', 'hbonePort', 'workers']),
    ),
    counters: new PerCpuCounterMap(
      'weft_counters',
      fd('weft_counters'),
      ipv4Codec,
      COUNTER_FIELDS,
      libbpf.numPossibleCpus(),
    ),
    directVerdicts: new TypedMap(
      'weft_direct_verdicts',
      fd('weft_direct_verdicts'),
      directVerdictKeyCodec,
      u32StructCodec<{ flags: number; reserved: number }>(['flags', 'reserved']),
    ),
    directFlows: new TypedMap(
      'weft_direct_flows',
      fd('weft_direct_flows'),
      flowKeyCodec,
      directFlowCodec,
    ),
    directCuts: new TypedMap('weft_direct_cuts', fd('weft_direct_cuts'), flowKeyCodec, u32Codec),
  };
}

/**
 * The counters map of a node proxy, opened from its pin (for `weft demo`, tests and status
 * tools that run outside the proxy process). Close the returned fd with `close()`.
 */
export function openPinnedCounters(bpffsDir: string): {
  counters: PerCpuCounterMap<string, PodCounters>;
  close(): void;
} {
  const path = `${bpffsDir}/maps/weft_counters`;
  const fd = check(libbpf.objGet(path), `open pinned map ${path}`);
  return {
    counters: new PerCpuCounterMap(
      'weft_counters',
      fd,
      ipv4Codec,
      COUNTER_FIELDS,
      libbpf.numPossibleCpus(),
    ),
    close: () => libc.close(fd),
  };
}
