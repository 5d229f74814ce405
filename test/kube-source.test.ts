// KubeSource against the real @kubernetes/client-node and a small in-test HTTPS API server:
// list, watch, bookmarks, 410 Gone, reconnect backoff, last good state, RBAC errors, patches.
// Every wait is bounded; servers and sources are closed even when a test fails.

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { KubeConfig } from '@kubernetes/client-node';
import {
  ConfigStore,
  KINDS,
  silentLogger,
  type ConfigError,
  type Kind,
} from '../src/config/index.js';
import {
  KubeApiError,
  KubeSource,
  kubeResource,
  type KubeLoadReport,
  type KubeSourceOptions,
} from '../src/config/kube-source.js';
import {
  KubeApiServer,
  KubeApiServerControl,
  type ApiResource,
  type RequestRecord,
} from './helpers/kube-api-server.js';

/** The resources of every kind registered right now (the registry grows; so does this). */
function registeredResources(): ApiResource[] {
  return KINDS.map((k) => {
    const r = kubeResource(k);
    return {
      group: r.group,
      version: r.version,
      plural: r.plural,
      kind: r.kind,
      namespaced: r.namespaced,
    };
  });
}

function pod(
  name: string,
  ip: string | undefined,
  opts: {
    ns?: string;
    node?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  } = {},
): object {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name,
      namespace: opts.ns ?? 'default',
      labels: opts.labels ?? { app: name },
      ...(opts.annotations && { annotations: opts.annotations }),
    },
    spec: {
      ...(opts.node !== '' && { nodeName: opts.node ?? 'node-1' }),
      serviceAccountName: 'default',
      containers: [{ name: 'app', image: 'app' }],
    },
    status: {
      phase: ip ? 'Running' : 'Pending',
      ...(ip !== undefined && { podIP: ip, podIPs: [{ ip }] }),
    },
  };
}

function node(name: string, ip: string): object {
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: { name, labels: { 'kubernetes.io/hostname': name } },
    status: { addresses: [{ type: 'InternalIP', address: ip }] },
  };
}

