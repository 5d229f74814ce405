// lb/ picks endpoints; it must not open sockets or read config sources (it is handed
// services/endpoints/nodes).
//
// endpoints.ts: from a Service port and its EndpointSlices to the candidate endpoints of one
// VIP:port, grouped into locality tiers (same node > same zone > same region > any), best
// first. Pure functions over the model types; no state.
//
// Choices, following kube-proxy where Kubernetes defines the behaviour:
// - Readiness: endpoints with conditions.ready. When none is ready, endpoints that are
//   serving && terminating are used instead (kube-proxy's terminating-endpoint fallback,
//   GA since 1.28), so a rolling restart of the last pods does not black-hole the service.
//   The fallback is decided over the whole service (over the node's endpoints with
//   internalTrafficPolicy Local), not per locality tier: a ready endpoint in another zone
//   beats a terminating one on this node.
// - Address: an endpoint's first address (addresses are fungible; kube-proxy uses [0]).
//   The same ip:port listed by two slices (slice churn) counts once, ready copy first.
// - Port: the EndpointSlice controller writes each slice port under the *Service port's* name
//   with the targetPort already resolved for that slice's pods, so the slice port named like
//   the Service port (same protocol) is authoritative, for numeric and named targetPorts.
//   Hand-written slices (the file source) are met half-way: failing that, a slice port named
//   like a named targetPort, or a numeric targetPort itself. A named targetPort that the
//   slice cannot resolve leaves that slice's endpoints out (the controller does the same for
//   pods without the named port).
// - Locality: client = this node's name and its zone/region labels. Endpoint = slice
//   nodeName, slice zone (else its Node's zone label), and its Node's region label. A tier
//   matches only on a known, equal value; unknown locality falls to "any".

import type { Node } from '../config/model.js';
import type { EndpointSlice, Service, ServicePort, Endpoint } from '../config/mesh-model.js';

export const ZONE_LABEL = 'topology.kubernetes.io/zone';
export const REGION_LABEL = 'topology.kubernetes.io/region';
export const DEFAULT_WEIGHT = 1;

/** One backend of one VIP:port, with its resolved port, locality and weight. */
export interface TargetEndpoint {
  /** `ip:port`. Identifies the backend across services: active-connection counts are shared. */
  readonly key: string;
  readonly address: string;
  readonly port: number;
  /** Positive; DEFAULT_WEIGHT unless the caller's weights map says otherwise. */
  readonly weight: number;
  /** false for a serving, terminating endpoint used by the fallback. */
  readonly ready: boolean;
  readonly nodeName?: string;
  readonly zone?: string;
  readonly region?: string;
  readonly targetRef?: Endpoint['targetRef'];
  /** `<namespace>/<name>` of the EndpointSlice it came from. */
  readonly slice: string;
}

export type LocalityTier = 'node' | 'zone' | 'region' | 'any';
export const LOCALITY_TIERS: readonly LocalityTier[] = ['node', 'zone', 'region', 'any'];

export interface TierEndpoints {
  readonly tier: LocalityTier;
  /** Non-empty, sorted by key (stable whatever the slice order). */
  readonly endpoints: readonly TargetEndpoint[];
}

export interface ClientLocality {
  readonly nodeName: string;
  readonly zone?: string;
  readonly region?: string;
}

/** The candidates of one connection to a service VIP:port. */
export interface ServiceTarget {
  /** serviceTargetKey(service, port): the Balancer's per-service state key. */
  readonly key: string;
  readonly service: Service;
  readonly port: ServicePort;
  /**
   * Non-empty tiers, best first: the Balancer picks from the first and fails over to the next
   * when every endpoint of a tier is excluded (failed connects). With internalTrafficPolicy
   * Local at most the `node` tier. Empty: no endpoint, the caller refuses the connection.
   */
  readonly tiers: readonly TierEndpoints[];
  /** tiers[0].endpoints, or [] when there is no endpoint. */
  readonly candidates: readonly TargetEndpoint[];
  /** No endpoint was ready; these are serving, terminating ones. */
  readonly terminatingFallback: boolean;
}

export interface ResolveOptions {
  /** Where the connecting client runs (see clientLocality). */
  readonly locality: ClientLocality;
  /** Node objects by name, for endpoint regions (and zones a slice leaves out). */
  readonly nodes?: ReadonlyMap<string, Node>;
  /**
   * Endpoint weights keyed by `ip:port`, else by `ip`. A missing, non-finite or non-positive
   * weight means DEFAULT_WEIGHT.
   */
  readonly weights?: ReadonlyMap<string, number>;
}

/** Per-service state key of one service port, e.g. `default/web:80/TCP`. */
export function serviceTargetKey(service: Service, port: ServicePort): string {
  return `${service.namespace}/${service.name}:${port.port}/${port.protocol}`;
}

/** Every serviceTargetKey of these services: the live set for Balancer.retain. */
export function serviceTargetKeys(services: Iterable<Service>): Set<string> {
  const keys = new Set<string>();
  for (const s of services) for (const p of s.ports) keys.add(serviceTargetKey(s, p));
  return keys;
}

