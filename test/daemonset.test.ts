// daemonset.yaml as a cluster would take it: every object valid against the Kubernetes OpenAPI
// schemas (kubernetes-models) with no unknown field (kubectl's strict field validation), the
// references between objects resolved, the DaemonSet shaped for a host-network node proxy
// (probes and scrape port matching weft's own flags, a hitless rolling update, a grace period
// that covers the drain, least privilege), and its container args accepted by weft's own CLI.
// No root needed; nothing is started but `weft node --help`.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { ClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';
import { ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding';
import { parseDuration, parseTrustDomain } from '../src/cli/options.js';
import { modelName, unknownFields } from './helpers/k8s-fields.js';
import {
  at,
  containerEnv,
  expandVars,
  isObj,
  loadManifest,
  mountOf,
  nodeCommand,
  only,
  parseArgs,
  podSpec,
  REPO_ROOT,
  strings,
  varRefs,
  volumeMounts,
  weftContainer,
  type Obj,
} from './helpers/manifest.js';

const WEFT_CLI = `${REPO_ROOT}/dist/src/cli/main.js`;
const manifest = loadManifest();
const ds = only(manifest, 'DaemonSet');
const container = weftContainer(ds);
const args = strings(container['args']);
const configMaps = manifest.docs.map((d) => d.object).filter((o) => o['kind'] === 'ConfigMap');
/** The container's env on a node named `node-x`. */
const env = containerEnv(container, configMaps, 'node-x');
const expanded = args.map((a) => expandVars(a, env));

/** A kubernetes-models class per apiVersion + kind the manifest may hold. */
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'v1 Namespace': Namespace,
  'v1 ServiceAccount': ServiceAccount,
  'v1 ConfigMap': ConfigMap,
  'rbac.authorization.k8s.io/v1 ClusterRole': ClusterRole,
  'rbac.authorization.k8s.io/v1 ClusterRoleBinding': ClusterRoleBinding,
  'apps/v1 DaemonSet': DaemonSet,
};
const CLUSTER_SCOPED = new Set(['Namespace', 'ClusterRole', 'ClusterRoleBinding']);

interface HelpOption {
  readonly flag: string;
  readonly text: string;
  readonly type: string | undefined;
  readonly default: string | undefined;
  readonly choices: string[] | undefined;
}

/** `weft node --help`, option by option (an option's text runs until the next `  --`). */
function nodeHelp(): Map<string, HelpOption> {
  const help = execFileSync(process.execPath, [WEFT_CLI, 'node', '--help'], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  const out = new Map<string, HelpOption>();
  const blocks = help.split(/\n(?= {2}--)/).filter((b) => b.startsWith('  --'));
  for (const block of blocks) {
    const flag = /^ {2}(--[a-z0-9-]+)/.exec(block)![1]!;
    const text = block.replace(/\s+/g, ' ');
    out.set(flag, {
      flag,
      text,
      type: /\[(string|boolean|number|array)\]/.exec(text)?.[1],
      default: /\[default: "?([^"\]]*)"?\]/.exec(text)?.[1],
      choices: /\[choices: ([^\]]+)\]/
        .exec(text)?.[1]
        ?.split(',')
        .map((c) => c.trim().replace(/^"|"$/g, '')),
    });
  }
  return out;
}
const help = nodeHelp();

/** A flag's value as weft will see it: from the args (expanded) or weft's default. */
function effective(flag: string): string | undefined {
  const given = parseArgs(expanded).flags.filter((f) => f.flag === flag);
  if (given.length > 0) return given[given.length - 1]!.value;
  return help.get(flag)?.default;
}

