// config/store.ts: ConfigStore holds the current ClusterState merged from every source,
// bumps its generation on each real change, announces changes with a per-kind diff, and
// answers the lookups the data plane needs (by IP, by node). States are immutable snapshots:
// a listener may keep one. The store must not parse or validate (sources do), log on its own
// account beyond listener failures and source conflicts, or touch the kernel or the network.

import { isDeepStrictEqual } from 'node:util';
import { TypedEmitter } from './emitter.js';
import type { Logger } from './logger.js';
import {
  emptyClusterState,
  emptyDiff,
  formatRef,
  isEmptyDiff,
  KIND_INFO,
  KINDS,
  objectKey,
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
  private origins: ReadonlyMap<string, Origin> = new Map();
  private current: ClusterState = emptyClusterState();
  private byIp: ReadonlyMap<string, Workload> = new Map();
  private byNode: ReadonlyMap<string, readonly Workload[]> = new Map();

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
      const key = refKey(obj.ref);
      if (!mine.has(key)) mine.set(key, obj);
    }
    this.sources.set(sourceId, mine);
    return this.recompute();
  }

  /** Forgets a source and everything it contributed. */
  removeSource(sourceId: string): ClusterDiff {
    if (!this.sources.delete(sourceId)) return emptyDiff();
    return this.recompute();
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

  /** Where the current version of an object came from (file and line for files). */
  origin(ref: ObjectRef): Origin | undefined {
    return this.origins.get(refKey(ref));
  }

  private recompute(): ClusterDiff {
    const merged = new Map<string, TranslatedObject>();
    const owner = new Map<string, string>();
    for (const [sourceId, objects] of this.sources) {
      for (const [key, obj] of objects) {
        const first = owner.get(key);
        if (first === undefined) {
          merged.set(key, obj);
          owner.set(key, sourceId);
        } else {
          const conflict = `${key}\0${first}\0${sourceId}`;
          if (!this.conflicts.has(conflict)) {
            this.conflicts.add(conflict);
            this.logger?.warn(
              { ref: obj.ref, kept: first, ignored: sourceId },
              `config: ${formatRef(obj.ref)} is provided by two sources; using ${first}`,
            );
          }
        }
      }
    }

    const prev = this.current;
    const prevMaps = stateMaps(prev);
    const nextMaps = {} as Record<Kind, Map<string, unknown>>;
    const diff = {} as Record<Kind, MutableDiff>;
    const origins = new Map<string, Origin>();
    const sorted = [...merged.values()].sort((a, b) => cmp(objectKey(a.ref), objectKey(b.ref)));
    for (const k of KINDS) {
      nextMaps[k] = new Map();
      diff[k] = { added: [], updated: [], removed: [] };
    }
    for (const obj of sorted) {
      origins.set(refKey(obj.ref), obj.origin);
      const key = objectKey(obj.ref);
      const old = prevMaps[obj.kind].get(key);
      let value: unknown = obj.value;
      if (old === undefined) diff[obj.kind].added.push(obj.ref);
      else if (!isDeepStrictEqual(old, obj.value)) diff[obj.kind].updated.push(obj.ref);
      else value = old; // unchanged: keep the identity listeners already hold
      nextMaps[obj.kind].set(key, value);
    }
    for (const k of KINDS) {
      for (const key of prevMaps[k].keys()) {
        if (!nextMaps[k].has(key)) diff[k].removed.push(refFromKey(k, key));
      }
    }
    this.origins = origins;
    if (isEmptyDiff(diff)) return diff;

    // Each map only holds values of its kind (set above from obj.kind).
    const next: ClusterState = Object.freeze({
      generation: prev.generation + 1,
      workloads: nextMaps.Pod as Map<string, Workload>,
      namespaces: nextMaps.Namespace as Map<string, Namespace>,
      nodes: nextMaps.Node as Map<string, Node>,
    });
    this.current = next;
    this.reindex();
    this.emit('change', next, diff, prev);
    return diff;
  }

  private reindex(): void {
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

function stateMaps(s: ClusterState): KindMaps {
  return { Pod: s.workloads, Namespace: s.namespaces, Node: s.nodes };
}

function refFromKey(kind: Kind, key: string): ObjectRef {
  if (!KIND_INFO[kind].namespaced) return { kind, name: key };
  const slash = key.indexOf('/');
  return { kind, namespace: key.slice(0, slash), name: key.slice(slash + 1) };
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