/** This node's locality from its Node object's topology labels (name only if unknown). */
export function clientLocality(
  nodeName: string,
  nodes: ReadonlyMap<string, Node> | undefined,
): ClientLocality {
  const labels = nodes?.get(nodeName)?.labels;
  return {
    nodeName,
    zone: nonEmpty(labels?.[ZONE_LABEL]),
    region: nonEmpty(labels?.[REGION_LABEL]),
  };
}

/**
 * The port a slice's endpoints serve for `servicePort`, or undefined when the slice does not
 * carry it (see the header for the rules).
 */
export function resolveSlicePort(
  servicePort: ServicePort,
  slice: EndpointSlice,
): number | undefined {
  const named = (name: string) =>
    slice.ports.find((p) => p.name === name && p.protocol === servicePort.protocol)?.port;
  const byServicePort = named(servicePort.name);
  if (byServicePort !== undefined) return byServicePort;
  if (typeof servicePort.targetPort === 'string') return named(servicePort.targetPort);
  return servicePort.targetPort;
}

/** The usable endpoints of one service port across its slices, before locality. */
export function serviceEndpoints(
  service: Service,
  servicePort: ServicePort,
  slices: Iterable<EndpointSlice>,
  options: Omit<ResolveOptions, 'locality'> = {},
): TargetEndpoint[] {
  const byKey = new Map<string, TargetEndpoint>();
  for (const slice of slices) {
    if (slice.namespace !== service.namespace || slice.serviceName !== service.name) continue;
    if (slice.addressType !== 'IPv4') continue;
    const port = resolveSlicePort(servicePort, slice);
    if (port === undefined || !validPort(port)) continue;
    for (const ep of slice.endpoints) {
      const address = ep.addresses[0];
      if (address === undefined || address === '') continue;
      if (!ep.ready && !(ep.serving && ep.terminating)) continue;
      const key = `${address}:${port}`;
      const seen = byKey.get(key);
      if (seen !== undefined && (seen.ready || !ep.ready)) continue;
      const node = ep.nodeName === undefined ? undefined : options.nodes?.get(ep.nodeName);
      byKey.set(key, {
        key,
        address,
        port,
        weight: weightOf(options.weights, key, address),
        ready: ep.ready,
        nodeName: nonEmpty(ep.nodeName),
        zone: nonEmpty(ep.zone) ?? nonEmpty(node?.labels[ZONE_LABEL]),
        region: nonEmpty(node?.labels[REGION_LABEL]),
        targetRef: ep.targetRef,
        slice: `${slice.namespace}/${slice.name}`,
      });
    }
  }
  return [...byKey.values()];
}

/** The best locality tier an endpoint shares with the client. */
export function localityTier(client: ClientLocality, ep: TargetEndpoint): LocalityTier {
  if (ep.nodeName !== undefined && ep.nodeName === client.nodeName) return 'node';
  if (ep.zone !== undefined && ep.zone === client.zone) return 'zone';
  if (ep.region !== undefined && ep.region === client.region) return 'region';
  return 'any';
}

/**
 * The candidate endpoints for a connection to `service`'s VIP on `servicePort`: ready (else
 * serving+terminating) IPv4 endpoints with their resolved port, in locality tiers best first.
 * `slices` may hold other services' slices; they are skipped.
 */
export function resolveServiceTarget(
  service: Service,
  servicePort: ServicePort,
  slices: Iterable<EndpointSlice>,
  options: ResolveOptions,
): ServiceTarget {
  const client = options.locality;
  let pool = serviceEndpoints(service, servicePort, slices, options);
  if (service.internalTrafficPolicy === 'Local') {
    pool = pool.filter((ep) => localityTier(client, ep) === 'node');
  }
  const ready = pool.filter((ep) => ep.ready);
  const terminatingFallback = ready.length === 0 && pool.length > 0;
  const usable = terminatingFallback ? pool : ready;

  const grouped = new Map<LocalityTier, TargetEndpoint[]>();
  for (const ep of usable) {
    const tier = localityTier(client, ep);
    const list = grouped.get(tier);
    if (list === undefined) grouped.set(tier, [ep]);
    else list.push(ep);
  }
  const tiers: TierEndpoints[] = [];
  for (const tier of LOCALITY_TIERS) {
    const endpoints = grouped.get(tier);
    if (endpoints !== undefined) tiers.push({ tier, endpoints: endpoints.sort(byKey) });
  }
  return {
    key: serviceTargetKey(service, servicePort),
    service,
    port: servicePort,
    tiers,
    candidates: tiers[0]?.endpoints ?? [],
    terminatingFallback,
  };
}

function weightOf(
  weights: ReadonlyMap<string, number> | undefined,
  key: string,
  address: string,
): number {
  const w = weights?.get(key) ?? weights?.get(address);
  return w !== undefined && Number.isFinite(w) && w > 0 ? w : DEFAULT_WEIGHT;
}

function validPort(port: number): boolean {
  return Number.isInteger(port) && port > 0 && port < 65536;
}

function nonEmpty(s: string | undefined): string | undefined {
  return s === undefined || s === '' ? undefined : s;
}

function byKey(a: TargetEndpoint, b: TargetEndpoint): number {
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}
