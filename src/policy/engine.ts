// policy/engine.ts: PolicyEngine, L4 authorization at the node proxy with Istio semantics:
// which AuthorizationPolicies and PeerAuthentications apply to a local workload, and the
// decision for one inbound connection. policy/ decides allow/deny from a connection's facts
// and the policies; it must not do I/O, hold sockets, or log per connection (it returns
// reasons; callers log).
//
// Scope: a root-namespace policy without selector applies mesh-wide, with a selector to the
// matching workloads of every namespace; any other policy to its own namespace's workloads
// (all of them without selector). targetRefs-bound (waypoint) policies are not the node
// proxy's; AUDIT and CUSTOM are not enforced. Both are reported by rebuild(), not silently lost.
// Order: STRICT rejects plaintext; then any DENY match denies; no ALLOW policy -> allow; any
// ALLOW match -> allow; else deny.
//
// Cost: policies are indexed by namespace, and selector policies by one of their label pairs,
// so finding the policies of a workload looks at its own labels, not at every policy. The
// result (DENY list, ALLOW list, mTLS modes) is cached per workload uid until the next
// rebuild or until the workload's labels object changes, so a connection costs a map lookup
// plus matching the policies that actually apply. A rebuild compiles only policy objects it
// has not seen and re-indexes only the namespaces whose policies changed.

import type { AuthorizationPolicy, PeerAuthentication } from '../config/mesh-model.js';
import type { Workload } from '../config/model.js';
import {
  compilePolicy,
  matchPolicy,
  MatchContext,
  parsePeer,
  type CompiledPolicy,
  type CompileNotes,
  type Peer,
} from './compile.js';
import { parseIp } from './ip.js';
import {
  modeForPort,
  PeerAuthIndex,
  selectorMatches,
  type EffectiveMtlsMode,
  type WorkloadMtls,
} from './peer-auth.js';

export const DEFAULT_ROOT_NAMESPACE = 'weft-system';
export const DEFAULT_TRUST_DOMAIN = 'cluster.local';

/** The facts of one inbound connection to a local pod. */
export interface ConnectionFacts {
  /** The local pod the connection is for. */
  readonly destination: Workload;
  readonly destinationPort: number;
  /** The address the connection was made to; `destination.ip` when absent. */
  readonly destinationIp?: string;
  readonly source: {
    /** Peer SPIFFE ID (`spiffe://td/ns/x/sa/y`) from mTLS; undefined for plaintext. */
    readonly identity?: string;
    /** Peer (client) IP; what ipBlocks and remoteIpBlocks both match at L4. */
    readonly ip: string;
  };
  /** True when the connection arrived over HBONE mTLS. */
  readonly mtls: boolean;
}

export interface Decision {
  readonly allow: boolean;
  /** One human line for the access log / denial message. */
  readonly reason: string;
  /** `<namespace>/<name>` of the deciding policy (a PeerAuthentication for a STRICT denial). */
  readonly policy?: string;
  /** Index in the deciding AuthorizationPolicy's spec.rules of the rule that matched. */
  readonly rule?: number;
}

export interface PolicyOptions {
  /** Namespace of mesh-wide policies; `weft-system` by default (Istio: `istio-system`). */
  readonly rootNamespace?: string;
  /** Local trust domain; a principal written `cluster.local/...` means this one. */
  readonly trustDomain?: string;
}

export interface PolicyNote {
  readonly kind: 'AuthorizationPolicy' | 'PeerAuthentication';
  /** `<namespace>/<name>`. */
  readonly policy: string;
  readonly message: string;
}

/** What rebuild() could not enforce as written: log each note once, visibly. */
export interface RebuildReport {
  /** AuthorizationPolicies holding L7-only fields: DENY rules widened, ALLOW rules inert. */
  readonly partiallyEnforced: readonly PolicyNote[];
  /** Not enforced at all here: targetRefs (waypoint), AUDIT, CUSTOM, shadowed PeerAuthentications. */
  readonly ignored: readonly PolicyNote[];
  /** Values that do not parse (CIDR, port, ...), handled like L7 fields (fail closed). */
  readonly invalid: readonly PolicyNote[];
  /** ALLOW + DENY policies the node proxy enforces. */
  readonly enforced: number;
}

/** Selector policies bucketed by one of their label pairs: key -> value -> policies. */
type LabelIndex = Map<string, Map<string, CompiledPolicy[]>>;

