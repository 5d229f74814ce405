// policy/peer-auth.ts: PeerAuthentication: the effective mTLS mode of a (workload, port).
// policy/ decides allow/deny from a connection's facts and the policies; it must not do I/O,
// hold sockets, or log per connection (it returns reasons; callers log).
//
// Precedence (Istio): the workload-selector policy in the pod's namespace > the namespace-wide
// policy in the pod's namespace > the mesh-wide policy (root namespace, no selector) >
// PERMISSIVE. UNSET inherits from the next level. portLevelMtls is honoured only on a
// workload-selector policy (Istio rejects it elsewhere), and an UNSET port inherits the
// workload's mode. Where Istio picks the oldest of several candidates, we have no creation
// time and pick the first by name, reporting the others as ignored.

import type { MtlsMode, PeerAuthentication } from '../config/mesh-model.js';
import type { Workload } from '../config/model.js';

export type EffectiveMtlsMode = Exclude<MtlsMode, 'UNSET'>;

/** An effective mode and the `<namespace>/<name>` of the PeerAuthentication that set it. */
export interface ResolvedMtls {
  readonly mode: EffectiveMtlsMode;
  /** Undefined for the built-in PERMISSIVE default. */
  readonly policy?: string;
}

/** A workload's modes: `ports` holds only ports whose mode differs from the workload default. */
export interface WorkloadMtls {
  readonly base: ResolvedMtls;
  readonly ports?: ReadonlyMap<number, ResolvedMtls>;
}

export interface PeerAuthNote {
  readonly policy: string;
  readonly message: string;
}

const DEFAULT: ResolvedMtls = { mode: 'PERMISSIVE' };

function keyOf(p: PeerAuthentication): string {
  return `${p.namespace}/${p.name}`;
}

function hasSelector(p: PeerAuthentication): boolean {
  return p.selector !== undefined && Object.keys(p.selector).length > 0;
}

export function selectorMatches(
  selector: Readonly<Record<string, string>>,
  labels: Readonly<Record<string, string>>,
): boolean {
  for (const k in selector) {
    if (!Object.prototype.hasOwnProperty.call(labels, k) || labels[k] !== selector[k]) return false;
  }
  return true;
}

/** PeerAuthentication indexed by namespace; immutable once built. */
export class PeerAuthIndex {
  private readonly mesh: PeerAuthentication | undefined;
  private readonly namespaceWide = new Map<string, PeerAuthentication>();
  /** Per namespace, selector policies sorted by name (usually a handful). */
  private readonly selectors = new Map<string, PeerAuthentication[]>();

  constructor(
    peerAuths: readonly PeerAuthentication[],
    rootNamespace: string,
    notes: PeerAuthNote[],
  ) {
    const sorted = [...peerAuths].sort((a, b) =>
      keyOf(a) < keyOf(b) ? -1 : keyOf(a) > keyOf(b) ? 1 : 0,
    );
    let mesh: PeerAuthentication | undefined;
    for (const p of sorted) {
      if (hasSelector(p)) {
        let list = this.selectors.get(p.namespace);
        if (list === undefined) this.selectors.set(p.namespace, (list = []));
        list.push(p);
        continue;
      }
      if (p.portLevelModes.size > 0)
        notes.push({
          policy: keyOf(p),
          message: 'portLevelMtls ignored: it needs a workload selector (as in Istio)',
        });
      const isMesh = p.namespace === rootNamespace;
      const current = isMesh ? mesh : this.namespaceWide.get(p.namespace);
      if (current !== undefined) {
        notes.push({
          policy: keyOf(p),
          message: `ignored: ${isMesh ? 'mesh-wide' : 'namespace-wide'} PeerAuthentication ${keyOf(current)} comes first by name`,
        });
        continue;
      }
      if (isMesh) mesh = p;
      // The root namespace's own pods also take the mesh-wide policy as their namespace one.
      this.namespaceWide.set(p.namespace, p);
    }
    this.mesh = mesh;
  }

  /** Resolves every port of a workload at once (called once per workload per rebuild). */
  resolve(workload: Workload): WorkloadMtls {
    let selected: PeerAuthentication | undefined;
    for (const p of this.selectors.get(workload.namespace) ?? []) {
      if (selectorMatches(p.selector!, workload.labels)) {
        selected = p;
        break;
      }
    }
    const inherited = first(this.namespaceWide.get(workload.namespace), this.mesh);
    const base = selected !== undefined && selected.mode !== 'UNSET' ? from(selected) : inherited;
    if (selected === undefined || selected.portLevelModes.size === 0) return { base };
    const ports = new Map<number, ResolvedMtls>();
    for (const [port, mode] of selected.portLevelModes) {
      if (mode === 'UNSET' || mode === base.mode) continue;
      ports.set(port, { mode, policy: keyOf(selected) });
    }
    return ports.size > 0 ? { base, ports } : { base };
  }
}

function from(p: PeerAuthentication): ResolvedMtls {
  return { mode: p.mode as EffectiveMtlsMode, policy: keyOf(p) };
}

function first(...candidates: (PeerAuthentication | undefined)[]): ResolvedMtls {
  for (const c of candidates) if (c !== undefined && c.mode !== 'UNSET') return from(c);
  return DEFAULT;
}

export function modeForPort(m: WorkloadMtls, port: number): ResolvedMtls {
  return m.ports?.get(port) ?? m.base;
}