function namespace(name: string): object {
  return { apiVersion: 'v1', kind: 'Namespace', metadata: { name } };
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Env {
  server: KubeApiServer;
  store: ConfigStore;
  kc: KubeConfig;
  source(opts?: Partial<KubeSourceOptions>): KubeSource;
}

/** Runs `fn` with a fresh server; closes every source and the server afterwards, always. */
async function withServer(
  t: ExecutionContext,
  fn: (env: Env) => Promise<void>,
  setup: (server: KubeApiServer) => void = () => {},
): Promise<void> {
  const server = await KubeApiServer.start({ resources: registeredResources() });
  const sources: KubeSource[] = [];
  try {
    setup(server);
    const kc = new KubeConfig();
    kc.loadFromString(server.kubeconfigYaml());
    const store = new ConfigStore();
    const source = (opts: Partial<KubeSourceOptions> = {}): KubeSource => {
      const s = new KubeSource({
        store,
        logger: silentLogger,
        kubeConfig: kc,
        backoff: { initialMs: 40, maxMs: 400 },
        ...opts,
      });
      sources.push(s);
      return s;
    };
    await fn({ server, store, kc, source });
  } catch (err) {
    t.log(
      'requests:',
      server.requests
        .map((r) => `${r.method} ${r.path} ${JSON.stringify(r.query)} -> ${r.status}`)
        .join('\n'),
    );
    throw err;
  } finally {
    for (const s of sources) await s.stop();
    await server.close();
  }
}

function seed(server: KubeApiServer): void {
  server.apply(namespace('default'));
  server.apply(node('node-1', '198.18.0.1'));
  server.apply(node('node-2', '198.18.0.2'));
  server.apply(pod('web', '198.19.1.10'));
  server.apply(pod('db', '198.19.2.10', { node: 'node-2' }));
  server.apply(pod('pending', undefined, { node: '' })); // not scheduled: skipped
  server.apply(pod('starting', undefined)); // scheduled, no IP yet: skipped
}

const watchesOf = (reqs: readonly RequestRecord[], path: string): RequestRecord[] =>
  reqs.filter((r) => r.path === path && r.watch);
const listsOf = (reqs: readonly RequestRecord[], path: string): RequestRecord[] =>
  reqs.filter((r) => r.path === path && !r.watch && r.method === 'GET');

test.serial(
  'the initial list of every kind populates the store, then every kind is watched',
  async (t) => {
    await withServer(
      t,
      async ({ server, store, source }) => {
        const dir = await mkdtemp(join(tmpdir(), 'weft-kube-'));
        try {
          // The kubeconfig file path, as weft node --kubeconfig would use it.
          const src = source({
            kubeConfig: undefined,
            kubeconfigPath: await server.kubeconfig(join(dir, 'kubeconfig')),
          });
          const report = await src.start();
          t.true(report.initial);
          t.deepEqual(report.errors, []);
          t.is(report.generation, 1);
          t.true(src.synced);
          t.deepEqual(Object.keys(report.synced).sort(), [...KINDS].sort());
          t.deepEqual([...store.state.workloads.keys()], ['default/db', 'default/web']);
          t.is(store.workload('default', 'web')?.ip, '198.19.1.10');
          t.deepEqual([...store.state.nodes.keys()], ['node-1', 'node-2']);
          t.truthy(store.namespace('default'));
          t.is(
            store.origin({ kind: 'Pod', namespace: 'default', name: 'web' })?.source,
            'kube:Pod/default/web',
          );
          t.is(store.origin({ kind: 'Node', name: 'node-1' })?.source, 'kube:Node/node-1');

          for (const k of KINDS) {
            const path = kubeResource(k).path;
            await waitFor(`a watch on ${path}`, () => watchesOf(server.requests, path).length > 0);
            const list = listsOf(server.requests, path)[0]!;
            const w = watchesOf(server.requests, path)[0]!;
            t.is(w.query['allowWatchBookmarks'], 'true', path);
            t.is(w.query['resourceVersion'], server.resourceVersion, path);
            t.truthy(list, path);
            t.is(src.status()[k]!.synced, true);
          }
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      },
      seed,
    );
  },
);

test.serial(
  'added, modified and deleted events update the store; a burst is one update',
  async (t) => {
    await withServer(
      t,
      async ({ server, store, source }) => {
        const src = source();
        const loads: KubeLoadReport[] = [];
        src.on('load', (r) => loads.push(r));
        await src.start();
        await waitFor('the pod watch', () => server.openWatches >= KINDS.length);

        server.apply(pod('api', '198.19.1.11'));
        await waitFor('api added', () => store.workload('default', 'api') !== undefined);
        t.is(store.workloadByIp('198.19.1.11')?.name, 'api');

        server.apply(pod('api', '198.19.1.11', { labels: { app: 'api', version: 'v2' } }));
        await waitFor(
          'api modified',
          () => store.workload('default', 'api')?.labels['version'] === 'v2',
        );

        server.delete('Pod', 'default', 'web');
        await waitFor('web deleted', () => store.workload('default', 'web') === undefined);

        // A pod that loses its IP is left out again, silently.
        server.apply(pod('db', undefined, { node: 'node-2' }));
        await waitFor('db left out', () => store.workload('default', 'db') === undefined);

        const gen = store.generation;
        for (let i = 0; i < 20; i++) server.apply(pod(`burst-${i}`, `198.19.1.${100 + i}`));
        await waitFor('the burst', () => store.workload('default', 'burst-19') !== undefined);
        await sleep(150);
        t.is(store.generation, gen + 1, 'twenty events, one store update');
        t.true(loads.every((r) => r.errors.length === 0));
      },
      seed,
    );
  },
);

test.serial('kinds beyond pods flow the same way (here Service, when registered)', async (t) => {
  if (!(KINDS as readonly string[]).includes('Service')) {
    t.pass('Service is not registered yet');
    return;
  }
  await withServer(
    t,
    async ({ server, store, source }) => {
      const src = source();
      const changed: string[] = [];
      store.on('change', (_s, diff) => {
        const d = (diff as Readonly<Record<string, { updated: readonly { name: string }[] }>>)[
          'Service'
        ];
        for (const ref of d?.updated ?? []) changed.push(ref.name);
      });
      await src.start();
      const svc = (port: number): object => ({
        apiVersion: 'v1',
        kind: 'Service',
        metadata: { name: 'web', namespace: 'default' },
        spec: {
          clusterIP: '10.96.0.10',
          selector: { app: 'web' },
          ports: [{ port, protocol: 'TCP' }],
        },
      });
      server.apply(svc(80));
      const ref = { kind: 'Service', namespace: 'default', name: 'web' };
      await waitFor('the service', () => store.origin(ref) !== undefined);
      t.is(store.origin(ref)?.source, 'kube:Service/default/web');
      server.apply(svc(8080));
      await waitFor('the service updated', () => changed.includes('web'));
      server.delete('Service', 'default', 'web');
      await waitFor('the service deleted', () => store.origin(ref) === undefined);
    },
    seed,
  );
});

test.serial('a bookmark advances the resourceVersion without changing the store', async (t) => {
  await withServer(
    t,
    async ({ server, store, source }) => {
      const src = source();
      await src.start();
      await waitFor('every watch', () => server.openWatches >= KINDS.length);
      const gen = store.generation;
      const before = src.status()['Pod']!.resourceVersion;
      const rv = server.bookmark();
      t.not(rv, before);
      await waitFor('the bookmark', () => src.status()['Pod']!.resourceVersion === rv);
      t.is(store.generation, gen);

      // The next watch resumes from the bookmark, without a relist.
      const podPath = kubeResource('Pod').path;
      const lists = listsOf(server.requests, podPath).length;
      server.clearRequests();
      server.dropWatches();
      await waitFor('the pod watch again', () => watchesOf(server.requests, podPath).length > 0);
      t.is(watchesOf(server.requests, podPath)[0]!.query['resourceVersion'], rv);
      t.is(listsOf(server.requests, podPath).length, 0);
      t.is(src.status()['Pod']!.lists, lists);
      t.is(src.status()['Pod']!.relists, 0);
    },
    seed,
  );
});

test.serial('410 Gone forces a relist and the state converges, deletes included', async (t) => {
  await withServer(
    t,
    async ({ server, store, source }) => {
      const src = source();
      await src.start();
      await waitFor('every watch', () => server.openWatches >= KINDS.length);
      const podPath = kubeResource('Pod').path;
      server.clearRequests();

      // While no watch is open, a pod is deleted and one added; then history is compacted,
      // so resuming from the old resourceVersion gets 410 and only a relist can tell.
      server.dropWatches();
      server.delete('Pod', 'default', 'web');
      server.apply(pod('late', '198.19.1.50'));
      server.delete('Node', undefined, 'node-2');
      server.expireResourceVersions();

      await waitFor(
        'convergence',
        () =>
          store.workload('default', 'web') === undefined &&
          store.workload('default', 'late') !== undefined &&
          store.node('node-2') === undefined,
      );
      t.true(src.status()['Pod']!.relists >= 1);
      t.true(listsOf(server.requests, podPath).length >= 1, 'relisted pods');
      // The watch after the relist starts from the list's resourceVersion and is not refused.
      await waitFor('a watch after the relist', () =>
        server.requests.some(
          (r) =>
            r.path === podPath &&
            r.watch &&
            Number(r.query['resourceVersion']) >= Number(server.resourceVersion),
        ),
      );
      // Events keep flowing after the relist.
      server.apply(pod('after', '198.19.1.51'));
      await waitFor('after', () => store.workload('default', 'after') !== undefined);
      t.is(src.status()['Pod']!.lists, 2, 'one initial list and one relist, no storm');
    },
    seed,
  );
});

test.serial(
  'a dropped watch reconnects, with exponential backoff while the server refuses',
  async (t) => {
    await withServer(
      t,
      async ({ server, store, source }) => {
        const src = source({
          kinds: ['Pod'] as Kind[],
          backoff: { initialMs: 40, maxMs: 400 },
          healthyWatchMs: 100,
        });
        await src.start();
        await waitFor('the pod watch', () => server.openWatches === 1);
        const podPath = kubeResource('Pod').path;

        // A healthy watch (open for healthyWatchMs) that is dropped reconnects at once.
        await sleep(150);
        server.clearRequests();
        server.dropWatches({ abrupt: true });
        await waitFor('a reconnect', () => server.openWatches === 1);
        t.is(watchesOf(server.requests, podPath).length, 1);

        // While watches fail, the retries space out (jittered doubling) up to the cap.
        await sleep(150);
        server.clearRequests();
        server.failWatches(503);
        server.dropWatches();
        await waitFor(
          'refused watches',
          () => watchesOf(server.requests, podPath).length >= 7,
          8000,
        );
        const times = watchesOf(server.requests, podPath).map((r) => r.time);
        const gaps = times.slice(1).map((x, i) => x - times[i]!);
        t.log('gaps (ms):', gaps.join(', '));
        // Attempt n waits between half and all of min(400, 40 * 2^(n-1)) ms.
        t.true(gaps[0]! >= 15 && gaps[0]! < 150, `first gap ${gaps[0]}`);
        t.true(gaps[3]! >= 150, `fourth gap ${gaps[3]}`);
        t.true(gaps[4]! >= 190, `fifth gap ${gaps[4]}`);
        t.true(
          gaps.every((g) => g < 700),
          'capped',
        );
        t.true(src.status()['Pod']!.failures >= 5);
        t.false(src.status()['Pod']!.watching);

        server.failWatches(null);
        await waitFor('the watch back', () => server.openWatches === 1, 3000);
        server.apply(pod('back', '198.19.1.60'));
        await waitFor('events again', () => store.workload('default', 'back') !== undefined);
        t.is(
          src.status()['Pod']!.relists,
          0,
          'no relist needed: the resourceVersion was still good',
        );
      },
      seed,
    );
  },
);

test.serial(
  'an invalid object keeps its last good version and reports a located error',
  async (t) => {
    await withServer(
      t,
      async ({ server, store, source }) => {
        server.apply(pod('bad', '10.0.0.999'));
        const src = source();
        const errors: ConfigError[][] = [];
        const kept: string[] = [];
        src.on('errors', (e, report) => {
          errors.push([...e]);
          kept.push(...report.kept.map((r) => `${r.namespace}/${r.name}`));
        });
        const report = await src.start();
        t.is(
          report.errors[0]?.toString(),
          'Pod default/bad: status.podIP: "10.0.0.999" is not an IPv4 address',
        );
        t.is(report.errors[0]?.ref?.name, 'bad');
        t.is(store.workload('default', 'bad'), undefined, 'never valid: left out');

        server.apply(
          pod('web', '198.19.1.10', { annotations: { 'weft.io/dataplane-mode': 'ambient' } }),
        );
        await waitFor(
          'web',
          () =>
            store.workload('default', 'web')?.annotations['weft.io/dataplane-mode'] === 'ambient',
        );
        const gen = store.generation;
        errors.length = 0;

        server.apply(
          pod('web', '10.0.0.300', { annotations: { 'weft.io/dataplane-mode': 'ambient' } }),
        );
        await waitFor('the error', () => errors.length > 0);
        t.is(
          errors[0]![0]!.toString(),
          'Pod default/web: status.podIP: "10.0.0.300" is not an IPv4 address',
        );
        t.is(store.workload('default', 'web')?.ip, '198.19.1.10', 'last good version kept');
        t.deepEqual(kept, ['default/web']);
        t.is(store.generation, gen);

        // The same problem again (another update of the still-invalid pod) is not re-reported.
        server.apply(pod('web', '10.0.0.300', { labels: { app: 'web', x: 'y' } }));
        await sleep(150);
        t.is(errors.length, 1, JSON.stringify(errors.map((b) => b.map((e) => e.toString()))));

        server.apply(pod('web', '198.19.1.12'));
        await waitFor('fixed', () => store.workload('default', 'web')?.ip === '198.19.1.12');
        t.is(errors.length, 1);
      },
      seed,
    );
  },
);

test.serial('403 on start gives a clear error naming the server and the RBAC cause', async (t) => {
  await withServer(
    t,
    async ({ server, source }) => {
      server.deny('list', 'pods');
      const src = source();
      const err = await t.throwsAsync(src.start(), { instanceOf: KubeApiError });
      t.log(err?.message);
      t.true(err!.message.includes(server.url), 'names the API server');
      t.true(err!.message.includes("RBAC: weft's ServiceAccount may not list pods"));
      t.is((err as KubeApiError).statusCode, 403);
      t.true((err as KubeApiError).fatal);
      // It gave up at once (no retries) and left nothing behind.
      t.is(listsOf(server.requests, kubeResource('Pod').path).length, 1);
      await sleep(100);
      t.is(server.openWatches, 0);
    },
    seed,
  );
});

test.serial(
  'a resource the server does not serve: 404 fails start, unless the kind is optional',
  async (t) => {
    // The last registered kind stands for a CRD that is not installed.
    const absent = KINDS[KINDS.length - 1]!;
    const resources = registeredResources().filter((r) => r.kind !== absent);
    const server = await KubeApiServer.start({ resources });
    const sources: KubeSource[] = [];
    try {
      const kc = new KubeConfig();
      kc.loadFromString(server.kubeconfigYaml());
      const store = new ConfigStore();
      const strict = new KubeSource({ store, logger: silentLogger, kubeConfig: kc });
      sources.push(strict);
      const err = await t.throwsAsync(strict.start(), { instanceOf: KubeApiError });
      t.true(err!.message.includes(`cannot list ${kubeResource(absent).plural}`), err!.message);
      t.true(err!.message.includes('404 Not Found: the API server does not serve'), err!.message);

      const lenient = new KubeSource({
        store,
        logger: silentLogger,
        kubeConfig: kc,
        optionalKinds: [absent],
      });
      sources.push(lenient);
      const report = await lenient.start();
      t.true(report.synced[absent]);
      t.true(lenient.status()[absent]!.missing);
    } finally {
      for (const s of sources) await s.stop();
      await server.close();
    }
  },
);

test.serial(
  'patchPodAnnotation merge-patches the pod; the change comes back by watch',
  async (t) => {
    await withServer(
      t,
      async ({ server, store, source }) => {
        const src = source();
        await src.start();
        await src.patchPodAnnotation('default', 'web', 'weft.io/redirection', 'enabled');
        const patch = server.requests.find((r) => r.method === 'PATCH')!;
        t.is(patch.path, '/api/v1/namespaces/default/pods/web');
        t.is(patch.contentType, 'application/merge-patch+json');
        t.is(patch.status, 200);
        const meta = server.get('Pod', 'default', 'web')!['metadata'] as {
          annotations: Record<string, string>;
        };
        t.is(meta.annotations['weft.io/redirection'], 'enabled');
        await waitFor(
          'the annotation in the store',
          () => store.workload('default', 'web')?.annotations['weft.io/redirection'] === 'enabled',
        );

        await src.patchPodAnnotation('default', 'web', 'weft.io/redirection', null);
        await waitFor(
          'the annotation removed',
          () => store.workload('default', 'web')?.annotations['weft.io/redirection'] === undefined,
        );

        server.deny('patch', 'pods');
        const err = await t.throwsAsync(src.patchPodAnnotation('default', 'web', 'a', 'b'));
        t.true(
          err!.message.includes("RBAC: weft's ServiceAccount may not patch pods"),
          err!.message,
        );
        server.allow('patch', 'pods');
        const missing = await t.throwsAsync(src.patchPodAnnotation('default', 'nope', 'a', 'b'));
        t.true(
          missing!.message.includes('cannot patch pod default/nope: 404 Not Found: no such pod'),
          missing!.message,
        );
      },
      seed,
    );
  },
);

test.serial('a field selector option restricts pods (for later use)', async (t) => {
  await withServer(
    t,
    async ({ server, store, source }) => {
      const src = source({ fieldSelectors: { Pod: 'spec.nodeName=node-1' } });
      await src.start();
      t.deepEqual([...store.state.workloads.keys()], ['default/web']);
      const podPath = kubeResource('Pod').path;
      await waitFor('the pod watch', () => watchesOf(server.requests, podPath).length > 0);
      t.is(listsOf(server.requests, podPath)[0]!.query['fieldSelector'], 'spec.nodeName=node-1');
      t.is(watchesOf(server.requests, podPath)[0]!.query['fieldSelector'], 'spec.nodeName=node-1');
    },
    seed,
  );
});

test.serial('the API server runs as a script, driven through its control socket', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'weft-kube-script-'));
  const script = fileURLToPath(new URL('./helpers/kube-api-server.js', import.meta.url));
  const child = spawn(process.execPath, [script, '--listen', '127.0.0.1:0', '--state-dir', dir], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const store = new ConfigStore();
  let src: KubeSource | undefined;
  try {
    const ready = await new Promise<{ url: string; kubeconfig: string; control: string }>(
      (resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error('no "listening" line within 10 s')),
          10_000,
        );
        createInterface({ input: child.stdout! }).on('line', (line) => {
          clearTimeout(timer);
          resolve(JSON.parse(line) as { url: string; kubeconfig: string; control: string });
        });
        child.once('exit', (code) => reject(new Error(`the server exited (${code})`)));
      },
    );
    const ctl = new KubeApiServerControl(ready.control);
    await ctl.apply(node('node-1', '198.18.0.1'));
    await ctl.apply({ apiVersion: 'v1', kind: 'List', items: [pod('web', '198.19.1.10')] });
    src = new KubeSource({
      store,
      logger: silentLogger,
      kubeconfigPath: ready.kubeconfig,
      kinds: ['Pod', 'Node'] as Kind[],
      backoff: { initialMs: 40, maxMs: 400 },
    });
    await src.start();
    t.is(store.workload('default', 'web')?.ip, '198.19.1.10');
    await ctl.dropWatches();
    await ctl.delete('Pod', 'default', 'web');
    await ctl.expireResourceVersions();
    await waitFor('the relist', () => store.workload('default', 'web') === undefined);
    const reqs = await ctl.requests();
    t.true(reqs.filter((r) => r.path === '/api/v1/pods' && !r.watch).length >= 2);
    t.is((await ctl.state()).url, ready.url);
  } finally {
    await src?.stop();
    if (child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await Promise.race([exited, sleep(3000)]);
      if (child.exitCode === null) child.kill('SIGKILL');
    }
    await rm(dir, { recursive: true, force: true });
  }
});
