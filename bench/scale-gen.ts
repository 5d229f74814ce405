// bench/scale-gen.ts: generates a synthetic cluster as Kubernetes manifests for bench/scale.ts
// (pure: builds objects and YAML text; writing them is the caller's). The shape:
//
// - `nodes` Nodes (node-0 .. node-N-1) in 3 zones of one region; node i has the InternalIP
//   198.18.0.<i+1> and the pod CIDR 198.19.<i>.0/24 (every address in 198.18.0.0/15, like the
//   lab's, so that a generated node-0 matches a lab's node-0).
// - `namespaces` application namespaces `team-000` .. (90% annotated
//   `weft.io/dataplane-mode: ambient`) plus the root namespace `weft-system` and `monitoring`.
// - `services` applications spread evenly over the namespaces; each has one Service (ports
//   http 80 -> 8080, and grpc 9090 for one in three), one EndpointSlice listing its pods, and
//   pods / services replicas. Applications use their own service account, except one in
//   four which runs as `default`.
// - pods are spread evenly over the nodes (each run of `nodes` consecutive pods covers every
//   node once), so the replicas of one application land on different nodes and node-0 holds
//   1/nodes of the pods, from applications of every namespace.
// - `policies` AuthorizationPolicies, the realistic mix described at POLICY_MIX below.
// - a few PeerAuthentications (mesh-wide PERMISSIVE, STRICT in one namespace in ten).
//
// Files: one per namespace and kind (`team-007-pods.yaml`, `-services.yaml` (Services and
// EndpointSlices), `-policies.yaml`), plus `00-cluster.yaml` (Namespaces and Nodes) and
// `weft-system.yaml` (mesh-wide policies), so that editing one object rewrites one file of a
// few dozen objects, as in a GitOps repository.

import { stringify } from 'yaml';

export interface ScaleShape {
  readonly pods: number;
  readonly services: number;
  readonly policies: number;
  readonly nodes: number;
  readonly namespaces: number;
}

export const FULL_SHAPE: ScaleShape = {
  pods: 10_000,
  services: 2_000,
  policies: 5_000,
  nodes: 50,
  namespaces: 100,
};

/** The baseline: the same shape at 1/100 (node-0 holds 2 pods). */
export const SMALL_SHAPE: ScaleShape = {
  pods: 100,
  services: 20,
  policies: 50,
  nodes: 50,
  namespaces: 10,
};

export const ROOT_NAMESPACE = 'weft-system';
export const TRUST_DOMAIN = 'cluster.local';
export const AMBIENT = { 'weft.io/dataplane-mode': 'ambient' } as const;

export interface GenPod {
  readonly name: string;
  readonly namespace: string;
  readonly app: string;
  readonly serviceAccount: string;
  readonly node: string;
  readonly ip: string;
  readonly labels: Record<string, string>;
  readonly enrolled: boolean;
}

export interface GeneratedCluster {
  readonly shape: ScaleShape;
  /** File name -> YAML text. */
  readonly files: Map<string, string>;
  /** File name -> the objects in it (same order), for editing one object later. */
  readonly objects: Map<string, Record<string, unknown>[]>;
  readonly pods: readonly GenPod[];
  readonly namespaces: readonly string[];
  /** Namespaces annotated ambient. */
  readonly ambientNamespaces: ReadonlySet<string>;
  /** Objects per kind. */
  readonly counts: Record<string, number>;
}

type Obj = Record<string, unknown>;

/** 198.19.<node>.<k+10>: the pod CIDR of node i holds its first 246 pods. */
function podIp(node: number, k: number): string {
  if (k > 245) throw new Error(`more than 246 pods on node-${node}: raise --nodes`);
  return `198.19.${node}.${k + 10}`;
}

