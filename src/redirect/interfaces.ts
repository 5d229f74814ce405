// Finding a pod's host-side interface from its IP (the route the node uses to reach it) and
// the node's own addresses. Reads /proc, never changes anything.
import { readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';

export interface RouteEntry {
  iface: string;
  destination: number;
  mask: number;
  gateway: number;
}

function parseHexLe(hex: string): number {
  // /proc/net/route prints addresses as host-endian (little-endian here) hex.
  const n = parseInt(hex, 16) >>> 0;
  return (((n & 0xff) << 24) | ((n & 0xff00) << 8) | ((n >>> 8) & 0xff00) | (n >>> 24)) >>> 0;
}

function ipToNumber(ip: string): number {
  return ip.split('.').reduce((acc, part) => ((acc << 8) | Number(part)) >>> 0, 0);
}

/** The main table's IPv4 routes, from /proc/net/route. */
export function readRoutes(): RouteEntry[] {
  const lines = readFileSync('/proc/net/route', 'utf8').trim().split('\n').slice(1);
  return lines.map((line) => {
    const f = line.trim().split(/\s+/);
    return {
      iface: f[0]!,
      destination: parseHexLe(f[1]!),
      gateway: parseHexLe(f[2]!),
      mask: parseHexLe(f[7]!),
    };
  });
}

export class PodInterfaceError extends Error {}

/**
 * The interface a pod IP is routed through, when that route is a direct one (no gateway) for
 * exactly that address: what Calico, Cilium and similar per-pod-route CNIs install.
 */
export function podInterfaceForIp(ip: string, routes: RouteEntry[] = readRoutes()): string {
  const target = ipToNumber(ip);
  let best: RouteEntry | undefined;
  for (const route of routes) {
    if ((target & route.mask) >>> 0 !== route.destination) continue;
    if (!best || route.mask > best.mask) best = route;
  }
  if (!best) throw new PodInterfaceError(`no route to pod IP ${ip} on this node`);
  if (best.mask !== 0xffffffff || best.gateway !== 0) {
    throw new PodInterfaceError(
      `pod IP ${ip} is routed via ${best.iface}${best.gateway ? ' through a gateway' : ''}, not a /32 route to its veth; weft needs a per-pod route (Calico/Cilium-style routing)`,
    );
  }
  return best.iface;
}

/** IPv4 addresses configured on this network namespace's interfaces (loopback included). */
export function hostAddresses(): string[] {
  const out = new Set<string>();
  for (const addresses of Object.values(networkInterfaces())) {
    for (const address of addresses ?? []) if (address.family === 'IPv4') out.add(address.address);
  }
  return [...out];
}
