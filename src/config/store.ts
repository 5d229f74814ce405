// config/store.ts: ConfigStore holds the current ClusterState merged from every source,
// bumps its generation on each real change, announces changes with a per-kind diff, and
// answers the lookups the data plane needs (by IP, by node). States are immutable snapshots:
// a listener may keep one. A publish costs in proportion to the objects whose identity it
// changed (plus copying each kind's map), not to the size of the cluster: sources hand the
// same objects back for what did not change. The store must not parse or validate (sources
// do), log on its own account beyond listener failures and source conflicts, or touch the
// kernel or the network.

import { isDeepStrictEqual } from 'node:util';
import { TypedEmitter } from './emitter.js';
import type { Logger } from './logger.js';
import type {
  AuthorizationPolicy,
  EndpointSlice,
  PeerAuthentication,
  Service,
} from './mesh-model.js';
import {
  emptyClusterState,
  emptyDiff,
  formatRef,
  isEmptyDiff,
  keysOf,
  objectKey,
  KIND_INFO,
  KINDS,
  refKey,
  type ClusterDiff,
  type ClusterState,
  type Kind,
  type KindDiff,
  type KindMap,
  type Namespace,
  type Node,
  type ObjectRef,
  type Origin,
  type TranslatedObject,
  type Workload,
} from './model.js';

export interface ConfigStoreEvents {
  /** After every change: the new state, what changed, and the state it replaced. */
  change: [state: ClusterState, diff: ClusterDiff, previous: ClusterState];
}

export interface ConfigStoreOptions {
  /** Receives listener failures and cross-source conflicts. */
  readonly logger?: Logger;
}

/** Phases whose pod no longer owns its IP (the IP may already be reused). */
const TERMINAL_PHASES = new Set(['Succeeded', 'Failed']);

type KindMaps = { readonly [K in Kind]: ReadonlyMap<string, KindMap[K]> };

interface MutableDiff extends KindDiff {
  readonly added: ObjectRef[];
  readonly updated: ObjectRef[];
  readonly removed: ObjectRef[];
}

export class ConfigStore extends TypedEmitter<ConfigStoreEvents> {
  private readonly logger: Logger | undefined;
  /** sourceId -> (refKey -> object), in the order sources first published. */
  private readonly sources = new Map<string, ReadonlyMap<string, TranslatedObject>>();
  private readonly conflicts = new Set<string>();
  private readonly origins = new Map<string, Origin>();
  private current: ClusterState = emptyClusterState();
  private byIp: ReadonlyMap<string, Workload> = new Map();
  private byNode: ReadonlyMap<string, readonly Workload[]> = new Map();
  private byVip: ReadonlyMap<string, Service> = new Map();
  private slicesByService: ReadonlyMap<string, readonly EndpointSlice[]> = new Map();
  private policiesByNs: ReadonlyMap<string, readonly AuthorizationPolicy[]> = new Map();
  private peerAuthsByNs: ReadonlyMap<string, readonly PeerAuthentication[]> = new Map();

  constructor(options: ConfigStoreOptions = {}) {
    const logger = options.logger;
    super(
      logger
        ? (err, event) => logger.error({ err, event }, 'config: a store listener threw')
        : undefined,
    );
    this.logger = logger;
  }

  get state(): ClusterState {
    return this.current;
  }

  get generation(): number {
    return this.current.generation;
  }

  /**
   * Replaces everything `sourceId` contributed with `objects`. When two sources provide the
   * same object, the source that published first wins. Returns the diff (empty, with no
   * generation bump and no event, when nothing changed).
   */
  replaceFromSource(sourceId: string, objects: Iterable<TranslatedObject>): ClusterDiff {
    const mine = new Map<string, TranslatedObject>();
    for (const obj of objects) {
      const key = keysOf(obj).ref;
      if (!mine.has(key)) mine.set(key, obj);
    }
    const before = this.sources.get(sourceId);
    this.sources.set(sourceId, mine);
    // Only what this source changed (objects are compared by identity here; a new object
    // equal to the old one makes no diff below) needs looking at.
    const changed = new Map<string, TranslatedObject>();
    for (const [key, obj] of mine) if (before?.get(key) !== obj) changed.set(key, obj);
    if (before !== undefined) {
      for (const [key, obj] of before) if (!mine.has(key)) changed.set(key, obj);
    }
    return this.apply(changed);
  }