/** Service cluster IPs from 198.18.128.1 up (198.18.128.0/17: 32,767 of them). */
function serviceIp(i: number): string {
  const n = i + 1;
  return `198.18.${128 + Math.floor(n / 256)}.${n % 256}`;
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

function pad(n: number, width: number): string {
  return String(n).padStart(width, '0');
}

function hash(s: string): string {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return (h >>> 0).toString(36).padStart(7, '0').slice(-7);
}

function principal(namespace: string, sa: string): string {
  return `${TRUST_DOMAIN}/ns/${namespace}/sa/${sa}`;
}

export function generateCluster(shape: ScaleShape): GeneratedCluster {
  const { nodes, namespaces: nsCount, services, pods: podCount, policies } = shape;
  if (services < nsCount) throw new Error('need at least one service per namespace');
  const objects = new Map<string, Obj[]>();
  const add = (file: string, obj: Obj): void => {
    let list = objects.get(file);
    if (list === undefined) objects.set(file, (list = []));
    list.push(obj);
  };
  const counts: Record<string, number> = {};
  const count = (kind: string): void => {
    counts[kind] = (counts[kind] ?? 0) + 1;
  };

  // ---- namespaces and nodes
  const namespaces = Array.from({ length: nsCount }, (_, i) => `team-${pad(i, 3)}`);
  const ambient = new Set(namespaces.filter((_, i) => i % 10 !== 9));
  for (const name of [ROOT_NAMESPACE, 'monitoring', ...namespaces]) {
    add('00-cluster.yaml', {
      apiVersion: 'v1',
      kind: 'Namespace',
      metadata: {
        name,
        labels: { 'kubernetes.io/metadata.name': name },
        ...(ambient.has(name) && { annotations: { ...AMBIENT } }),
      },
    });
    count('Namespace');
  }
  for (let i = 0; i < nodes; i++) {
    add('00-cluster.yaml', {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: {
        name: `node-${i}`,
        labels: {
          'kubernetes.io/hostname': `node-${i}`,
          'kubernetes.io/os': 'linux',
          'topology.kubernetes.io/region': 'region-a',
          'topology.kubernetes.io/zone': `zone-${i % 3}`,
        },
      },
      spec: { podCIDR: `198.19.${i}.0/24` },
      status: {
        addresses: [
          { type: 'InternalIP', address: `198.18.0.${i + 1}` },
          { type: 'Hostname', address: `node-${i}` },
        ],
      },
    });
    count('Node');
  }

  // ---- applications: services, pods, endpoint slices
  interface App {
    readonly name: string;
    readonly namespace: string;
    readonly index: number;
    readonly sa: string;
    readonly grpc: boolean;
    readonly pods: GenPod[];
  }
  const apps: App[] = [];
  const appsByNs = new Map<string, App[]>();
  for (let a = 0; a < services; a++) {
    const namespace = namespaces[a % nsCount]!;
    const local = Math.floor(a / nsCount);
    const name = `app-${pad(local, 3)}`;
    const app: App = {
      name,
      namespace,
      index: a,
      sa: a % 4 === 3 ? 'default' : name,
      grpc: a % 3 === 0,
      pods: [],
    };
    apps.push(app);
    let list = appsByNs.get(namespace);
    if (list === undefined) appsByNs.set(namespace, (list = []));
    list.push(app);
  }
  const genPods: GenPod[] = [];
  let stride = 37;
  while (gcd(stride, nodes) !== 1) stride++;
  const perNode = new Array<number>(nodes).fill(0);
  for (let g = 0; g < podCount; g++) {
    // Replicas of one application are consecutive, so round-robin nodes spread them.
    const app = apps[Math.floor((g * services) / podCount)]!;
    // Each block of `nodes` consecutive pods covers every node once (37 is prime to the usual
    // node counts; any multiplier prime to `nodes` would do), with offsets varying per block.
    const node = ((g % nodes) * stride + Math.floor(g / nodes)) % nodes;
    const replica = app.pods.length;
    const labels = {
      app: app.name,
      version: replica % 2 === 0 ? 'v1' : 'v2',
      tier: ['front', 'back', 'data'][app.index % 3]!,
      'pod-template-hash': hash(app.namespace + app.name).slice(0, 5),
    };
    const pod: GenPod = {
      name: `${app.name}-${hash(`${app.namespace}/${app.name}`)}-${hash(String(g)).slice(0, 5)}`,
      namespace: app.namespace,
      app: app.name,
      serviceAccount: app.sa,
      node: `node-${node}`,
      ip: podIp(node, perNode[node]!++),
      labels,
      enrolled: ambient.has(app.namespace),
    };
    app.pods.push(pod);
    genPods.push(pod);
    add(`${app.namespace}-pods.yaml`, {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: pod.name,
        namespace: pod.namespace,
        uid: `00000000-0000-4000-8000-${pad(g, 12)}`,
        labels,
        annotations: { 'kubectl.kubernetes.io/default-container': 'app' },
      },
      spec: {
        nodeName: pod.node,
        serviceAccountName: pod.serviceAccount,
        containers: [
          {
            name: 'app',
            image: `registry.example/${app.name}:1.0`,
            ports: [
              { name: 'http', containerPort: 8080, protocol: 'TCP' },
              ...(app.grpc ? [{ name: 'grpc', containerPort: 9090, protocol: 'TCP' }] : []),
            ],
          },
        ],
      },
      status: {
        phase: 'Running',
        hostIP: `198.18.0.${node + 1}`,
        podIP: pod.ip,
        podIPs: [{ ip: pod.ip }],
        conditions: [{ type: 'Ready', status: 'True' }],
      },
    });
    count('Pod');
  }
  for (const app of apps) {
    const file = `${app.namespace}-services.yaml`;
    const ports = [
      { name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' },
      ...(app.grpc ? [{ name: 'grpc', port: 9090, targetPort: 9090, protocol: 'TCP' }] : []),
    ];
    const annotations: Record<string, string> = {};
    if (app.index % 10 === 1) annotations['weft.io/load-balancing'] = 'round-robin';
    add(file, {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: {
        name: app.name,
        namespace: app.namespace,
        labels: { app: app.name },
        annotations,
      },
      spec: {
        type: 'ClusterIP',
        clusterIP: serviceIp(app.index),
        clusterIPs: [serviceIp(app.index)],
        selector: { app: app.name },
        ports,
        ...(app.index % 25 === 7 && { internalTrafficPolicy: 'Local' }),
      },
    });
    count('Service');
    add(file, {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: {
        name: `${app.name}-${hash(app.name + app.namespace).slice(0, 5)}`,
        namespace: app.namespace,
        labels: { 'kubernetes.io/service-name': app.name },
      },
      addressType: 'IPv4',
      ports: [
        { name: 'http', port: 8080, protocol: 'TCP' },
        ...(app.grpc ? [{ name: 'grpc', port: 9090, protocol: 'TCP' }] : []),
      ],
      endpoints: app.pods.map((p) => {
        const node = Number(p.node.slice('node-'.length));
        return {
          addresses: [p.ip],
          conditions: { ready: true, serving: true, terminating: false },
          nodeName: p.node,
          zone: `zone-${node % 3}`,
          targetRef: { kind: 'Pod', namespace: p.namespace, name: p.name },
        };
      }),
    });
    count('EndpointSlice');
  }

  // ---- authorization policies
  const policyObjects = generatePolicies(policies, namespaces, appsByNs);
  for (const [file, p] of policyObjects) {
    add(file, p);
    count('AuthorizationPolicy');
  }

  // ---- peer authentications
  add(`${ROOT_NAMESPACE}.yaml`, peerAuth('default', ROOT_NAMESPACE, 'PERMISSIVE'));
  count('PeerAuthentication');
  namespaces.forEach((ns, i) => {
    if (i % 10 !== 4) return;
    add(`${ns}-policies.yaml`, peerAuth('strict', ns, 'STRICT'));
    count('PeerAuthentication');
  });

  const files = new Map<string, string>();
  for (const [name, list] of [...objects].sort(([a], [b]) => (a < b ? -1 : 1))) {
    files.set(name, renderYaml(list));
  }
  return {
    shape,
    files,
    objects,
    pods: genPods,
    namespaces,
    ambientNamespaces: ambient,
    counts,
  };
}

export function renderYaml(list: readonly Obj[]): string {
  return list.map((o) => stringify(o, { lineWidth: 0 })).join('---\n');
}

function peerAuth(name: string, namespace: string, mode: string): Obj {
  return {
    apiVersion: 'security.istio.io/v1',
    kind: 'PeerAuthentication',
    metadata: { name, namespace },
    spec: { mtls: { mode } },
  };
}

function authz(
  name: string,
  namespace: string,
  spec: Obj,
  labels: Record<string, string> = {},
): Obj {
  return {
    apiVersion: 'security.istio.io/v1',
    kind: 'AuthorizationPolicy',
    metadata: { name, namespace, labels },
    spec,
  };
}

/**
 * POLICY_MIX, per namespace, in this order until the namespace's share is used up:
 * - `allow-same-namespace`: namespace-wide ALLOW from its own namespace and `monitoring`;
 * - `allow-ingress`: namespace-wide ALLOW from the ingress gateway's principal, ports 80/8080;
 * - `deny-blocked-range`: namespace-wide DENY from an ipBlock;
 * - per application `<app>-allow-callers`: workload-selected ALLOW from three callers'
 *   principals (two in the namespace, one in the next namespace), to port 8080;
 * - per application `<app>-v2-allow`: selector {app, version: v2}, ALLOW from namespaces, to
 *   ports 8080 and 9090, with a `when` on source.ip;
 * - per application `<app>-deny-admin`: DENY to ports 15000/15020 except from monitoring;
 * - one namespace in ten: `deny-l7-debug`, a DENY with an L7 field (`paths`), which the node
 *   proxy widens to its L4 remainder (and logs once).
 * Mesh-wide in the root namespace: a DENY from an ipBlock, a DENY of a principal suffix, and a
 * root selector policy for one application label.
 */
function generatePolicies(
  total: number,
  namespaces: readonly string[],
  appsByNs: ReadonlyMap<string, readonly { name: string; sa: string }[]>,
): [string, Obj][] {
  const out: [string, Obj][] = [];
  const rootFile = `${ROOT_NAMESPACE}.yaml`;
  const mesh: Obj[] = [
    authz('mesh-deny-blocked', ROOT_NAMESPACE, {
      action: 'DENY',
      rules: [{ from: [{ source: { ipBlocks: ['198.18.250.0/24'] } }] }],
    }),
    authz('mesh-deny-debug-sa', ROOT_NAMESPACE, {
      action: 'DENY',
      rules: [{ from: [{ source: { principals: ['*/sa/debug'] } }] }],
    }),
    authz('mesh-allow-app-000-probes', ROOT_NAMESPACE, {
      selector: { matchLabels: { app: 'app-000' } },
      action: 'ALLOW',
      rules: [
        {
          from: [{ source: { namespaces: ['monitoring'] } }],
          to: [{ operation: { ports: ['9090'] } }],
        },
      ],
    }),
  ];
  for (const p of mesh.slice(0, Math.min(mesh.length, total))) out.push([rootFile, p]);
  const left = total - out.length;
  const perNs = namespaces.map(
    (_, i) => Math.floor(left / namespaces.length) + (i < left % namespaces.length ? 1 : 0),
  );
  namespaces.forEach((ns, i) => {
    const file = `${ns}-policies.yaml`;
    const apps = appsByNs.get(ns) ?? [];
    const next = namespaces[(i + 1) % namespaces.length]!;
    const nextApps = appsByNs.get(next) ?? [];
    const candidates: Obj[] = [
      authz('allow-same-namespace', ns, {
        action: 'ALLOW',
        rules: [{ from: [{ source: { namespaces: [ns, 'monitoring'] } }] }],
      }),
      authz('allow-ingress', ns, {
        action: 'ALLOW',
        rules: [
          {
            from: [{ source: { principals: [principal('ingress', 'gateway')] } }],
            to: [{ operation: { ports: ['80', '8080'] } }],
          },
        ],
      }),
      authz('deny-blocked-range', ns, {
        action: 'DENY',
        rules: [{ from: [{ source: { ipBlocks: [`198.18.${200 + (i % 50)}.0/24`] } }] }],
      }),
    ];
    if (i % 10 === 3) {
      candidates.push(
        authz('deny-l7-debug', ns, {
          action: 'DENY',
          rules: [{ to: [{ operation: { ports: ['8080'], paths: ['/debug/*'] } }] }],
        }),
      );
    }
    apps.forEach((app, j) => {
      const callers = [apps[(j + 1) % apps.length]!, apps[(j + 2) % apps.length]!].map((c) =>
        principal(ns, c.sa),
      );
      const remote = nextApps[j % Math.max(1, nextApps.length)];
      if (remote !== undefined) callers.push(principal(next, remote.sa));
      candidates.push(
        authz(
          `${app.name}-allow-callers`,
          ns,
          {
            selector: { matchLabels: { app: app.name } },
            action: 'ALLOW',
            rules: [
              {
                from: [{ source: { principals: callers } }],
                to: [{ operation: { ports: ['8080'] } }],
              },
            ],
          },
          { app: app.name },
        ),
      );
    });
    apps.forEach((app) => {
      candidates.push(
        authz(
          `${app.name}-v2-allow`,
          ns,
          {
            selector: { matchLabels: { app: app.name, version: 'v2' } },
            action: 'ALLOW',
            rules: [
              {
                from: [{ source: { namespaces: [next, 'monitoring'] } }],
                to: [{ operation: { ports: ['8080', '9090'] } }],
                when: [{ key: 'source.ip', values: ['198.19.0.0/16'] }],
              },
            ],
          },
          { app: app.name },
        ),
      );
    });
    apps.forEach((app) => {
      candidates.push(
        authz(
          `${app.name}-deny-admin`,
          ns,
          {
            selector: { matchLabels: { app: app.name } },
            action: 'DENY',
            rules: [
              {
                from: [{ source: { notNamespaces: ['monitoring'] } }],
                to: [{ operation: { ports: ['15000', '15020'] } }],
              },
            ],
          },
          { app: app.name },
        ),
      );
    });
    // More than the mix provides: extra per-application ALLOWs by port, so any total fits.
    for (let k = 0; candidates.length < perNs[i]!; k++) {
      const app = apps[k % apps.length]!;
      candidates.push(
        authz(
          `${app.name}-allow-port-${9100 + Math.floor(k / apps.length)}`,
          ns,
          {
            selector: { matchLabels: { app: app.name } },
            action: 'ALLOW',
            rules: [
              {
                from: [{ source: { namespaces: [ns] } }],
                to: [{ operation: { ports: [String(9100 + Math.floor(k / apps.length))] } }],
              },
            ],
          },
          { app: app.name },
        ),
      );
    }
    for (const p of candidates.slice(0, perNs[i])) out.push([file, p]);
  });
  return out;
}
