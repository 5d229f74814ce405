// test/config.test.ts: the config layer: translation and located validation errors, the file
// source (loading, hot reload, last good state) and the store's indices and diffs. Uses temp
// directories only; every wait is bounded.

import test, { type ExecutionContext } from 'ava';
import { mkdtemp, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import {
  ConfigError,
  ConfigStore,
  FileSource,
  loadPath,
  silentLogger,
  type ClusterDiff,
  type ClusterState,
  type Logger,
  type TranslatedObject,
} from '../src/config/index.js';

// pino's logger must satisfy config's Logger interface (checked at compile time).
const pinoLogger: Logger = pino({ level: 'silent' });

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'weft-config-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function write(dir: string, name: string, text: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, text);
  return file;
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A Pod manifest; `extra` lines are appended under the given sections. */
function pod(name: string, ip: string, opts: { ns?: string; node?: string } = {}): string {
  return [
    'apiVersion: v1',
    'kind: Pod',
    'metadata:',
    `  name: ${name}`,
    ...(opts.ns ? [`  namespace: ${opts.ns}`] : []),
    'spec:',
    `  nodeName: ${opts.node ?? 'node-1'}`,
    'status:',
    `  podIP: ${ip}`,
    '',
  ].join('\n');
}

const texts = (errors: readonly ConfigError[]): string[] => errors.map((e) => e.toString());

async function loadOne(t: ExecutionContext, name: string, text: string) {
  const dir = await tempDir(t);
  const file = await write(dir, name, text);
  const result = await loadPath(dir);
  return { dir, file, result, errors: texts(result.errors) };
}

// --- loading ------------------------------------------------------------------------------

test('a valid directory loads: kinds, defaults, Lists, JSON, unknown kinds skipped', async (t) => {
  const dir = await tempDir(t);
  await write(
    dir,
    '00-namespaces.yaml',
    `# namespaces
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {team: a}
  annotations:
    weft.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Namespace
metadata:
  name: default
`,
  );
  await write(
    dir,
    '10-nodes.json',
    JSON.stringify(
      {
        apiVersion: 'v1',
        kind: 'Node',
        metadata: { name: 'node-1', labels: { 'topology.kubernetes.io/zone': 'z1' } },
        status: {
          addresses: [
            { type: 'Hostname', address: 'node-1' },
            { type: 'ExternalIP', address: '203.0.113.1' },
            { type: 'InternalIP', address: '198.18.0.1' },
          ],
        },
      },
      null,
      '\t',
    ),
  );
  await write(
    dir,
    '20-pods.yml',
    `apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  uid: 1f6c4a3e-0000-4000-8000-000000000001
  labels: {app: web}
  annotations:
    weft.io/dataplane-mode: none
spec:
  nodeName: node-1
  serviceAccountName: web-sa
status:
  phase: Running
  podIP: 198.18.1.2
  podIPs:
  - ip: 198.18.1.2
  - ip: fd00::2
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: api}
  spec: {nodeName: node-2}
  status: {podIP: 198.18.1.3}
- apiVersion: v1
  kind: Secret
  metadata: {name: not-read}
---
apiVersion: v1
kind: PodList
items:
- metadata: {name: bare, namespace: shop}
  spec: {nodeName: node-1, hostNetwork: true}
  status: {podIP: 198.18.0.1}
`,
  );
  await write(dir, 'notes.txt', 'not a manifest');
  await write(dir, '.hidden.yaml', 'this: [is not loaded');

  const debug: string[] = [];
  const logger: Logger = { ...silentLogger, debug: (_o, msg) => debug.push(msg ?? '') };
  const result = await loadPath(dir, { logger });
  t.deepEqual(texts(result.errors), []);
  t.deepEqual(result.files, [
    join(dir, '00-namespaces.yaml'),
    join(dir, '10-nodes.json'),
    join(dir, '20-pods.yml'),
  ]);
  t.deepEqual(
    result.objects.map((o) => `${o.kind} ${o.ref.namespace ?? ''}/${o.ref.name}`),
    [
      'Namespace /shop',
      'Namespace /default',
      'Node /node-1',
      'Pod shop/web',
      'Pod default/api',
      'Pod shop/bare',
    ],
  );
  t.is(debug.length, 3, 'Deployment, ConfigMap and Secret are noted at debug level');

  const byName = new Map(result.objects.map((o) => [o.ref.name, o]));
  const web = byName.get('web') as Extract<TranslatedObject, { kind: 'Pod' }>;
  t.deepEqual(web.value, {
    uid: '1f6c4a3e-0000-4000-8000-000000000001',
    name: 'web',
    namespace: 'shop',
    nodeName: 'node-1',
    serviceAccount: 'web-sa',
    ip: '198.18.1.2',
    ips: ['198.18.1.2', 'fd00::2'],
    labels: { app: 'web' },
    annotations: { 'weft.io/dataplane-mode': 'none' },
    hostNetwork: false,
    phase: 'Running',
  });
  t.deepEqual(web.origin, { file: join(dir, '20-pods.yml'), line: 1 });
  t.true(Object.isFrozen(web.value) && Object.isFrozen(web.value.labels));

  const api = byName.get('api') as Extract<TranslatedObject, { kind: 'Pod' }>;
  t.like(api.value, {
    namespace: 'default',
    serviceAccount: 'default',
    phase: 'Running',
    uid: 'default/api',
  });
  t.is(api.origin.line, 31);

  const bare = byName.get('bare') as Extract<TranslatedObject, { kind: 'Pod' }>;
  t.like(bare.value, { hostNetwork: true, ip: '198.18.0.1' });

  const node = byName.get('node-1') as Extract<TranslatedObject, { kind: 'Node' }>;
  t.deepEqual(node.value.addresses, ['198.18.0.1', '203.0.113.1'], 'InternalIP first');
  t.deepEqual(node.value.labels, { 'topology.kubernetes.io/zone': 'z1' });

  const shop = byName.get('shop') as Extract<TranslatedObject, { kind: 'Namespace' }>;
  t.deepEqual(shop.value, {
    name: 'shop',
    labels: { team: 'a' },
    annotations: { 'weft.io/dataplane-mode': 'ambient' },
  });
});

test('a single multi-document file loads', async (t) => {
  const dir = await tempDir(t);
  const file = await write(
    dir,
    'cluster.yaml',
    `${pod('a', '10.0.0.1')}---\n${pod('b', '10.0.0.2')}`,
  );
  const result = await loadPath(file);
  t.deepEqual(texts(result.errors), []);
  t.deepEqual(
    result.objects.map((o) => o.ref.name),
    ['a', 'b'],
  );
  t.is(result.objects[1]!.origin.line, 10);
});

test('hostNetwork pods may omit status.podIP', async (t) => {
  const { result, errors } = await loadOne(
    t,
    'p.yaml',
    'apiVersion: v1\nkind: Pod\nmetadata: {name: agent}\nspec: {nodeName: n1, hostNetwork: true}\n',
  );
  t.deepEqual(errors, []);
  t.like(result.objects[0]!.value, { ip: '', ips: [], hostNetwork: true });
});

test('a missing path is one located error', async (t) => {
  const dir = await tempDir(t);
  const result = await loadPath(join(dir, 'nope'));
  t.deepEqual(texts(result.errors), [
    `${join(dir, 'nope')}: cannot read: no such file or directory`,
  ]);
});

// --- validation: every rule gives an exact, located message ---------------------------------

const validationCases: Array<{ title: string; yaml: string; errors: string[] }> = [
  {
    title: 'status.podIP must be IPv4',
    yaml: `# line 1
# line 2
# line 3
# line 4
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels:
    app: web
spec:
  nodeName: node-1
status:
  podIP: 10.0.0.300
`,
    errors: ['pods.yaml:14: Pod default/web: status.podIP: "10.0.0.300" is not an IPv4 address'],
  },
  {
    title: 'status.podIP is required unless hostNetwork',
    yaml: `apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  nodeName: node-1
status:
  phase: Running
`,
    errors: [
      'pods.yaml:7: Pod default/web: status.podIP: required unless spec.hostNetwork is true',
    ],
  },
  {
    title: 'IPv6 status.podIP is refused, podIPs entries must be IPs',
    yaml: `apiVersion: v1
kind: Pod
metadata: {name: web}
spec: {nodeName: node-1}
status:
  podIP: fd00::1
  podIPs:
  - ip: fd00::1
  - ip: banana
`,
    errors: [
      'pods.yaml:6: Pod default/web: status.podIP: "fd00::1" is not an IPv4 address',
      'pods.yaml:9: Pod default/web: status.podIPs[1].ip: "banana" is not an IP address',
    ],
  },
  {
    title: 'spec.nodeName is required',
    yaml: `apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
status:
  podIP: 10.0.0.1
`,
    errors: ['pods.yaml:1: Pod shop/web: spec.nodeName: required'],
  },
  {
    title: 'metadata.name is required',
    yaml: `apiVersion: v1
kind: Pod
metadata:
  namespace: shop
spec:
  nodeName: node-1
status:
  podIP: 10.0.0.1
`,
    errors: ['pods.yaml:3: Pod: metadata.name: required'],
  },
  {
    title: 'metadata.name must be DNS-1123',
    yaml: `apiVersion: v1
kind: Pod
metadata:
  name: Web_1
spec:
  nodeName: node-1
status:
  podIP: 10.0.0.1
`,
    errors: [
      'pods.yaml:4: Pod default/Web_1: metadata.name: "Web_1" is not a valid DNS-1123 subdomain (lowercase letters, digits, "-" and ".", starting and ending with a letter or digit, at most 253 characters)',
    ],
  },
  {
    title: 'metadata.namespace must be a DNS-1123 label',
    yaml: `apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: my.ns
spec:
  nodeName: node-1
status:
  podIP: 10.0.0.1
`,
    errors: [
      'pods.yaml:5: Pod my.ns/web: metadata.namespace: "my.ns" is not a valid DNS-1123 label (lowercase letters, digits and "-", starting and ending with a letter or digit, at most 63 characters)',
    ],
  },
  {
    title: 'labels and annotations are string to string',
    yaml: `apiVersion: v1
kind: Pod
metadata:
  name: web
  labels:
    app: web
    version: 2
  annotations:
    enabled: true
    empty:
spec:
  nodeName: node-1
status:
  podIP: 10.0.0.1
`,
    errors: [
      'pods.yaml:7: Pod default/web: metadata.labels.version: value must be a string, got number 2 (quote it)',
      'pods.yaml:9: Pod default/web: metadata.annotations.enabled: value must be a string, got boolean true (quote it)',
      'pods.yaml:10: Pod default/web: metadata.annotations.empty: value must be a string, got null (quote it)',
    ],
  },
  {
    title: 'weft.io/dataplane-mode must be ambient or none (Pod)',
    yaml: `apiVersion: v1
kind: Pod
metadata:
  name: web
  annotations:
    weft.io/dataplane-mode: ambiant
spec:
  nodeName: node-1
status:
  podIP: 10.0.0.1
`,
    errors: [
      'pods.yaml:6: Pod default/web: metadata.annotations["weft.io/dataplane-mode"]: "ambiant" is not a dataplane mode (expected ambient or none)',
    ],
  },
  {
    title: 'weft.io/dataplane-mode must be ambient or none (Namespace)',
    yaml: `apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations: {weft.io/dataplane-mode: enabled}
`,
    errors: [
      'pods.yaml:5: Namespace shop: metadata.annotations["weft.io/dataplane-mode"]: "enabled" is not a dataplane mode (expected ambient or none)',
    ],
  },
  {
    title: 'Node addresses must be IPs',
    yaml: `apiVersion: v1
kind: Node
metadata:
  name: node-1
status:
  addresses:
  - type: InternalIP
    address: 10.0.0.256
`,
    errors: [
      'pods.yaml:8: Node node-1: status.addresses[0].address: "10.0.0.256" is not an IP address',
    ],
  },
  {
    title: 'wrong types are named',
    yaml: `apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  nodeName: node-1
  hostNetwork: "yes"
status: Running
`,
    errors: [
      'pods.yaml:7: Pod default/web: spec.hostNetwork: expected true or false, got a string "yes"',
      'pods.yaml:8: Pod default/web: status: expected a map, got a string "Running"',
    ],
  },
  {
    title: 'an unsupported apiVersion of a known kind is an error',
    yaml: `apiVersion: v2
kind: Namespace
metadata: {name: shop}
`,
    errors: [
      'pods.yaml:1: Namespace shop: apiVersion: "v2" is not supported for Namespace (expected v1)',
    ],
  },
  {
    title: 'kind is required',
    yaml: `apiVersion: v1
metadata: {name: shop}
`,
    errors: ['pods.yaml:1: kind: required'],
  },
  {
    title: 'List items are located',
    yaml: `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: ok}
- apiVersion: v1
  kind: Pod
  metadata: {name: web}
  spec: {nodeName: node-1}
  status: {podIP: 1.2.3}
`,
    errors: ['pods.yaml:11: Pod default/web: status.podIP: "1.2.3" is not an IPv4 address'],
  },
  {
    title: 'YAML syntax errors are located',
    yaml: `apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {a: b
`,
    errors: [
      'pods.yaml:6: YAML syntax error: Flow map in block collection must be sufficiently indented and end with a }',
    ],
  },
];

for (const c of validationCases) {
  test(`validation: ${c.title}`, async (t) => {
    const { dir, errors, result } = await loadOne(t, 'pods.yaml', c.yaml);
    t.deepEqual(
      errors,
      c.errors.map((e) => join(dir, e)),
    );
    const invalid = new Set(result.errors.map((e) => e.ref?.name).filter((n) => n !== undefined));
    t.false(
      result.objects.some((o) => invalid.has(o.ref.name) && o.kind === result.errors[0]?.ref?.kind),
      'the invalid object is not loaded',
    );
  });
}

test('ConfigError carries its parts', async (t) => {
  const { dir, result } = await loadOne(t, 'pods.yaml', validationCases[0]!.yaml);
  const e = result.errors[0]!;
  t.is(e.file, join(dir, 'pods.yaml'));
  t.is(e.line, 14);
  t.deepEqual(e.ref, { kind: 'Pod', namespace: 'default', name: 'web' });
  t.is(e.field, 'status.podIP');
  t.is(e.message, '"10.0.0.300" is not an IPv4 address');
});

test('duplicate objects are reported with both locations; the first is used', async (t) => {
  const dir = await tempDir(t);
  await write(
    dir,
    'a.yaml',
    `${pod('web', '10.0.0.1')}---\n${pod('web', '10.0.0.2', { ns: 'other' })}`,
  );
  await write(dir, 'b.yaml', `# copy\n${pod('web', '10.0.0.3')}`);
  const result = await loadPath(dir);
  const a = join(dir, 'a.yaml');
  const b = join(dir, 'b.yaml');
  t.deepEqual(texts(result.errors), [
    `${b}:2: Pod default/web: defined twice: first at ${a}:1, again at ${b}:2; using the first`,
  ]);
  const webs = result.objects.filter((o) => o.ref.name === 'web');
  t.deepEqual(
    webs.map((o) => (o.value as { ip: string }).ip),
    ['10.0.0.1', '10.0.0.2'],
  );
});

// --- store -------------------------------------------------------------------------------

test('store: indices, generations and diffs', async (t) => {
  const dir = await tempDir(t);
  await write(dir, 'ns.yaml', 'apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n');
  await write(dir, 'node.yaml', 'apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n');
  await write(
    dir,
    'pods.yaml',
    [
      pod('a', '10.0.0.1'),
      pod('b', '10.0.0.2', { node: 'node-2' }),
      pod('c', '10.0.0.3', { ns: 'shop' }),
      'apiVersion: v1\nkind: Pod\nmetadata: {name: done}\nspec: {nodeName: node-1}\nstatus: {podIP: 10.0.0.1, phase: Succeeded}\n',
      'apiVersion: v1\nkind: Pod\nmetadata: {name: host}\nspec: {nodeName: node-1, hostNetwork: true}\nstatus: {podIP: 10.0.0.3}\n',
    ].join('---\n'),
  );
  const store = new ConfigStore({ logger: pinoLogger });
  const events: Array<{ state: ClusterState; diff: ClusterDiff; prev: ClusterState }> = [];
  store.on('change', (state, diff, prev) => events.push({ state, diff, prev }));

  const first = await loadPath(dir);
  t.deepEqual(texts(first.errors), []);
  store.replaceFromSource('files', first.objects);
  t.is(store.generation, 1);
  t.is(events.length, 1);
  t.is(events[0]!.prev.generation, 0);
  t.deepEqual(
    events[0]!.diff.Pod.added.map((r) => `${r.namespace}/${r.name}`),
    ['default/a', 'default/b', 'default/done', 'default/host', 'shop/c'],
  );
  t.deepEqual(events[0]!.diff.Node.added, [{ kind: 'Node', name: 'node-1' }]);

  t.is(store.workloadByIp('10.0.0.1')?.name, 'a', 'a running pod wins over a Succeeded one');
  t.is(store.workloadByIp('10.0.0.3')?.name, 'c', 'hostNetwork pods are not indexed by IP');
  t.is(store.workloadByIp('10.9.9.9'), undefined);
  t.deepEqual(
    store.workloadsOnNode('node-1').map((w) => w.name),
    ['a', 'done', 'host', 'c'],
  );
  t.deepEqual(store.workloadsOnNode('nowhere'), []);
  t.is(store.namespace('default')?.name, 'default');
  t.is(store.node('node-1')?.name, 'node-1');
  t.is(store.workload('shop', 'c')?.ip, '10.0.0.3');
  t.deepEqual(store.origin({ kind: 'Pod', namespace: 'shop', name: 'c' }), {
    file: join(dir, 'pods.yaml'),
    line: 19,
  });

  // The same objects again: no change, no event, no new generation.
  const unchangedA = store.workload('default', 'a');
  store.replaceFromSource('files', (await loadPath(dir)).objects);
  t.is(store.generation, 1);
  t.is(events.length, 1);
  t.is(store.workload('default', 'a'), unchangedA, 'unchanged objects keep their identity');

  // Update one, remove one.
  const next = first.objects
    .filter((o) => o.ref.name !== 'b')
    .map((o) =>
      o.kind === 'Pod' && o.ref.name === 'a'
        ? { ...o, value: { ...o.value, ip: '10.0.0.9', ips: ['10.0.0.9'] } }
        : o,
    );
  store.replaceFromSource('files', next);
  t.is(store.generation, 2);
  t.is(events.length, 2);
  const { diff, prev, state } = events[1]!;
  t.deepEqual(diff.Pod, {
    added: [],
    updated: [{ kind: 'Pod', namespace: 'default', name: 'a' }],
    removed: [{ kind: 'Pod', namespace: 'default', name: 'b' }],
  });
  t.is(prev.workloads.get('default/b')?.ip, '10.0.0.2', 'the previous state is intact');
  t.is(state.workloads.has('default/b'), false);
  t.is(store.workloadByIp('10.0.0.9')?.name, 'a');
  t.is(store.workloadByIp('10.0.0.1')?.name, 'done');

  // A second source: where both provide an object, the source that published first wins.
  const c = next.find((o) => o.kind === 'Pod' && o.ref.name === 'c');
  if (c?.kind !== 'Pod') throw new Error('pod c missing');
  store.replaceFromSource('other', [
    { ...c, value: { ...c.value, ip: '10.0.0.42', ips: ['10.0.0.42'] } },
  ]);
  t.is(store.generation, 2, 'the first source still wins');
  t.is(store.workload('shop', 'c')?.ip, '10.0.0.3');
  store.removeSource('files');
  t.is(store.generation, 3);
  t.deepEqual([...store.state.workloads.keys()], ['shop/c']);
  t.is(store.workload('shop', 'c')?.ip, '10.0.0.42');
});

/**
 * The store as it was before it went incremental: every publish merged every source from
 * scratch (first source wins), sorted by object key, and diffed against the previous state.
 * The property test below holds the store to it.
 */
function mergeFromScratch(
  sources: ReadonlyMap<string, readonly TranslatedObject[]>,
  prev: ReadonlyMap<string, ReadonlyMap<string, unknown>>,
): { maps: Map<string, Map<string, unknown>>; diff: Record<string, string[][]> } {
  const merged = new Map<string, TranslatedObject>();
  for (const objects of sources.values()) {
    for (const o of objects) {
      const key = `${o.kind}/${o.ref.namespace ?? ''}/${o.ref.name}`;
      if (!merged.has(key)) merged.set(key, o);
    }
  }
  const objectKey = (o: TranslatedObject) =>
    o.ref.namespace === undefined ? o.ref.name : `${o.ref.namespace}/${o.ref.name}`;
  const sorted = [...merged.values()].sort((a, b) =>
    objectKey(a) < objectKey(b) ? -1 : objectKey(a) > objectKey(b) ? 1 : 0,
  );
  const maps = new Map<string, Map<string, unknown>>();
  const diff: Record<string, string[][]> = {};
  for (const k of ['Pod', 'Namespace', 'Service']) {
    maps.set(k, new Map());
    diff[k] = [[], [], []];
  }
  for (const o of sorted) {
    const key = objectKey(o);
    const old = prev.get(o.kind)?.get(key);
    let value: unknown = o.value;
    if (old === undefined) diff[o.kind]![0]!.push(key);
    else if (JSON.stringify(old) !== JSON.stringify(o.value)) diff[o.kind]![1]!.push(key);
    else value = old;
    maps.get(o.kind)!.set(key, value);
  }
  for (const [k, m] of prev) {
    for (const key of m.keys()) if (!maps.get(k)!.has(key)) diff[k]![2]!.push(key);
  }
  return { maps, diff };
}

test('store: publishing incrementally gives what a merge from scratch gives', (t) => {
  // A seeded PRNG (mulberry32), so a failure can be replayed.
  let seed = 20261127;
  const random = () => {
    seed = (seed + 0x6d2b79f5) >>> 0;
    let x = seed;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
  const names = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'];
  const nss = ['ns1', 'ns2', 'ns3'];
  const make = (kind: string, ns: string, name: string, variant: number): TranslatedObject => {
    const origin = { source: 'test', line: variant };
    if (kind === 'Namespace')
      return {
        kind: 'Namespace',
        ref: { kind, name },
        value: { name, labels: { v: String(variant) }, annotations: {} },
        origin,
      };
    if (kind === 'Service')
      return {
        kind: 'Service',
        ref: { kind, namespace: ns, name },
        value: {
          name,
          namespace: ns,
          labels: {},
          annotations: {},
          clusterIPs: [`10.96.0.${variant}`],
          ports: [],
          internalTrafficPolicy: 'Cluster',
          loadBalancing: 'p2c',
        },
        origin,
      };
    const ip = `10.0.${nss.indexOf(ns)}.${names.indexOf(name) * 4 + variant}`;
    return {
      kind: 'Pod',
      ref: { kind, namespace: ns, name },
      value: {
        uid: `${ns}/${name}`,
        name,
        namespace: ns,
        nodeName: `node-${variant}`,
        serviceAccount: 'default',
        ip,
        ips: [ip],
        labels: {},
        annotations: {},
        hostNetwork: false,
        phase: 'Running',
      },
      origin,
    };
  };
  const store = new ConfigStore({ logger: pinoLogger });
  const published = new Map<string, TranslatedObject[]>();
  const sourceOrder: string[] = [];
  let events = 0;
  let lastDiff: ClusterDiff | undefined;
  store.on('change', (_s, diff) => {
    events++;
    lastDiff = diff;
  });
  for (let step = 0; step < 400; step++) {
    const before = store.state;
    const prevMaps = new Map<string, ReadonlyMap<string, unknown>>([
      ['Pod', before.workloads],
      ['Namespace', before.namespaces],
      ['Service', before.services],
    ]);
    const sourceId = pick(['s1', 's2', 's3']);
    let diff: ClusterDiff;
    if (random() < 0.08) {
      published.delete(sourceId);
      if (sourceOrder.includes(sourceId)) sourceOrder.splice(sourceOrder.indexOf(sourceId), 1);
      diff = store.removeSource(sourceId);
    } else {
      if (!sourceOrder.includes(sourceId)) sourceOrder.push(sourceId);
      const old = published.get(sourceId) ?? [];
      const next: TranslatedObject[] = [];
      for (const o of old) {
        const r = random();
        if (r < 0.1) continue; // removed
        if (r < 0.2)
          next.push(make(o.kind, o.ref.namespace ?? '', o.ref.name, 0)); // changed maybe
        else if (r < 0.3) next.push(make(o.kind, o.ref.namespace ?? '', o.ref.name, 1));
        else next.push(o); // the very same object
      }
      const adds = Math.floor(random() * 4);
      for (let i = 0; i < adds; i++)
        next.push(make(pick(['Pod', 'Pod', 'Service', 'Namespace']), pick(nss), pick(names), 2));
      if (random() < 0.3) next.reverse(); // publication order is not key order
      published.set(sourceId, next);
      diff = store.replaceFromSource(sourceId, next);
    }
    // The reference sees sources in first-publication order, as the store does.
    const order = new Map(sourceOrder.map((id) => [id, published.get(id)!]));
    const want = mergeFromScratch(order, prevMaps);
    const state = store.state;
    const have = new Map<string, ReadonlyMap<string, unknown>>([
      ['Pod', state.workloads],
      ['Namespace', state.namespaces],
      ['Service', state.services],
    ]);
    for (const k of ['Pod', 'Namespace', 'Service']) {
      t.deepEqual(
        [...have.get(k)!.keys()],
        [...want.maps.get(k)!.keys()],
        `step ${step} ${k} keys`,
      );
      for (const [key, value] of want.maps.get(k)!) {
        const got = have.get(k)!.get(key);
        t.deepEqual(got, value, `step ${step} ${k} ${key}`);
        if (value === prevMaps.get(k)!.get(key)) t.is(got, value, `step ${step}: identity kept`);
      }
      const d = diff[k as 'Pod'];
      const keyOf = (r: { namespace?: string; name: string }) =>
        r.namespace === undefined ? r.name : `${r.namespace}/${r.name}`;
      t.deepEqual(
        [d.added.map(keyOf), d.updated.map(keyOf), d.removed.map(keyOf)],
        want.diff[k]!,
        `step ${step} ${k} diff`,
      );
    }
    const changed = Object.values(want.diff).some((lists) => lists.some((l) => l.length > 0));
    t.is(state === before, !changed, `step ${step}: a new state exactly when something changed`);
    if (changed) t.is(lastDiff, diff);
    for (const ref of [...published.values()].flat().map((o) => o.ref)) {
      const owner = [...order].find(([, objs]) =>
        objs.some((o) => o.ref.kind === ref.kind && keyEq(o.ref, ref)),
      );
      const winner = owner![1].find((o) => o.ref.kind === ref.kind && keyEq(o.ref, ref))!;
      t.is(store.origin(ref), winner.origin, `step ${step}: origin of the winner`);
    }
  }
  t.true(events > 100);
});

function keyEq(a: { namespace?: string; name: string }, b: { namespace?: string; name: string }) {
  return a.namespace === b.namespace && a.name === b.name;
}

test('store: a throwing listener does not stop the others', (t) => {
  const errors: unknown[] = [];
  const logger: Logger = { ...silentLogger, error: (o) => errors.push(o) };
  const store = new ConfigStore({ logger });
  let called = 0;
  store.on('change', () => {
    throw new Error('boom');
  });
  const off = store.on('change', () => called++);
  store.replaceFromSource('s', []);
  t.is(store.generation, 0, 'nothing to change');
  const ns: TranslatedObject = {
    kind: 'Namespace',
    ref: { kind: 'Namespace', name: 'x' },
    value: { name: 'x', labels: {}, annotations: {} },
    origin: {},
  };
  store.replaceFromSource('s', [ns]);
  t.is(called, 1);
  t.is(errors.length, 1);
  off();
  store.replaceFromSource('s', []);
  t.is(called, 1);
});

// --- file source: hot reload and last good state ------------------------------------------

interface Harness {
  dir: string;
  store: ConfigStore;
  source: FileSource;
  errors: string[][];
}

async function startSource(
  t: ExecutionContext,
  files: Record<string, string>,
  opts: { debounceMs?: number; pollIntervalMs?: number; racyMs?: number } = {},
): Promise<Harness> {
  const dir = await tempDir(t);
  for (const [name, text] of Object.entries(files)) await write(dir, name, text);
  const store = new ConfigStore();
  const source = new FileSource({
    path: dir,
    store,
    logger: pinoLogger,
    debounceMs: opts.debounceMs ?? 50,
    pollIntervalMs: opts.pollIntervalMs ?? 250,
    ...(opts.racyMs !== undefined && { racyMs: opts.racyMs }),
  });
  const errors: string[][] = [];
  source.on('errors', (errs) => errors.push(texts(errs)));
  t.teardown(() => source.stop());
  const report = await source.start();
  t.deepEqual(texts(report.errors), []);
  t.true(report.initial);
  return { dir, store, source, errors };
}

test('hot reload: an edit reaches the store', async (t) => {
  const h = await startSource(t, { 'pods.yaml': pod('web', '10.0.0.1') });
  t.is(h.store.workload('default', 'web')?.ip, '10.0.0.1');
  const gen = h.store.generation;
  await write(h.dir, 'pods.yaml', pod('web', '10.0.0.2'));
  await waitFor('the edit', () => h.store.workload('default', 'web')?.ip === '10.0.0.2');
  t.is(h.store.generation, gen + 1);
  t.is(h.store.workloadByIp('10.0.0.1'), undefined);
  t.is(h.source.lastReport?.initial, false);

  // A new file is picked up too.
  await write(h.dir, 'more.yaml', pod('api', '10.0.0.3'));
  await waitFor('the new file', () => h.store.workload('default', 'api') !== undefined);
  t.deepEqual(h.errors, []);
});

test('hot reload: the mtime poll catches changes without watch events', async (t) => {
  // A debounce far beyond the wait means only the poll can apply the edit in time.
  const h = await startSource(
    t,
    { 'pods.yaml': pod('web', '10.0.0.1') },
    { debounceMs: 60_000, pollIntervalMs: 100 },
  );
  await write(h.dir, 'pods.yaml', pod('web', '10.0.0.2'));
  await waitFor('the poll', () => h.store.workload('default', 'web')?.ip === '10.0.0.2');
  t.pass();
});

test('hot reload: an invalid edit keeps the last good object and reports the error', async (t) => {
  const h = await startSource(t, {
    'pods.yaml': `${pod('web', '10.0.0.1')}---\n${pod('api', '10.0.0.5')}`,
  });
  await write(h.dir, 'pods.yaml', `${pod('web', '10.0.0.300')}---\n${pod('api', '10.0.0.6')}`);
  await waitFor('the error', () => h.errors.length > 0);
  t.deepEqual(h.errors, [
    [
      `${join(h.dir, 'pods.yaml')}:8: Pod default/web: status.podIP: "10.0.0.300" is not an IPv4 address`,
    ],
  ]);
  t.is(h.store.workload('default', 'web')?.ip, '10.0.0.1', 'last good version kept');
  t.is(h.store.workload('default', 'api')?.ip, '10.0.0.6', 'valid siblings still update');
  t.deepEqual(h.source.lastReport?.kept, [{ kind: 'Pod', namespace: 'default', name: 'web' }]);

  // Fixing it applies the fix.
  await write(h.dir, 'pods.yaml', `${pod('web', '10.0.0.7')}---\n${pod('api', '10.0.0.6')}`);
  await waitFor('the fix', () => h.store.workload('default', 'web')?.ip === '10.0.0.7');
  t.is(h.source.lastReport?.errors.length, 0);
});

test('hot reload: a YAML syntax error keeps every object of that file', async (t) => {
  const h = await startSource(t, {
    'a.yaml': `${pod('one', '10.0.0.1')}---\n${pod('two', '10.0.0.2')}`,
    'b.yaml': pod('three', '10.0.0.3'),
  });
  const gen = h.store.generation;
  await write(h.dir, 'a.yaml', `${pod('one', '10.0.0.9')}---\napiVersion: v1\nkind: [Pod\n`);
  await write(h.dir, 'b.yaml', pod('three', '10.0.0.4'));
  await waitFor('b.yaml applied', () => h.store.workload('default', 'three')?.ip === '10.0.0.4');
  await waitFor('the syntax error', () => h.source.lastReport?.errors.length === 1);
  t.regex(
    h.source.lastReport!.errors[0]!.toString(),
    new RegExp(`^${join(h.dir, 'a.yaml')}:1[23]: YAML syntax error: `),
  );
  t.is(
    h.store.workload('default', 'one')?.ip,
    '10.0.0.1',
    'not even the valid document is applied',
  );
  t.is(h.store.workload('default', 'two')?.ip, '10.0.0.2');
  t.is(h.store.generation, gen + 1);
});

test("hot reload: an unidentifiable invalid object keeps its file's objects", async (t) => {
  const h = await startSource(t, { 'a.yaml': pod('web', '10.0.0.1') });
  await write(h.dir, 'a.yaml', pod('Web', '10.0.0.1'));
  await waitFor('the error', () => h.errors.length > 0);
  t.is(h.store.workload('default', 'web')?.ip, '10.0.0.1');
});

test('hot reload: removing an object or a file removes its objects', async (t) => {
  const h = await startSource(t, {
    'a.yaml': `${pod('one', '10.0.0.1')}---\n${pod('two', '10.0.0.2')}`,
    'b.yaml': pod('three', '10.0.0.3'),
  });
  const removed: string[] = [];
  h.store.on('change', (_s, diff) => removed.push(...diff.Pod.removed.map((r) => r.name)));
  await write(h.dir, 'a.yaml', pod('one', '10.0.0.1'));
  await waitFor('two removed', () => h.store.workload('default', 'two') === undefined);
  t.truthy(h.store.workload('default', 'one'));
  await unlink(join(h.dir, 'b.yaml'));
  await waitFor('three removed', () => h.store.workload('default', 'three') === undefined);
  t.deepEqual(removed, ['two', 'three']);
  t.deepEqual([...h.store.state.workloads.keys()], ['default/one']);
});

test('hot reload: only the files that changed are read again; reload() reads them all', async (t) => {
  const h = await startSource(
    t,
    { 'a.yaml': pod('one', '10.0.0.1'), 'b.yaml': pod('two', '10.0.0.2') },
    { racyMs: 0 },
  );
  const a = join(h.dir, 'a.yaml');
  const b = join(h.dir, 'b.yaml');
  t.deepEqual(h.source.lastReport?.read, [a, b]);
  const objectOf = (name: string) => h.source.lastReport?.objects.find((o) => o.ref.name === name);
  const one = objectOf('one');
  t.truthy(one);
  await write(h.dir, 'b.yaml', pod('two', '10.0.0.9'));
  await waitFor('the edit', () => h.store.workload('default', 'two')?.ip === '10.0.0.9');
  t.deepEqual(h.source.lastReport?.read, [b]);
  t.deepEqual(h.source.lastReport?.parsed, [b]);
  t.is(objectOf('one'), one, 'a.yaml was not read again: the very same object');
  t.is<unknown, unknown>(h.store.state.workloads.get('default/one'), one!.value);
  t.is(await h.source.check(), undefined, 'nothing changed since');

  const generation = h.store.generation;
  const report = await h.source.reload();
  t.deepEqual(report?.parsed, [a, b], 'reload() reads and parses every file');
  t.not(objectOf('one'), one);
  t.deepEqual(objectOf('one'), one);
  t.is(h.store.generation, generation, 'and changes nothing');
});

test('hot reload: a file changed just before it was read is read again, parsed only if its text changed', async (t) => {
  // With the default window, files written by this test are all too fresh to be trusted: a
  // change within their timestamps' granularity would not show in their stamp.
  const h = await startSource(t, {
    'a.yaml': pod('one', '10.0.0.1'),
    'b.yaml': pod('two', '10.0.0.2'),
  });
  const a = join(h.dir, 'a.yaml');
  const b = join(h.dir, 'b.yaml');
  const objectOf = (name: string) => h.source.lastReport?.objects.find((o) => o.ref.name === name);
  const one = objectOf('one');
  await write(h.dir, 'b.yaml', pod('two', '10.0.0.9'));
  await waitFor('the edit', () => h.store.workload('default', 'two')?.ip === '10.0.0.9');
  t.deepEqual(h.source.lastReport?.read, [a, b], 'a.yaml was read again');
  t.deepEqual(h.source.lastReport?.parsed, [b], 'its text had not changed');
  t.is(objectOf('one'), one);

  await write(h.dir, 'a.yaml', pod('one', '10.0.0.5'));
  await waitFor('the second edit', () => h.store.workload('default', 'one')?.ip === '10.0.0.5');
  t.deepEqual(h.source.lastReport?.parsed, [a]);
  t.deepEqual(h.source.lastReport?.read, [a, b]);
});

test('start() resolves with the initial errors; stop() ends reloads', async (t) => {
  const dir = await tempDir(t);
  await write(dir, 'pods.yaml', `${pod('web', '10.0.0.1')}---\n${pod('bad', 'nope')}`);
  const store = new ConfigStore();
  const warned: string[] = [];
  const logger: Logger = { ...silentLogger, warn: (_o, msg) => warned.push(msg ?? '') };
  const source = new FileSource({
    path: join(dir, 'pods.yaml'),
    store,
    logger,
    debounceMs: 20,
    pollIntervalMs: 50,
  });
  t.teardown(() => source.stop());
  const report = await source.start();
  t.true(report.initial);
  t.deepEqual(texts(report.errors), [
    `${join(dir, 'pods.yaml')}:17: Pod default/bad: status.podIP: "nope" is not an IPv4 address`,
  ]);
  t.deepEqual(warned, texts(report.errors), 'without an errors listener, errors are logged');
  t.is(store.workload('default', 'web')?.ip, '10.0.0.1', 'valid objects are published');
  t.is(report.generation, 1);

  await source.stop();
  await write(dir, 'pods.yaml', pod('web', '10.0.0.2'));
  await new Promise((r) => setTimeout(r, 300));
  t.is(store.workload('default', 'web')?.ip, '10.0.0.1');
});
