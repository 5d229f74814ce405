// Which local pods the mesh captures, and keeping the redirect maps equal to that. Enrolling
// or unenrolling a pod changes map entries only: the program stays attached to every
// interface, so a pod that is not enrolled still cannot bypass an enrolled pod's inbound
// capture. This module reads the cluster model and writes maps; it never relays traffic.
import type { Namespace, Workload } from '../config/model.js';
import { POD_ENROLLED, type WeftMaps } from '../bpf/weft-maps.js';
import type { Interface } from '../bpf/attach.js';
import { PodInterfaceError, podInterfaceForIp, readRoutes } from './interfaces.js';

export const DATAPLANE_MODE = 'weft.io/dataplane-mode';

/** Istio ambient's rule: the pod's own annotation wins, then its namespace's; hostNetwork never. */
export function isEnrolled(workload: Workload, namespace: Namespace | undefined): boolean {
  if (workload.hostNetwork || !workload.ip) return false;
  const own = workload.annotations[DATAPLANE_MODE];
  if (own === 'none') return false;
  if (own === 'ambient') return true;
  return namespace?.annotations[DATAPLANE_MODE] === 'ambient';
}

export interface LocalPod {
  readonly workload: Workload;
  readonly enrolled: boolean;
  /** The pod's host-side interface; undefined when it could not be found (see `problem`). */
  readonly iface?: Interface;
  readonly problem?: string;
}

export interface EnrollmentLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** Resolves each local workload to its veth; lookups are injected for tests. */
export function describeLocalPods(
  workloads: readonly Workload[],
  namespaceOf: (name: string) => Namespace | undefined,
  interfaces: readonly Interface[],
  routeLookup?: (ip: string) => string,
): LocalPod[] {
  // One read of the routing table per reconcile, not one per pod.
  const routes = routeLookup ? undefined : readRoutes();
  const lookup = routeLookup ?? ((ip: string) => podInterfaceForIp(ip, routes));
  const byName = new Map(interfaces.map((i) => [i.name, i]));
  return workloads
    .filter((w) => !w.hostNetwork && w.ip)
    .map((workload) => {
      const enrolled = isEnrolled(workload, namespaceOf(workload.namespace));
      try {
        const name = lookup(workload.ip);
        const iface = byName.get(name);
        if (!iface) return { workload, enrolled, problem: `interface ${name} not found` };
        return { workload, enrolled, iface };
      } catch (error) {
        if (error instanceof PodInterfaceError)
          return { workload, enrolled, problem: error.message };
        throw error;
      }
    });
}

export interface ReconcileResult {
  readonly enrolled: string[];
  readonly unenrolled: string[];
  readonly problems: string[];
}

/**
 * Makes weft_ifaces hold every local pod's veth (anti-spoofing applies to all pods) and
 * weft_pods exactly the enrolled ones, so unenrolling leaves no entry behind. The veth entry
 * is written before the pod's, so capture never starts on an unguarded interface.
 */
export function reconcilePodMaps(maps: WeftMaps, pods: readonly LocalPod[]): ReconcileResult {
  const wantPods = new Map<string, LocalPod>();
  const wantIfaces = new Map<number, string>();
  const problems: string[] = [];
  for (const pod of pods) {
    const ref = `${pod.workload.namespace}/${pod.workload.name}`;
    const clash = wantPods.get(pod.workload.ip);
    if (clash) {
      problems.push(
        `pod ${ref} has IP ${pod.workload.ip}, already used by ${clash.workload.namespace}/${clash.workload.name}; an enrolled one keeps the entry (never silently unprotected)`,
      );
      if (clash.enrolled) continue; // the enrolled one stays protected
    }
    wantPods.set(pod.workload.ip, pod);
    if (pod.problem) problems.push(`pod ${ref}: ${pod.problem}`);
    if (pod.iface) wantIfaces.set(pod.iface.index, pod.workload.ip);
  }

  const before = new Map(maps.pods.keys().map((ip) => [ip, maps.pods.get(ip)]));
  for (const [ifindex, podIp] of wantIfaces) maps.ifaces.set(ifindex, { podIp, flags: 0 });
  const enrolled: string[] = [];
  const unenrolled: string[] = [];
  for (const [ip, pod] of wantPods) {
    if (!pod.enrolled) continue;
    const old = before.get(ip);
    if (!old || old.flags !== POD_ENROLLED || old.ifindex !== (pod.iface?.index ?? 0)) {
      maps.pods.set(ip, { flags: POD_ENROLLED, ifindex: pod.iface?.index ?? 0 });
    }
    if (!old) enrolled.push(ip);
  }
  for (const ip of before.keys()) {
    if (wantPods.get(ip)?.enrolled) continue;
    maps.pods.delete(ip);
    unenrolled.push(ip);
  }
  for (const ifindex of maps.ifaces.keys()) {
    if (!wantIfaces.has(ifindex)) maps.ifaces.delete(ifindex);
  }
  return { enrolled, unenrolled, problems };
}

/** Keeps an address-set map (host addresses, service VIPs) equal to `addresses`. */
export function reconcileAddressSet(map: WeftMaps['hostAddrs'], addresses: Iterable<string>): void {
  const want = new Set(addresses);
  const have = new Set(map.keys());
  for (const ip of want) if (!have.has(ip)) map.set(ip, 1);
  for (const ip of have) if (!want.has(ip)) map.delete(ip);
}