  /** Forgets a source and everything it contributed. */
  removeSource(sourceId: string): ClusterDiff {
    const before = this.sources.get(sourceId);
    if (before === undefined) return emptyDiff();
    this.sources.delete(sourceId);
    return this.apply(before);
  }

  workload(namespace: string, name: string): Workload | undefined {
    return this.current.workloads.get(`${namespace}/${name}`);
  }

  /**
   * The pod that owns `ip` (any of its podIPs). hostNetwork pods are not indexed (they share
   * their node's IP); a pod in a non-terminal phase wins over a Succeeded/Failed one.
   */
  workloadByIp(ip: string): Workload | undefined {
    return this.byIp.get(ip);
  }

  /** Pods scheduled on `nodeName`, sorted by namespace/name. */
  workloadsOnNode(nodeName: string): readonly Workload[] {
    return this.byNode.get(nodeName) ?? [];
  }

  namespace(name: string): Namespace | undefined {
    return this.current.namespaces.get(name);
  }

  node(name: string): Node | undefined {
    return this.current.nodes.get(name);
  }

  service(namespace: string, name: string): Service | undefined {
    return this.current.services.get(`${namespace}/${name}`);
  }

  /**
   * The Service whose cluster IP (any of its IPv4 clusterIPs) is `ip`. Should two services
   * claim one IP, the first by namespace/name wins.
   */
  serviceByVip(ip: string): Service | undefined {
    return this.byVip.get(ip);
  }

  /** The EndpointSlices of Service `namespace/serviceName`, sorted by name. */
  endpointSlicesFor(namespace: string, serviceName: string): readonly EndpointSlice[] {
    return this.slicesByService.get(`${namespace}/${serviceName}`) ?? [];
  }

  /** The AuthorizationPolicies of one namespace (not the root namespace's), sorted by name. */
  authorizationPolicies(namespace: string): readonly AuthorizationPolicy[] {
    return this.policiesByNs.get(namespace) ?? [];
  }

  /** The PeerAuthentications of one namespace, sorted by name. */
  peerAuthentications(namespace: string): readonly PeerAuthentication[] {
    return this.peerAuthsByNs.get(namespace) ?? [];
  }

  /** Where the current version of an object came from (file and line for files). */
  origin(ref: ObjectRef): Origin | undefined {
    return this.origins.get(refKey(ref));
  }

