// lb/ picks endpoints; it must not open sockets or read config sources (it is handed
// services/endpoints/nodes).
//
// balancer.ts: the per-node Balancer: active connections per endpoint, per-service
// round-robin state, and the pick among candidates for each algorithm:
// - p2c (default): two distinct endpoints drawn at random in proportion to their weights; the
//   one with the lower active/weight wins, a tie goes to the first drawn. Idle endpoints are
//   thus chosen in proportion to weight, loaded ones steer toward active ∝ weight.
// - random: one endpoint drawn in proportion to weight.
// - round-robin: nginx's smooth weighted round-robin (each pick: current += weight, choose
//   the highest current, subtract the total), per service.
// Excluded endpoints (failed connects) take no part in a pick, as nginx skips failed peers.
// State stays bounded: active counts are dropped at zero; round-robin state is pruned to the
// service's current endpoints on the next pick, and retain() drops removed services.

import { DEFAULT_LOAD_BALANCING, type LoadBalancing } from '../config/mesh-model.js';
import type { ServiceTarget, TargetEndpoint } from './endpoints.js';
import { defaultRandom, weightedIndex, type Random } from './random.js';

/** How many distinct endpoints a connection tries before it is refused. */
export const DEFAULT_CONNECT_ATTEMPTS = 3;

export interface BalancerOptions {
  /** Math.random by default; seededRandom(n) in tests. */
  readonly random?: Random;
}

/** One active connection to an endpoint; release() is idempotent. */
export interface Lease {
  readonly endpoint: TargetEndpoint;
  release(): void;
}

export interface BalancerStats {
  /** Endpoints with at least one active connection. */
  readonly activeEndpoints: number;
  readonly activeConnections: number;
  /** Services with round-robin state, and endpoint entries across them. */
  readonly roundRobinServices: number;
  readonly roundRobinEntries: number;
}

export class Balancer {
  private readonly random: Random;
  /** Endpoint key -> active connections (> 0; absent means 0). */
  private readonly activeCounts = new Map<string, number>();
  /** Service key -> endpoint key -> smooth WRR current weight. */
  private readonly rrState = new Map<string, Map<string, number>>();

  constructor(options: BalancerOptions = {}) {
    this.random = options.random ?? defaultRandom;
  }

  /**
   * Picks one endpoint of `candidates` not in `exclude` (endpoint keys), or undefined when
   * none is left. `serviceKey` keys the round-robin state (serviceTargetKey).
   */
  pick(
    serviceKey: string,
    candidates: readonly TargetEndpoint[],
    exclude?: ReadonlySet<string>,
    algorithm: LoadBalancing = DEFAULT_LOAD_BALANCING,
  ): TargetEndpoint | undefined {
    return this.pickAmong(serviceKey, candidates, candidates, exclude, algorithm);
  }

  /**
   * Picks from the best locality tier of `target` that still has an endpoint outside
   * `exclude`, with the service's algorithm: retries fail over to the next tier once every
   * endpoint of the preferred one failed.
   */
  pickTarget(target: ServiceTarget, exclude?: ReadonlySet<string>): TargetEndpoint | undefined {
    // Round-robin state is kept for the endpoints of every tier (only round-robin reads it).
    const all =
      target.tiers.length <= 1 || target.service.loadBalancing !== 'round-robin'
        ? target.candidates
        : target.tiers.flatMap((t) => t.endpoints);
    for (const { endpoints } of target.tiers) {
      const ep = this.pickAmong(target.key, endpoints, all, exclude, target.service.loadBalancing);
      if (ep !== undefined) return ep;
    }
    return undefined;
  }

  /** Counts one more active connection to `endpoint` until the lease is released. */
  acquire(endpoint: TargetEndpoint): Lease {
    const key = endpoint.key;
    this.activeCounts.set(key, (this.activeCounts.get(key) ?? 0) + 1);
    let released = false;
    return {
      endpoint,
      release: () => {
        if (released) return;
        released = true;
        const n = (this.activeCounts.get(key) ?? 0) - 1;
        if (n > 0) this.activeCounts.set(key, n);
        else this.activeCounts.delete(key);
      },
    };
  }

  /** Active connections to the endpoint with this key. */
  active(endpointKey: string): number {
    return this.activeCounts.get(endpointKey) ?? 0;
  }

  /** Whether any per-service state is kept (retain() has nothing to do otherwise). */
  get hasServiceState(): boolean {
    return this.rrState.size > 0;
  }

  /** Drops per-service state of every service key not in `liveServiceKeys`. */
  retain(liveServiceKeys: Iterable<string>): void {
    const live = liveServiceKeys instanceof Set ? liveServiceKeys : new Set(liveServiceKeys);
    for (const key of this.rrState.keys()) if (!live.has(key)) this.rrState.delete(key);
  }