interface Scope {
  /** Policies that apply to every workload of the scope. */
  readonly all: CompiledPolicy[];
  readonly bySelector: LabelIndex;
  /** What the scope was built from, in order (a rebuild reuses a scope built from the same). */
  readonly from: readonly CompiledPolicy[];
}

interface WorkloadEntry {
  readonly labels: Readonly<Record<string, string>>;
  readonly namespace: string;
  readonly deny: readonly CompiledPolicy[];
  readonly allow: readonly CompiledPolicy[];
  readonly mtls: WorkloadMtls;
}

interface CompiledEntry {
  readonly trustDomain: string;
  readonly compiled: CompiledPolicy;
  readonly notes: CompileNotes;
}

interface Index {
  readonly generation: number;
  readonly rootNamespace: string;
  readonly trustDomain: string;
  readonly mesh: Scope;
  readonly namespaces: Map<string, Scope>;
  readonly peerAuth: PeerAuthIndex;
  /** What peerAuth was built from, and the notes it made. */
  readonly peerAuthFrom: readonly PeerAuthentication[];
  readonly peerAuthNotes: readonly { policy: string; message: string }[];
}

const EMPTY_SCOPE: Scope = { all: [], bySelector: new Map(), from: [] };
/** Bound on cached workloads (a node has far fewer local pods); the cache restarts beyond it. */
const MAX_CACHED_WORKLOADS = 16384;
/** Bound on cached parsed peer identities (one per peer service account in practice). */
const MAX_CACHED_PEERS = 4096;

const ALLOW_NO_POLICY: Decision = { allow: true, reason: 'allowed: no ALLOW policy applies' };

/**
 * The scope of `policies`: `previous` itself when it was built from the very same compiled
 * policies in the same order (a rebuild after an unrelated change re-indexes nothing).
 */
function scopeOf(policies: readonly CompiledPolicy[], previous: Scope | undefined): Scope {
  if (previous !== undefined && sameItems(previous.from, policies)) return previous;
  const scope: Scope = { all: [], bySelector: new Map(), from: policies };
  fillScope(scope, policies);
  return scope;
}

