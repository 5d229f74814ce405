// The kernel side of the same-node direct path: the verdicts the redirect program reads at a
// SYN, the flow entries it keeps, and cutting a flow (a BPF drop plus aborting the client's
// socket inside its pod's network namespace, as `ss -K` would). It decides nothing about
// policy; proxy/direct-flows.ts does, through the DirectPathControl interface.
import { readdirSync } from 'node:fs';
import { KernelError } from '../bpf/errors.js';
import { native } from '../bpf/ffi.js';
import { BPF_ANY } from '../bpf/maps.js';
import type { DirectFlowState, DirectVerdictKey, FlowKey, WeftMaps } from '../bpf/weft-maps.js';

/** Where pod network namespaces are bind-mounted (containerd, CRI-O and `ip netns` agree). */
const NETNS_DIRS = ['/var/run/netns', '/run/netns'];
/** An upper bound on /proc entries read while looking for a namespace. */
const MAX_PROC_SCAN = 20_000;

export interface DirectFlowEntry {
  readonly key: FlowKey;
  readonly state: DirectFlowState;
}

export class DirectPath {
  /** nsid (in the node's namespace) -> a path that opens that namespace. */
  private readonly netnsPaths = new Map<number, string>();

  constructor(private readonly maps: WeftMaps) {}

  /**
   * Records a verdict; false when the map is full (or the write fails), which only means the
   * pair's connections keep being relayed.
   */
  allow(key: DirectVerdictKey): boolean {
    try {
      this.maps.directVerdicts.set(key, { flags: 0, reserved: 0 }, BPF_ANY);
      return true;
    } catch {
      return false;
    }
  }

  /** Forgets every verdict: the next connection of each pair is decided by the proxy again. */
  clearVerdicts(): number {
    let cleared = 0;
    for (const key of this.maps.directVerdicts.keys(1_000_000)) {
      if (this.maps.directVerdicts.delete(key)) cleared++;
    }
    return cleared;
  }

  verdictCount(): number {
    return this.maps.directVerdicts.keys().length;
  }

  flows(limit = 1_000_000): DirectFlowEntry[] {
    return this.maps.directFlows.entries(limit).map(([key, state]) => ({ key, state }));
  }

  /** Deletes a flow's entry (and its cut): its packets are no longer the direct path's. */
  forget(key: FlowKey): void {
    this.maps.directFlows.delete(key);
    this.maps.directCuts.delete(key);
  }

  /**
   * Cuts a flow: from now on its packets are dropped (only an RST passes), and the client's
   * socket is aborted, which tells the client (ECONNABORTED) and sends the server an RST.
   * Returns undefined when the socket was aborted, else why not (the drop still holds).
   */
  cut(key: FlowKey): string | undefined {
    const failures: string[] = [];
    try {
      this.maps.directCuts.set(key, 1, BPF_ANY);
    } catch (error) {
      // The abort below still ends the flow; only the drop of stray packets is missing.
      failures.push((error as Error).message);
    }
    const attempts: [string, number, string, number][] = [
      [key.clientIp, key.clientPort, key.serverIp, key.serverPort],
      [key.serverIp, key.serverPort, key.clientIp, key.clientPort],
    ];
    for (const [localIp, localPort, remoteIp, remotePort] of attempts) {
      const failure = this.abortSocket(localIp, localPort, remoteIp, remotePort);
      if (!failure) return undefined;
      failures.push(failure);
    }
    return failures.join('; ');
  }

  private abortSocket(
    localIp: string,
    localPort: number,
    remoteIp: string,
    remotePort: number,
  ): string | undefined {
    const pod = this.maps.pods.get(localIp);
    if (!pod) return `${localIp} is not a pod of this node`;
    const path = this.netnsOfInterface(pod.ifindex);
    if (!path) return `no network namespace found for ${localIp} (veth ${pod.ifindex})`;
    const result = native.tcpDestroy(path, localIp, localPort, remoteIp, remotePort);
    if (result === 0) return undefined;
    return new KernelError(`abort ${localIp}:${localPort} in ${path}`, -result).message;
  }

  /** A path to the network namespace at the far end of host veth `ifindex`. */
  private netnsOfInterface(ifindex: number): string | undefined {
    const nsid = native.linkNetnsId(ifindex);
    if (nsid < 0) return undefined;
    const cached = this.netnsPaths.get(nsid);
    if (cached && native.netnsId(cached) === nsid) return cached;
    this.netnsPaths.delete(nsid);
    for (const path of candidateNetnsPaths()) {
      const id = native.netnsId(path);
      if (id < 0) continue;
      this.netnsPaths.set(id, path);
      if (id === nsid) return path;
    }
    return undefined;
  }
}

/** Named namespaces first (cheap, and where CNI runtimes put pods), then processes' own. */
function* candidateNetnsPaths(): Generator<string> {
  for (const dir of NETNS_DIRS) {
    for (const name of readDir(dir)) yield `${dir}/${name}`;
  }
  let scanned = 0;
  for (const pid of readDir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    if (++scanned > MAX_PROC_SCAN) return;
    yield `/proc/${pid}/ns/net`;
  }
}

function readDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}