function quantity(q: unknown): number {
  const m = /^(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$/.exec(String(q));
  if (!m) throw new Error(`not a quantity: ${String(q)}`);
  const unit: Record<string, number> = {
    '': 1,
    m: 1e-3,
    k: 1e3,
    M: 1e6,
    G: 1e9,
    T: 1e12,
    Ki: 2 ** 10,
    Mi: 2 ** 20,
    Gi: 2 ** 30,
    Ti: 2 ** 40,
  };
  return Number(m[1]) * unit[m[2] ?? '']!;
}

test('every object parses and validates against the Kubernetes OpenAPI schema', (t) => {
  t.true(manifest.docs.length >= 6, `${manifest.docs.length} documents`);
  const kinds = manifest.docs.map((d) => String(d.object['kind']));
  for (const k of ['Namespace', 'ServiceAccount', 'ClusterRole', 'ClusterRoleBinding']) {
    t.true(kinds.includes(k), `the manifest has a ${k}`);
  }
  t.true(kinds.includes('ConfigMap'));
  t.true(kinds.includes('DaemonSet'));
  for (const { line, object } of manifest.docs) {
    const key = `${String(object['apiVersion'])} ${String(object['kind'])}`;
    const where = `daemonset.yaml:${line} ${key} ${String(at(object, 'metadata', 'name'))}`;
    const Model = MODELS[key];
    if (!Model) {
      t.fail(`${where}: no schema for this apiVersion and kind`);
      continue;
    }
    t.notThrows(() => new Model(object as never).validate(), where);
    t.deepEqual(
      unknownFields(object, modelName(String(object['apiVersion']), String(object['kind']))),
      [],
      `${where}: fields the API type does not declare (kubectl apply rejects them)`,
    );
    t.regex(String(at(object, 'metadata', 'name')), /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, where);
  }
});

test('objects reference each other consistently', (t) => {
  const ns = String(at(only(manifest, 'Namespace'), 'metadata', 'name'));
  for (const { line, object } of manifest.docs) {
    const kind = String(object['kind']);
    const namespace = at(object, 'metadata', 'namespace');
    if (CLUSTER_SCOPED.has(kind)) t.is(namespace, undefined, `daemonset.yaml:${line} ${kind}`);
    else t.is(namespace, ns, `daemonset.yaml:${line} ${kind} lives in ${ns}`);
  }
  const sa = only(manifest, 'ServiceAccount');
  t.is(podSpec(ds)['serviceAccountName'], at(sa, 'metadata', 'name'));
  const binding = only(manifest, 'ClusterRoleBinding');
  t.deepEqual(at(binding, 'roleRef'), {
    apiGroup: 'rbac.authorization.k8s.io',
    kind: 'ClusterRole',
    name: at(only(manifest, 'ClusterRole'), 'metadata', 'name'),
  });
  t.deepEqual(at(binding, 'subjects'), [
    { kind: 'ServiceAccount', name: at(sa, 'metadata', 'name'), namespace: ns },
  ]);
  // The API server rejects a DaemonSet whose selector does not match its template's labels.
  const selector = at(ds, 'spec', 'selector', 'matchLabels') as Record<string, string>;
  const labels = at(ds, 'spec', 'template', 'metadata', 'labels') as Record<string, string>;
  t.true(Object.keys(selector).length > 0);
  for (const [k, v] of Object.entries(selector)) t.is(labels[k], v, `template label ${k}`);
  t.is(at(ds, 'spec', 'selector', 'matchExpressions'), undefined);
  // Every envFrom ConfigMap exists (containerEnv throws otherwise) and feeds the args.
  t.true(Object.keys(env).length > 1, JSON.stringify(env));
  const volumes = (podSpec(ds)['volumes'] as Obj[]).map((v) => v['name']);
  for (const m of volumeMounts(container)) t.true(volumes.includes(m.volume), m.volume);
});

test('DaemonSet: host network, no containerPorts, probe and scrape ports are weft’s', (t) => {
  const spec = podSpec(ds);
  t.is(spec['hostNetwork'], true);
  for (const c of [
    ...((spec['containers'] as Obj[]) ?? []),
    ...((spec['initContainers'] as Obj[]) ?? []),
  ]) {
    t.is(c['ports'], undefined, `container ${String(c['name'])} declares no ports (hostPorts)`);
  }
  const probe = container['readinessProbe'];
  t.deepEqual(at(probe, 'httpGet', 'port'), 15021);
  t.is(at(probe, 'httpGet', 'path'), '/healthz/ready');
  t.not(at(probe, 'httpGet', 'scheme'), 'HTTPS');
  t.is(effective('--readiness-port'), '15021', 'weft serves readiness where the probe looks');

  const annotations = at(ds, 'spec', 'template', 'metadata', 'annotations') as Record<
    string,
    string
  >;
  t.is(annotations['prometheus.io/scrape'], 'true');
  t.is(annotations['prometheus.io/port'], '15020');
  t.is(annotations['prometheus.io/path'] ?? '/metrics', '/metrics');
  t.is(effective('--metrics-port'), '15020', 'weft serves metrics where Prometheus scrapes');
});

test('rolling update is a surge (1 up, 0 unavailable) and the grace period covers the drain', (t) => {
  t.is(at(ds, 'spec', 'updateStrategy', 'type'), 'RollingUpdate');
  t.deepEqual(at(ds, 'spec', 'updateStrategy', 'rollingUpdate'), {
    maxSurge: 1,
    maxUnavailable: 0,
  });
  const drainMs = parseDuration('drain-grace', effective('--drain-grace'));
  const graceS = podSpec(ds)['terminationGracePeriodSeconds'];
  t.is(typeof graceS, 'number', 'terminationGracePeriodSeconds is set (the default is 30 s)');
  t.true(
    (graceS as number) * 1000 >= drainMs + 5000,
    `terminationGracePeriodSeconds ${String(graceS)} s >= --drain-grace ${drainMs} ms + 5 s`,
  );
});

test('scheduling, resources and least privilege', (t) => {
  const spec = podSpec(ds);
  const tolerations = spec['tolerations'] as Obj[];
  t.true(
    tolerations.some((x) => x['operator'] === 'Exists' && x['key'] === undefined && !x['effect']),
    `tolerates every taint: ${JSON.stringify(tolerations)}`,
  );
  const resources = container['resources'];
  for (const r of ['cpu', 'memory']) t.truthy(at(resources, 'requests', r), `requests.${r}`);
  t.truthy(at(resources, 'limits', 'memory'), 'limits.memory');
  t.true(
    quantity(at(resources, 'requests', 'memory')) <= quantity(at(resources, 'limits', 'memory')),
  );
  const cpuLimit = at(resources, 'limits', 'cpu');
  if (cpuLimit !== undefined) {
    t.true(quantity(at(resources, 'requests', 'cpu')) <= quantity(cpuLimit));
  }
  const sc = container['securityContext'];
  t.is(at(sc, 'privileged'), false);
  t.not(at(spec, 'securityContext', 'privileged'), true);
  const added = strings(at(sc, 'capabilities', 'add'));
  t.true(added.includes('BPF'), `capabilities.add ${added.join(',')}`);
  t.true(added.includes('NET_ADMIN'), `capabilities.add ${added.join(',')}`);
  t.false(
    added.some((c) => c.startsWith('CAP_')),
    'capability names without CAP_',
  );
  t.is(spec['hostPID'] ?? false, false);
  t.is(spec['hostIPC'] ?? false, false);
});

test('bpffs is the host’s /sys/fs/bpf and the CA is the Secret cacerts; the flags point there', (t) => {
  const volumes = podSpec(ds)['volumes'] as Obj[];
  const mounts = volumeMounts(container);
  const byName = (n: string) => volumes.find((v) => v['name'] === n);

  const bpfMount = mounts.find((m) => m.mountPath === '/sys/fs/bpf');
  t.truthy(bpfMount, 'a mount at /sys/fs/bpf');
  t.is(at(byName(bpfMount!.volume), 'hostPath', 'path'), '/sys/fs/bpf');
  const bpffs = effective('--bpffs')!;
  t.is(mountOf(bpffs, mounts)?.volume, bpfMount!.volume, `--bpffs ${bpffs} is on that mount`);

  const caVolume = volumes.find((v) => at(v, 'secret', 'secretName') === 'cacerts');
  t.truthy(caVolume, 'a volume from the Secret cacerts');
  const caMount = mounts.find((m) => m.volume === caVolume!['name']);
  t.truthy(caMount, 'the cacerts volume is mounted');
  const caRaw = (container['volumeMounts'] as Obj[]).find((m) => m['name'] === caVolume!['name']);
  t.is(caRaw!['readOnly'], true, 'the CA key is mounted read-only');
  t.is(effective('--ca'), caMount!.mountPath, '--ca is the cacerts mount');
});

test('the container command and args parse with weft’s own CLI', (t) => {
  // The command runs the CLI the image ships: the image's WORKDIR holds dist/ (Dockerfile).
  const dockerfile = readFileSync(`${REPO_ROOT}/Dockerfile`, 'utf8');
  const finalStage = dockerfile.split(/^FROM /m).pop()!;
  const workdir = /^WORKDIR (\S+)/m.exec(finalStage)?.[1];
  t.truthy(workdir, 'the final image stage has a WORKDIR');
  t.regex(finalStage, /^COPY --from=build \S*\/dist \.\/dist$/m, 'the image ships dist/');
  const command = strings(container['command']);
  t.is(command[0], 'node');
  t.true(command[1]!.startsWith(`${workdir}/dist/`), `${command[1]} is in the image`);
  t.true(existsSync(`${REPO_ROOT}/${command[1]!.slice(workdir!.length + 1)}`), 'and is built');

  // Every $(VAR) resolves from the container's env (NODE_NAME, the ConfigMap).
  for (const a of args) {
    for (const v of varRefs(a)) t.true(v in env, `${a}: $(${v}) is defined in the container`);
  }
  const { positional, flags } = parseArgs(expanded);
  t.deepEqual(positional, ['node'], 'the subcommand is `weft node` and nothing else is loose');
  for (const { flag, value } of flags) {
    const name = flag.replace(/^--no-/, '--');
    const option = help.get(flag) ?? help.get(name);
    t.truthy(option, `${flag} is a flag of \`weft node\` (in its --help)`);
    if (!option) continue;
    if (option.type === 'boolean') {
      t.true(value === undefined || value === 'true' || value === 'false', `${flag}=${value}`);
    } else t.not(value, undefined, `${flag} has a value`);
    if (option.choices) t.true(option.choices.includes(String(value)), `${flag}=${value}`);
  }
  const names = flags.map((f) => f.flag);
  t.deepEqual(
    names.filter((n, i) => names.indexOf(n) !== i),
    [],
    'no flag given twice',
  );
  t.is(effective('--config'), 'kube');
  t.is(effective('--node-name'), 'node-x', '--node-name is the pod’s spec.nodeName');
  for (const d of ['--drain-grace', '--connect-timeout', '--interface-scan', '--cert-ttl']) {
    t.notThrows(() => parseDuration(d.slice(2), effective(d)), `${d}=${effective(d)}`);
  }
  t.notThrows(() => parseTrustDomain(effective('--trust-domain')));
  // And the same command line maps onto a lab node (what the e2e test runs).
  t.notThrows(() =>
    nodeCommand(manifest, {
      nodeName: 'node-x',
      hostDirs: { bpffs: '/tmp/bpffs', ca: '/tmp/ca' },
      imageRoot: workdir!,
    }),
  );
});

test('no test-only flag, path or lab address anywhere in the manifest', (t) => {
  // Lab addresses (198.18.0.0/15), in objects and comments alike.
  t.notRegex(manifest.text, /\b198\.1[89]\.\d{1,3}\.\d{1,3}\b/);
  const values: string[] = [];
  const walk = (v: unknown): void => {
    if (typeof v === 'string') values.push(v);
    else if (Array.isArray(v)) v.forEach(walk);
    else if (isObj(v)) {
      for (const [k, x] of Object.entries(v)) {
        values.push(k);
        walk(x);
      }
    }
  };
  for (const d of manifest.docs) walk(d.object);
  const testOnly = [
    /weft-lab|\/run\/weft|kube-api-server|dist\/test|\btest\/|fixtures|\.test-results/,
    /(^|[\s=/])\/tmp(\/|$)/,
    /KUBECONFIG|kubeconfig|insecure-skip-tls-verify/i,
    /^--cleanup$|^--no-access-log$|^--access-log-sample/,
    /127\.0\.0\.1:\d|localhost:\d/,
  ];
  for (const v of values) for (const re of testOnly) t.notRegex(v, re, `test-only value ${v}`);
  // The lab mesh's quick settings (src/lab/mesh.ts) are not production values.
  t.not(effective('--drain-grace'), '1s');
  t.not(effective('--interface-scan'), '500ms');
  // No image tag that only exists on a developer machine.
  const image = String(container['image']);
  t.regex(image, /^[a-z0-9.-]+(\/[a-z0-9._-]+)+:[0-9]+\.[0-9]+\.[0-9]+$/);
  const pkg = JSON.parse(readFileSync(`${REPO_ROOT}/package.json`, 'utf8')) as { version: string };
  t.is(image.split(':').pop(), pkg.version, 'the image is this release');
  t.not(container['imagePullPolicy'], 'Never');
});