  /**
   * Brings the state in line with the sources for the objects whose refKeys are `changed`
   * (each with some version of the object, for its kind and key): the first source that
   * publishes an object provides it. The result is what a merge of every source from scratch
   * would give: each kind's map sorted by object key, unchanged values kept (their identity
   * too), a diff in object-key order. Work is proportional to the changes plus one copy of
   * each kind's map.
   */
  private apply(changed: ReadonlyMap<string, TranslatedObject>): ClusterDiff {
    const prev = this.current;
    const prevMaps = stateMaps(prev);
    /** Per kind: object key -> the object now in force, undefined when none is. */
    const byKind = new Map<Kind, Map<string, TranslatedObject | undefined>>();
    for (const [key, some] of changed) {
      let winner: TranslatedObject | undefined;
      let first: string | undefined;
      for (const [sourceId, objects] of this.sources) {
        const obj = objects.get(key);
        if (obj === undefined) continue;
        if (first === undefined) {
          winner = obj;
          first = sourceId;
          continue;
        }
        const conflict = `${key}\0${first}\0${sourceId}`;
        if (!this.conflicts.has(conflict)) {
          this.conflicts.add(conflict);
          this.logger?.warn(
            { ref: obj.ref, kept: first, ignored: sourceId },
            `config: ${formatRef(obj.ref)} is provided by two sources; using ${first}`,
          );
        }
      }
      if (winner === undefined) this.origins.delete(key);
      else this.origins.set(key, winner.origin);
      let kind = byKind.get(some.kind);
      if (kind === undefined) byKind.set(some.kind, (kind = new Map()));
      kind.set(keysOf(some).object, winner);
    }

    const diff = {} as Record<Kind, MutableDiff>;
    for (const k of KINDS) diff[k] = { added: [], updated: [], removed: [] };
    for (const [k, objs] of byKind) {
      const prevMap = prevMaps[k];
      const d = diff[k];
      for (const key of [...objs.keys()].sort(cmp)) {
        const obj = objs.get(key);
        const old = prevMap.get(key);
        if (obj === undefined) {
          if (old !== undefined) d.removed.push(refFromKey(k, key));
        } else if (old === undefined) d.added.push(obj.ref);
        else if (!isDeepStrictEqual(old, obj.value)) d.updated.push(obj.ref);
      }
    }
    if (isEmptyDiff(diff)) return diff;

    // Each map only holds values of its kind (set from the object's own kind).
    const fields: Record<string, unknown> = { generation: prev.generation + 1 };
    for (const k of KINDS) {
      const prevMap: ReadonlyMap<string, unknown> = prevMaps[k];
      const objs = byKind.get(k);
      fields[KIND_INFO[k].field] =
        objs === undefined ? new Map(prevMap) : nextMap(prevMap, objs, diff[k]);
    }
    const next = Object.freeze(fields) as unknown as ClusterState;
    this.current = next;
    this.reindex(diff);
    this.emit('change', next, diff, prev);
    return diff;
  }

  /** Rebuilds the indices of the kinds that changed. */
  private reindex(diff: ClusterDiff): void {
    const changed = (k: Kind): boolean =>
      diff[k].added.length + diff[k].updated.length + diff[k].removed.length > 0;
    if (changed('Pod')) this.indexWorkloads();
    if (changed('Service')) {
      const byVip = new Map<string, Service>();
      for (const svc of this.current.services.values()) {
        for (const ip of svc.clusterIPs) if (!byVip.has(ip)) byVip.set(ip, svc);
      }
      this.byVip = byVip;
    }
    if (changed('EndpointSlice')) {
      this.slicesByService = groupBy(
        this.current.endpointSlices.values(),
        (s) => `${s.namespace}/${s.serviceName}`,
      );
    }
    if (changed('AuthorizationPolicy')) {
      this.policiesByNs = groupBy(this.current.authorizationPolicies.values(), (p) => p.namespace);
    }
    if (changed('PeerAuthentication')) {
      this.peerAuthsByNs = groupBy(this.current.peerAuthentications.values(), (p) => p.namespace);
    }
  }

  private indexWorkloads(): void {
    const byIp = new Map<string, Workload>();
    const byNode = new Map<string, Workload[]>();
    for (const w of this.current.workloads.values()) {
      let list = byNode.get(w.nodeName);
      if (list === undefined) byNode.set(w.nodeName, (list = []));
      list.push(w);
      if (w.hostNetwork) continue;
      for (const ip of w.ips) {
        const other = byIp.get(ip);
        if (
          other === undefined ||
          (TERMINAL_PHASES.has(other.phase) && !TERMINAL_PHASES.has(w.phase))
        ) {
          byIp.set(ip, w);
        }
      }
    }
    for (const list of byNode.values()) Object.freeze(list);
    this.byIp = byIp;
    this.byNode = byNode;
  }
}

/**
 * Every object of a state as a source publishes it: another process (a data-plane worker)
 * rebuilds the same state with `replaceFromSource(id, stateObjects(state))`.
 */