  stats(): BalancerStats {
    let activeConnections = 0;
    for (const n of this.activeCounts.values()) activeConnections += n;
    let roundRobinEntries = 0;
    for (const m of this.rrState.values()) roundRobinEntries += m.size;
    return {
      activeEndpoints: this.activeCounts.size,
      activeConnections,
      roundRobinServices: this.rrState.size,
      roundRobinEntries,
    };
  }

  /** `live`: every endpoint the service currently has (round-robin state kept for these). */
  private pickAmong(
    serviceKey: string,
    candidates: readonly TargetEndpoint[],
    live: readonly TargetEndpoint[],
    exclude: ReadonlySet<string> | undefined,
    algorithm: LoadBalancing,
  ): TargetEndpoint | undefined {
    const eligible =
      exclude === undefined || exclude.size === 0
        ? candidates
        : candidates.filter((ep) => !exclude.has(ep.key));
    if (algorithm === 'round-robin') return this.roundRobin(serviceKey, eligible, live);
    if (eligible.length <= 1) return eligible[0];
    const weights = eligible.map((ep) => ep.weight);
    const total = weights.reduce((a, b) => a + b, 0);
    const first = weightedIndex(weights, total, this.random);
    if (algorithm === 'random') return eligible[first];
    const second = weightedIndex(weights, total - weights[first]!, this.random, first);
    const a = eligible[first]!;
    const b = eligible[second]!;
    // active(b)/w(b) < active(a)/w(a), without division.
    return this.active(b.key) * a.weight < this.active(a.key) * b.weight ? b : a;
  }

  private roundRobin(
    serviceKey: string,
    eligible: readonly TargetEndpoint[],
    live: readonly TargetEndpoint[],
  ): TargetEndpoint | undefined {
    if (eligible.length === 0) return undefined;
    let state = this.rrState.get(serviceKey);
    if (state === undefined) {
      state = new Map();
      this.rrState.set(serviceKey, state);
    }
    let total = 0;
    let best: TargetEndpoint | undefined;
    let bestCurrent = -Infinity;
    for (const ep of eligible) {
      const current = (state.get(ep.key) ?? 0) + ep.weight;
      state.set(ep.key, current);
      total += ep.weight;
      if (current > bestCurrent) {
        best = ep;
        bestCurrent = current;
      }
    }
    state.set(best!.key, bestCurrent - total);
    if (state.size > live.length) {
      // Some entry is for an endpoint the service no longer has: forget those. Entries are
      // only added for live endpoints, so the state stays within the live set plus one pick.
      const keep = new Set(live.map((ep) => ep.key));
      for (const k of state.keys()) if (!keep.has(k)) state.delete(k);
    }
    return best;
  }
}

export interface ConnectFailure {
  readonly endpoint: TargetEndpoint;
  readonly error: unknown;
}

/** No endpoint could be connected: none existed, or every attempt failed (see failures). */
export class NoEndpointError extends Error {
  constructor(
    readonly serviceKey: string,
    readonly failures: readonly ConnectFailure[],
  ) {
    super(
      failures.length === 0
        ? `no endpoint for ${serviceKey}`
        : `${failures.length} endpoint(s) of ${serviceKey} failed to connect: ` +
            failures.map((f) => `${f.endpoint.key} (${errorText(f.error)})`).join(', '),
      { cause: failures.at(-1)?.error },
    );
    this.name = 'NoEndpointError';
  }
}

export interface Connected<T> {
  readonly endpoint: TargetEndpoint;
  /** Release when the connection closes. */
  readonly lease: Lease;
  readonly connection: T;
  /** Attempts that failed before this one. */
  readonly failures: readonly ConnectFailure[];
}

/**
 * Picks an endpoint of `target` and calls `dial` (the caller's connect, which must settle
 * before any byte of the client's is sent), retrying up to `maxAttempts` distinct endpoints.
 * The lease is taken before dialing so concurrent picks see the connection in flight.
 * Throws NoEndpointError when none connects.
 */
export async function connectWithRetry<T>(
  balancer: Balancer,
  target: ServiceTarget,
  dial: (endpoint: TargetEndpoint) => Promise<T>,
  maxAttempts = DEFAULT_CONNECT_ATTEMPTS,
): Promise<Connected<T>> {
  const exclude = new Set<string>();
  const failures: ConnectFailure[] = [];
  while (failures.length < maxAttempts) {
    const endpoint = balancer.pickTarget(target, exclude);
    if (endpoint === undefined) break;
    const lease = balancer.acquire(endpoint);
    try {
      const connection = await dial(endpoint);
      return { endpoint, lease, connection, failures };
    } catch (error) {
      lease.release();
      failures.push({ endpoint, error });
      exclude.add(endpoint.key);
    }
  }
  throw new NoEndpointError(target.key, failures);
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
