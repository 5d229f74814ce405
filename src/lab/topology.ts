// lab/topology.ts: the address and name plan of a namespace cluster, computed from the options
// alone (pure: no kernel, no processes, no files). It owns the naming rules (prefix, namespace
// and interface names) and the 198.18.0.0/15 addressing; it must never produce a name or an
// address outside them, since cluster.ts trusts the plan when it creates and deletes things.

import { randomBytes, randomUUID } from 'node:crypto';

/** Per-pod overrides, keyed by the pod's default name `pod-<node>-<index>`. */
export interface LabPodOverride {
  /** Kubernetes name (default `pod-<i>-<j>`). */
  name?: string;
  /** Kubernetes namespace (default `default`). */
  namespace?: string;
  /** Service account (default `default`). */
  serviceAccount?: string;
  /** Labels; when absent the pod gets `{ app: <name> }`. Given labels replace the default. */
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export interface LabOptions {
  /** Per-run prefix for namespaces, interfaces and /run/weft-lab/<prefix> (default `w` + 5 hex). */
  prefix?: string;
  /** Number of nodes (1..200). */
  nodes: number;
  /** Pods per node: one count for every node, or one count per node (0..200 each). */
  podsPerNode: number | number[];
  /** Overrides keyed by default pod name, e.g. `{ 'pod-0-1': { namespace: 'shop', serviceAccount: 'cart' } }`. */
  pods?: Record<string, LabPodOverride>;
}

export interface NodePlan {
  index: number;
  name: string;
  netns: string;
  ip: string;
  uplink: string;
  /** Peer of the uplink, attached to the fabric bridge (in the fabric namespace). */
  fabricPort: string;
  podCidr: string;
  gateway: string;
  uid: string;
}

export interface PodPlan {
  nodeIndex: number;
  index: number;
  name: string;
  namespace: string;
  serviceAccount: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  netns: string;
  ip: string;
  hostVeth: string;
  uid: string;
}

export interface LabPlan {
  prefix: string;
  fabricNetns: string;
  bridge: string;
  nodes: NodePlan[];
  pods: PodPlan[];
}

export const LAB_RUN_ROOT = '/run/weft-lab';
export const FABRIC_BRIDGE = 'br0';
const MAX_NODES = 200;
const MAX_PODS_PER_NODE = 200;
const IFNAMSIZ_MAX = 15;
/** Lowercase letter first, then lowercase letters/digits; no `-` (it separates name parts). */
const PREFIX_RE = /^[a-z][a-z0-9]{1,9}$/;
const DNS_LABEL_RE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN_RE = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;

export function randomPrefix(): string {
  return 'w' + randomBytes(3).toString('hex').slice(0, 5);
}

/** Throws unless `prefix` is a valid lab prefix (safe to build names from and to match on). */
export function checkPrefix(prefix: string): void {
  if (typeof prefix !== 'string' || !PREFIX_RE.test(prefix)) {
    throw new Error(
      `lab: invalid prefix ${JSON.stringify(prefix)}: want ${PREFIX_RE} (lowercase letter, then 1-9 lowercase letters/digits)`,
    );
  }
}

/** Does `netns` name a namespace of this prefix's lab (fabric, node or pod)? */
export function isLabNetns(prefix: string, netns: string): boolean {
  checkPrefix(prefix);
  return new RegExp(`^${prefix}-(fab|n\\d+|n\\d+p\\d+)$`).test(netns);
}

export function labDir(prefix: string): string {
  checkPrefix(prefix);
  return `${LAB_RUN_ROOT}/${prefix}`;
}

function checkIfname(name: string): void {
  if (name.length > IFNAMSIZ_MAX) {
    throw new Error(`lab: interface name ${name} is longer than ${IFNAMSIZ_MAX} characters`);
  }
}

function checkCount(what: string, n: unknown, max: number): number {
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > max) {
    throw new Error(`lab: ${what} must be an integer in 0..${max}, got ${JSON.stringify(n)}`);
  }
  return n;
}

/** Validates options and computes every name and address. Throws on anything invalid. */
export function planLab(opts: LabOptions): LabPlan {
  const prefix = opts.prefix ?? randomPrefix();
  checkPrefix(prefix);
  const nodeCount = checkCount('nodes', opts.nodes, MAX_NODES);
  if (nodeCount < 1) throw new Error('lab: nodes must be at least 1');
  const perNode: number[] = Array.isArray(opts.podsPerNode)
    ? opts.podsPerNode.map((n, i) => checkCount(`podsPerNode[${i}]`, n, MAX_PODS_PER_NODE))
    : Array.from({ length: nodeCount }, () =>
        checkCount('podsPerNode', opts.podsPerNode, MAX_PODS_PER_NODE),
      );
  if (perNode.length !== nodeCount) {
    throw new Error(`lab: podsPerNode has ${perNode.length} entries for ${nodeCount} nodes`);
  }

  const nodes: NodePlan[] = [];
  for (let i = 0; i < nodeCount; i++) {
    const n: NodePlan = {
      index: i,
      name: `node-${i}`,
      netns: `${prefix}-n${i}`,
      ip: `198.18.0.${i + 1}`,
      uplink: `${prefix}up`,
      fabricPort: `${prefix}n${i}`,
      podCidr: `198.19.${i}.0/24`,
      gateway: `198.19.${i}.1`,
      uid: randomUUID(),
    };
    checkIfname(n.uplink);
    checkIfname(n.fabricPort);
    nodes.push(n);
  }

  const overrides = opts.pods ?? {};
  const used = new Set<string>();
  const pods: PodPlan[] = [];
  const seen = new Set<string>();
  for (const node of nodes) {
    for (let j = 0; j < perNode[node.index]!; j++) {
      const defaultName = `pod-${node.index}-${j}`;
      used.add(defaultName);
      const o = Object.prototype.hasOwnProperty.call(overrides, defaultName)
        ? overrides[defaultName]!
        : {};
      const name = o.name ?? defaultName;
      const namespace = o.namespace ?? 'default';
      const serviceAccount = o.serviceAccount ?? 'default';
      if (!DNS_SUBDOMAIN_RE.test(name)) throw new Error(`lab: invalid pod name ${name}`);
      if (!DNS_LABEL_RE.test(namespace)) throw new Error(`lab: invalid namespace ${namespace}`);
      if (!DNS_SUBDOMAIN_RE.test(serviceAccount)) {
        throw new Error(`lab: invalid service account ${serviceAccount}`);
      }
      if (seen.has(name)) throw new Error(`lab: duplicate pod name ${name}`);
      seen.add(name);
      const p: PodPlan = {
        nodeIndex: node.index,
        index: j,
        name,
        namespace,
        serviceAccount,
        labels: { ...(o.labels ?? { app: name }) },
        annotations: { ...(o.annotations ?? {}) },
        netns: `${prefix}-n${node.index}p${j}`,
        ip: `198.19.${node.index}.${j + 10}`,
        hostVeth: `${prefix}p${j}`,
        uid: randomUUID(),
      };
      checkIfname(p.hostVeth);
      pods.push(p);
    }
  }
  for (const key of Object.keys(overrides)) {
    if (!used.has(key)) {
      throw new Error(
        `lab: override for ${key}, but there is no such pod (keys are pod-<node>-<index>)`,
      );
    }
  }
  return { prefix, fabricNetns: `${prefix}-fab`, bridge: FABRIC_BRIDGE, nodes, pods };
}
