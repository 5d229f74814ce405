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

export const WEFT_ABI_VERSION = 2;

export const MAP_NAMES = [
  'weft_listeners',
  'weft_pods',
  'weft_ifaces',
  'weft_host_addrs',
  'weft_service_vips',
  'weft_config',
  'weft_counters',
] as const;

export const PROGRAM_NAME = 'weft_redirect';

export enum ListenerSlot {
  Outbound = 0,
  Inbound = 1,
  Hbone = 2,
}

export const POD_ENROLLED = 1;

export type PodEntry = { flags: number; ifindex: number };
export type DatapathConfig = {
  abiVersion: number;
  mark: number;
  markMask: number;
  hbonePort: number;
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
];

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
  /** Slot -> listener socket (update with a socket fd; lookup returns the socket cookie). */
  readonly listeners: TypedMap<ListenerSlot, bigint>;
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
      u32StructCodec<DatapathConfig>(['abiVersion', 'mark', 'markMask', 'hbonePort']),
    ),
    counters: new PerCpuCounterMap(
      'weft_counters',
      fd('weft_counters'),
      ipv4Codec,
      COUNTER_FIELDS,
      libbpf.numPossibleCpus(),
    ),
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
