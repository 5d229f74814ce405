// config/model.ts: the cluster model weft works from: plain, readonly types translated from
// Kubernetes objects (only the fields weft uses), and the registry of kinds that ties each
// kind to its place in ClusterState. It holds no behaviour beyond small pure helpers; it must
// not parse, validate, log, or touch the kernel or the network.
//
// Adding a kind: add its type here (or in mesh-model.ts), an entry in KindMap and in
// KIND_INFO, a field in ClusterState, and a translator in kinds/ registered in translate.ts.

import type {
  AuthorizationPolicy,
  EndpointSlice,
  PeerAuthentication,
  Service,
} from './mesh-model.js';

/** Reference to one cluster object. `namespace` is absent for cluster-scoped kinds. */
export interface ObjectRef {
  readonly kind: string;
  readonly namespace?: string;
  readonly name: string;
}

/** A Pod, as weft sees it. */
export interface Workload {
  /** metadata.uid, or `<namespace>/<name>` when the manifest carries none (files rarely do). */
  readonly uid: string;
  readonly name: string;
  readonly namespace: string;
  readonly nodeName: string;
  /** spec.serviceAccountName, `default` when absent. */
  readonly serviceAccount: string;
  /** status.podIP, IPv4 dotted quad. Empty only for a hostNetwork pod that reports none. */
  readonly ip: string;
  /** status.podIPs (ip first), IPv4 or IPv6. */
  readonly ips: readonly string[];
  readonly labels: Readonly<Record<string, string>>;
  readonly annotations: Readonly<Record<string, string>>;
  readonly hostNetwork: boolean;
  /** status.phase; `Running` when the manifest omits it (hand-written files usually do). */
  readonly phase: string;
}

export interface Namespace {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly annotations: Readonly<Record<string, string>>;
}

export interface Node {
  readonly name: string;
  /** IP addresses from status.addresses: InternalIP entries first, then ExternalIP. */
  readonly addresses: readonly string[];
  readonly labels: Readonly<Record<string, string>>;
}

/** Kind name -> translated value. The single list of kinds the config layer understands. */
export interface KindMap {
  Pod: Workload;
  Namespace: Namespace;
  Node: Node;
  Service: Service;
  EndpointSlice: EndpointSlice;
  AuthorizationPolicy: AuthorizationPolicy;
  PeerAuthentication: PeerAuthentication;
}
export type Kind = keyof KindMap;

export interface ClusterState {
  /** Increments on every change published by the store; 0 is the empty initial state. */
  readonly generation: number;
  /** Keyed by `<namespace>/<name>`. */
  readonly workloads: ReadonlyMap<string, Workload>;
  readonly namespaces: ReadonlyMap<string, Namespace>;
  readonly nodes: ReadonlyMap<string, Node>;
  /** Keyed by `<namespace>/<name>`, like every namespaced kind below. */
  readonly services: ReadonlyMap<string, Service>;
  readonly endpointSlices: ReadonlyMap<string, EndpointSlice>;
  readonly authorizationPolicies: ReadonlyMap<string, AuthorizationPolicy>;
  readonly peerAuthentications: ReadonlyMap<string, PeerAuthentication>;
}

/** The ClusterState field of each kind, and whether the kind is namespaced. */
export const KIND_INFO = {
  Pod: { field: 'workloads', namespaced: true },
  Namespace: { field: 'namespaces', namespaced: false },
  Node: { field: 'nodes', namespaced: false },
  Service: { field: 'services', namespaced: true },
  EndpointSlice: { field: 'endpointSlices', namespaced: true },
  AuthorizationPolicy: { field: 'authorizationPolicies', namespaced: true },
  PeerAuthentication: { field: 'peerAuthentications', namespaced: true },
} as const satisfies {
  readonly [K in Kind]: { readonly field: keyof ClusterState; readonly namespaced: boolean };
};

export const KINDS: readonly Kind[] = Object.keys(KIND_INFO) as Kind[];

export function isKind(kind: string): kind is Kind {
  return Object.prototype.hasOwnProperty.call(KIND_INFO, kind);
}

/** Where a translated object came from (file and 1-based line for the file source). */
export interface Origin {
  readonly source?: string;
  readonly file?: string;
  readonly line?: number;
}

/** A validated object ready for the store, tagged with its kind so `value` narrows. */
export type TranslatedObject = {
  [K in Kind]: {
    readonly kind: K;
    readonly ref: ObjectRef;
    readonly value: KindMap[K];
    readonly origin: Origin;
  };
}[Kind];

export interface KindDiff {
  readonly added: readonly ObjectRef[];
  readonly updated: readonly ObjectRef[];
  readonly removed: readonly ObjectRef[];
}

/** What changed between two generations, per kind. */
export type ClusterDiff = { readonly [K in Kind]: KindDiff };

/** Pod and Namespace annotation that enrolls (`ambient`) or opts out (`none`). */
export const ANNOTATION_DATAPLANE_MODE = 'weft.io/dataplane-mode';
export const DATAPLANE_MODES = ['ambient', 'none'] as const;
export type DataplaneMode = (typeof DATAPLANE_MODES)[number];

export const DEFAULT_NAMESPACE = 'default';
export const DEFAULT_SERVICE_ACCOUNT = 'default';

/** Key of an object within its kind: `<namespace>/<name>` or `<name>`. */
export function objectKey(ref: ObjectRef): string {
  return ref.namespace === undefined ? ref.name : `${ref.namespace}/${ref.name}`;
}

/** Key of an object across kinds: `<kind>/<namespace>/<name>` or `<kind>/<name>`. */
export function refKey(ref: ObjectRef): string {
  return `${ref.kind}/${objectKey(ref)}`;
}

/** The refKey and objectKey of each translated object, computed once per object. */
const translatedKeys = new WeakMap<
  TranslatedObject,
  { readonly ref: string; readonly object: string }
>();

/**
 * refKey and objectKey of a translated object's ref, memoized per object (a reload hands the
 * same objects over and over: 10,000 pods are 10,000 string keys to build and hash each time).
 */
export function keysOf(obj: TranslatedObject): { readonly ref: string; readonly object: string } {
  let keys = translatedKeys.get(obj);
  if (keys === undefined) {
    keys = { ref: refKey(obj.ref), object: objectKey(obj.ref) };
    translatedKeys.set(obj, keys);
  }
  return keys;
}

/** `Pod default/web`, `Node node-1`; just the kind when the name is unknown (''). */
export function formatRef(ref: ObjectRef): string {
  return ref.name === '' ? ref.kind : `${ref.kind} ${objectKey(ref)}`;
}

export function emptyClusterState(): ClusterState {
  return {
    generation: 0,
    workloads: new Map(),
    namespaces: new Map(),
    nodes: new Map(),
    services: new Map(),
    endpointSlices: new Map(),
    authorizationPolicies: new Map(),
    peerAuthentications: new Map(),
  };
}

export function emptyDiff(): ClusterDiff {
  const diff = {} as Record<Kind, KindDiff>;
  for (const k of KINDS) diff[k] = { added: [], updated: [], removed: [] };
  return diff;
}

export function isEmptyDiff(diff: ClusterDiff): boolean {
  return KINDS.every(
    (k) =>
      diff[k].added.length === 0 && diff[k].updated.length === 0 && diff[k].removed.length === 0,
  );
}