function sameItems<T>(a: readonly T[], b: readonly T[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Adds a scope's policies. A selector policy goes in the bucket of its rarest label pair in
 * that scope (all pairs must match, so any one will do), so a bucket such as `app=web` shared
 * by many `{app: web, version: vN}` policies does not have to be scanned for every workload.
 */
function fillScope(scope: Scope, policies: readonly CompiledPolicy[]): void {
  const frequency = new Map<string, number>();
  const pairKey = (k: string, v: string): string => `${k}\u0000${v}`;
  for (const p of policies) {
    if (p.selector === undefined) continue;
    for (const k in p.selector) {
      const pk = pairKey(k, p.selector[k]!);
      frequency.set(pk, (frequency.get(pk) ?? 0) + 1);
    }
  }
  for (const p of policies) {
    if (p.selector === undefined) {
      scope.all.push(p);
      continue;
    }
    let bestKey = '';
    let bestCount = Infinity;
    for (const k in p.selector) {
      const n = frequency.get(pairKey(k, p.selector[k]!))!;
      if (n < bestCount || (n === bestCount && k < bestKey)) {
        bestKey = k;
        bestCount = n;
      }
    }
    const v = p.selector[bestKey]!;
    let byValue = scope.bySelector.get(bestKey);
    if (byValue === undefined) scope.bySelector.set(bestKey, (byValue = new Map()));
    let list = byValue.get(v);
    if (list === undefined) byValue.set(v, (list = []));
    list.push(p);
  }
}

function collect(
  scope: Scope,
  labels: Readonly<Record<string, string>>,
  out: CompiledPolicy[],
): void {
  for (const p of scope.all) out.push(p);
  if (scope.bySelector.size === 0) return;
  for (const k in labels) {
    if (!Object.prototype.hasOwnProperty.call(labels, k)) continue;
    const list = scope.bySelector.get(k)?.get(labels[k]!);
    if (list === undefined) continue;
    for (const p of list) if (selectorMatches(p.selector!, labels)) out.push(p);
  }
}

function byKey(a: CompiledPolicy, b: CompiledPolicy): number {
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

export class PolicyEngine {
  private index: Index;
  private cache = new Map<string, WorkloadEntry>();
  private peers = new Map<string, Peer>();
  /**
   * Compiled form of each policy object seen, so a rebuild only compiles the policies that
   * changed (the store hands unchanged objects back as the same objects).
   */
  private readonly compiled = new WeakMap<AuthorizationPolicy, CompiledEntry>();

  constructor(
    policies: readonly AuthorizationPolicy[] = [],
    peerAuths: readonly PeerAuthentication[] = [],
    options: PolicyOptions = {},
  ) {
    this.index = PolicyEngine.build(
      policies,
      peerAuths,
      options,
      0,
      undefined,
      this.compiled,
    ).index;
  }

  /** Increments on every rebuild(); callers re-check live connections when it moves. */
  get generation(): number {
    return this.index.generation;
  }

  get rootNamespace(): string {
    return this.index.rootNamespace;
  }

  /**
   * Replaces the whole policy set (atomically: evaluation sees the old set or the new one).
   * Options left out keep their previous values. Never throws on policy content; what is not
   * enforced as written is in the report.
   */
  rebuild(
    policies: readonly AuthorizationPolicy[],
    peerAuths: readonly PeerAuthentication[],
    options: PolicyOptions = {},
  ): RebuildReport {
    const { index, report } = PolicyEngine.build(
      policies,
      peerAuths,
      options,
      this.index.generation + 1,
      this.index,
      this.compiled,
    );
    this.index = index;
    this.cache = new Map();
    return report;
  }

  /** Drops the cached view of a workload (call when a local pod goes away). */
  forgetWorkload(uid: string): void {
    this.cache.delete(uid);
  }

  /** Effective PeerAuthentication mode for a workload's port (never UNSET). */
  mtlsMode(workload: Workload, port: number): EffectiveMtlsMode {
    return modeForPort(this.entry(workload).mtls, port).mode;
  }

  /** `<namespace>/<name>` of the AuthorizationPolicies that apply to a workload (for debug). */
  policiesFor(workload: Workload): { readonly deny: string[]; readonly allow: string[] } {
    const e = this.entry(workload);
    return { deny: e.deny.map((p) => p.key), allow: e.allow.map((p) => p.key) };
  }

  evaluate(input: ConnectionFacts): Decision {
    const e = this.entry(input.destination);
    if (!input.mtls) {
      const m = modeForPort(e.mtls, input.destinationPort);
      if (m.mode === 'STRICT')
        return {
          allow: false,
          reason: `denied: plaintext rejected, PeerAuthentication ${m.policy!} requires mTLS (STRICT) on port ${input.destinationPort}`,
          policy: m.policy!,
        };
    }
    if (e.deny.length === 0 && e.allow.length === 0) return ALLOW_NO_POLICY;
    const sourceIp = parseIp(input.source.ip);
    if (sourceIp === undefined)
      return {
        allow: false,
        reason: `denied: source IP ${JSON.stringify(input.source.ip)} is not an IP address`,
      };
    const identity = input.mtls ? input.source.identity : undefined;
    const ctx = new MatchContext(
      identity === undefined ? undefined : this.peer(identity),
      sourceIp,
      input.destinationPort,
      input.destinationIp ?? input.destination.ip,
    );
    for (const p of e.deny) {
      const rule = matchPolicy(p, ctx);
      if (rule >= 0) return { allow: false, reason: p.reason, policy: p.key, rule };
    }
    if (e.allow.length === 0) return ALLOW_NO_POLICY;
    for (const p of e.allow) {
      const rule = matchPolicy(p, ctx);
      if (rule >= 0) return { allow: true, reason: p.reason, policy: p.key, rule };
    }
    return {
      allow: false,
      reason:
        e.allow.length === 1
          ? `denied: ALLOW policy ${e.allow[0]!.key} applies and does not match`
          : `denied: ${e.allow.length} ALLOW policies apply and none matches`,
    };
  }

  private peer(identity: string): Peer {
    let p = this.peers.get(identity);
    if (p === undefined) {
      if (this.peers.size >= MAX_CACHED_PEERS) this.peers = new Map();
      p = parsePeer(identity);
      this.peers.set(identity, p);
    }
    return p;
  }

  private entry(w: Workload): WorkloadEntry {
    const cached = this.cache.get(w.uid);
    if (cached !== undefined && cached.labels === w.labels && cached.namespace === w.namespace)
      return cached;
    const idx = this.index;
    const applicable: CompiledPolicy[] = [];
    collect(idx.mesh, w.labels, applicable);
    collect(idx.namespaces.get(w.namespace) ?? EMPTY_SCOPE, w.labels, applicable);
    applicable.sort(byKey);
    const entry: WorkloadEntry = {
      labels: w.labels,
      namespace: w.namespace,
      deny: applicable.filter((p) => p.action === 'DENY'),
      allow: applicable.filter((p) => p.action === 'ALLOW'),
      mtls: idx.peerAuth.resolve(w),
    };
    if (this.cache.size >= MAX_CACHED_WORKLOADS) this.cache = new Map();
    this.cache.set(w.uid, entry);
    return entry;
  }

  private static build(
    policies: readonly AuthorizationPolicy[],
    peerAuths: readonly PeerAuthentication[],
    options: PolicyOptions,
    generation: number,
    previous: Index | undefined,
    compiledCache: WeakMap<AuthorizationPolicy, CompiledEntry>,
  ): { index: Index; report: RebuildReport } {
    const rootNamespace =
      options.rootNamespace ?? previous?.rootNamespace ?? DEFAULT_ROOT_NAMESPACE;
    const trustDomain = options.trustDomain ?? previous?.trustDomain ?? DEFAULT_TRUST_DOMAIN;
    const partiallyEnforced: PolicyNote[] = [];
    const ignored: PolicyNote[] = [];
    const invalid: PolicyNote[] = [];
    const meshPolicies: CompiledPolicy[] = [];
    const byNamespace = new Map<string, CompiledPolicy[]>();
    let enforced = 0;
    for (const pol of policies) {
      const note = (list: PolicyNote[], message: string): void => {
        list.push({ kind: 'AuthorizationPolicy', policy: `${pol.namespace}/${pol.name}`, message });
      };
      if (pol.targetRefs.length > 0) {
        note(
          ignored,
          `bound by targetRefs (${pol.targetRefs.join(', ')}): enforced by a waypoint, not the node proxy`,
        );
        continue;
      }
      if (pol.action === 'AUDIT' || pol.action === 'CUSTOM') {
        note(ignored, `action ${pol.action} is not enforced by the node proxy`);
        continue;
      }
      let done = compiledCache.get(pol);
      if (done === undefined || done.trustDomain !== trustDomain) {
        const notes: CompileNotes = { partial: [], invalid: [] };
        done = { trustDomain, compiled: compilePolicy(pol, trustDomain, notes), notes };
        compiledCache.set(pol, done);
      }
      const compiled = done.compiled;
      // One note per policy and kind, so a caller logging each note logs a policy once.
      if (done.notes.partial.length > 0) note(partiallyEnforced, done.notes.partial.join('; '));
      if (done.notes.invalid.length > 0) note(invalid, done.notes.invalid.join('; '));
      enforced++;
      if (pol.namespace === rootNamespace) {
        meshPolicies.push(compiled);
      } else {
        let list = byNamespace.get(pol.namespace);
        if (list === undefined) byNamespace.set(pol.namespace, (list = []));
        list.push(compiled);
      }
    }
    // Scopes whose policies are all unchanged (the same compiled objects, in the same order)
    // are taken over from the previous index: one changed policy re-indexes one namespace.
    const mesh = scopeOf(meshPolicies, previous?.mesh);
    const namespaces = new Map<string, Scope>();
    for (const [ns, list] of byNamespace) {
      namespaces.set(ns, scopeOf(list, previous?.namespaces.get(ns)));
    }
    let peerAuth: PeerAuthIndex;
    let paNotes: readonly { policy: string; message: string }[];
    if (
      previous !== undefined &&
      previous.rootNamespace === rootNamespace &&
      sameItems(previous.peerAuthFrom, peerAuths)
    ) {
      peerAuth = previous.peerAuth;
      paNotes = previous.peerAuthNotes;
    } else {
      const notes: { policy: string; message: string }[] = [];
      peerAuth = new PeerAuthIndex(peerAuths, rootNamespace, notes);
      paNotes = notes;
    }
    for (const n of paNotes) ignored.push({ kind: 'PeerAuthentication', ...n });
    return {
      index: {
        generation,
        rootNamespace,
        trustDomain,
        mesh,
        namespaces,
        peerAuth,
        peerAuthFrom: [...peerAuths],
        peerAuthNotes: paNotes,
      },
      report: { partiallyEnforced, ignored, invalid, enforced },
    };
  }
}