export function stateObjects(state: ClusterState): TranslatedObject[] {
  const maps = stateMaps(state);
  const out: TranslatedObject[] = [];
  for (const kind of KINDS) {
    for (const [key, value] of maps[kind]) {
      // Each map only holds values of its kind, so the pairing is sound.
      out.push({ kind, ref: refFromKey(kind, key), value, origin: {} } as TranslatedObject);
    }
  }
  return out;
}

/**
 * What a change did, as a source would publish it: the objects added or updated (with their
 * values in `state`) and the refs removed. A copy of the state kept with
 * `replaceFromSource` follows along by applying these (see workers/state-mirror.ts).
 */
export function changedObjects(
  state: ClusterState,
  diff: ClusterDiff,
): { upserts: TranslatedObject[]; removed: ObjectRef[] } {
  const maps = stateMaps(state);
  const upserts: TranslatedObject[] = [];
  const removed: ObjectRef[] = [];
  for (const kind of KINDS) {
    const d = diff[kind];
    for (const ref of [...d.added, ...d.updated]) {
      const value = maps[kind].get(objectKey(ref));
      // Each map only holds values of its kind, so the pairing is sound.
      if (value !== undefined) {
        upserts.push({ kind, ref, value, origin: {} } as TranslatedObject);
      }
    }
    removed.push(...d.removed);
  }
  return { upserts, removed };
}

/**
 * A kind's next map: `prev` (sorted by key) with `diff` applied, still sorted by key. Values
 * not in the diff keep their identity; `objs` has the objects of the changed keys.
 */
function nextMap(
  prev: ReadonlyMap<string, unknown>,
  objs: ReadonlyMap<string, TranslatedObject | undefined>,
  diff: KindDiff,
): Map<string, unknown> {
  const changedValue = (key: string): unknown => objs.get(key)!.value;
  const keyOf = (ref: ObjectRef): string => objectKey(ref);
  if (diff.added.length === 0) {
    const next = new Map(prev);
    for (const ref of diff.updated) {
      const key = keyOf(ref);
      next.set(key, changedValue(key));
    }
    for (const ref of diff.removed) next.delete(keyOf(ref));
    return next;
  }
  const added = diff.added.map(keyOf); // sorted, as the diff is
  const updated = new Set(diff.updated.map(keyOf));
  const removed = new Set(diff.removed.map(keyOf));
  const next = new Map<string, unknown>();
  let i = 0;
  for (const [key, value] of prev) {
    while (i < added.length && added[i]! < key) {
      next.set(added[i]!, changedValue(added[i]!));
      i++;
    }
    if (removed.has(key)) continue;
    next.set(key, updated.has(key) ? changedValue(key) : value);
  }
  for (; i < added.length; i++) next.set(added[i]!, changedValue(added[i]!));
  return next;
}

function stateMaps(s: ClusterState): KindMaps {
  const maps = {} as Record<Kind, ReadonlyMap<string, unknown>>;
  for (const k of KINDS) maps[k] = s[KIND_INFO[k].field] as ReadonlyMap<string, unknown>;
  return maps as KindMaps;
}

/** Groups values (already sorted by namespace/name) by key; each group frozen, order kept. */
function groupBy<T>(values: Iterable<T>, key: (v: T) => string): ReadonlyMap<string, readonly T[]> {
  const out = new Map<string, T[]>();
  for (const v of values) {
    const k = key(v);
    let list = out.get(k);
    if (list === undefined) out.set(k, (list = []));
    list.push(v);
  }
  for (const list of out.values()) Object.freeze(list);
  return out;
}

function refFromKey(kind: Kind, key: string): ObjectRef {
  if (!KIND_INFO[kind].namespaced) return { kind, name: key };
  const slash = key.indexOf('/');
  return { kind, namespace: key.slice(0, slash), name: key.slice(slash + 1) };
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
