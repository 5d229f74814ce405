// End-to-end: what operators see of the node proxies, checked against KNOWN traffic in a
// 2-node namespace cluster (an enrolled client on node-0, an enrolled server in another
// namespace with its own service account on node-1, and a pod outside the mesh). Istio's TCP
// metrics count connections and bytes exactly on both ends; a policy denial is counted by
// policy; a deleted pod's series go away; BPF counters match the connections made; the admin
// endpoint shows certificates (never keys), changes the log level and lists live
// connections; readiness turns 503 while draining; the access log has one line per
// connection (and none with --no-access-log); `weft status` shows the enrolled pod.
import test from 'ava';
import { rename, rm, writeFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import {
  Lab,
  type ConnectOptions,
  type ConnectResult,
  type LabProcess,
} from '../src/lab/cluster.js';
import { LabMesh, WEFT_CLI } from '../src/lab/mesh.js';
import { waitFor } from '../src/lab/proc.js';
import { requireRoot } from './helpers/root.js';
import { parsePrometheus, select, type Sample } from './helpers/prometheus.js';

const AMBIENT = { 'weft.io/dataplane-mode': 'ambient' };
const PORT = 8080;
const CLIENT_ID = 'spiffe://cluster.local/ns/default/sa/web';
const SERVER_ID = 'spiffe://cluster.local/ns/shop/sa/api';
const TCP_METRICS = [
  'istio_tcp_connections_opened_total',
  'istio_tcp_connections_closed_total',
  'istio_tcp_sent_bytes_total',
  'istio_tcp_received_bytes_total',
] as const;
/** The label set of a clean, tunnelled client -> server connection (without `reporter`). */
const MESH_LABELS = {
  source_workload: 'client',
  source_workload_namespace: 'default',
  source_principal: CLIENT_ID,
  destination_workload: 'server',
  destination_workload_namespace: 'shop',
  destination_principal: SERVER_ID,
  connection_security_policy: 'mutual_tls',
  response_flags: '-',
};
const AS_SOURCE = { ...MESH_LABELS, reporter: 'source' };
const AS_DESTINATION = { ...MESH_LABELS, reporter: 'destination' };

let lab: Lab;
let mesh: LabMesh;
/** Every TCP connection the client pod has started (all of them are captured outbound). */
let clientConnections = 0;

test.before(async () => {
  requireRoot();
  lab = await Lab.create({
    nodes: 2,
    podsPerNode: [3, 1],
    pods: {
      'pod-0-0': { name: 'client', serviceAccount: 'web', annotations: AMBIENT },
      'pod-0-1': { name: 'outsider', annotations: {} },
      'pod-0-2': {
        name: 'local-server',
        namespace: 'shop',
        serviceAccount: 'api',
        annotations: AMBIENT,
      },
      'pod-1-0': { name: 'server', namespace: 'shop', serviceAccount: 'api', annotations: AMBIENT },
    },
  });
  mesh = await LabMesh.start(lab);
  await lab.serve('server', PORT);
  await lab.serve('local-server', PORT);
  for (const node of ['node-0', 'node-1']) await waitReady(node);
});

test.after.always(async () => {
  await mesh?.stop();
  await lab?.destroy();
});

// ---- helpers ----

interface HttpResult {
  status: number;
  body: string;
  error?: string;
}

/** Runs inside a node namespace: fetches each request in turn, prints a JSON array. */
const HTTP_SCRIPT = `
const reqs = JSON.parse(process.argv[1]);
(async () => {
  const out = [];
  for (const r of reqs) {
    try {
      const res = await fetch(r.url, { method: r.method ?? 'GET', signal: AbortSignal.timeout(3000) });
      out.push({ status: res.status, body: await res.text() });
    } catch (e) {
      out.push({ status: 0, body: '', error: String(e.cause?.code ?? e.message) });
    }
  }
  process.stdout.write(JSON.stringify(out));
})();`;

async function http(
  nodeName: string,
  requests: readonly (string | { url: string; method?: string })[],
): Promise<HttpResult[]> {
  const reqs = requests.map((r) => (typeof r === 'string' ? { url: r } : r));
  const run = await lab.exec(lab.node(nodeName).netns, [
    process.execPath,
    '-e',
    HTTP_SCRIPT,
    JSON.stringify(reqs),
  ]);
  return JSON.parse(run.stdout) as HttpResult[];
}

async function get(nodeName: string, url: string): Promise<HttpResult> {
  return (await http(nodeName, [url]))[0]!;
}

async function scrape(nodeName: string, path = '/metrics'): Promise<Sample[]> {
  const res = await get(nodeName, `http://127.0.0.1:15020${path}`);
  if (res.status !== 200) throw new Error(`${nodeName}${path}: ${res.status} ${res.error ?? ''}`);
  return parsePrometheus(res.body);
}

/** The value of the one series of `name` matching `labels` (0 when there is none). */
function value(samples: readonly Sample[], name: string, labels: Record<string, string>): number {
  const found = select(samples, name, labels);
  if (found.length > 1) {
    throw new Error(`${found.length} series of ${name} match ${JSON.stringify(labels)}`);
  }
  return found[0]?.value ?? 0;
}

/** Polls `check` until it holds (bounded): reloads and close accounting are asynchronous. */
async function eventually(check: () => Promise<boolean>, timeoutMs = 8000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 200));
  }
  return check();
}

async function waitReady(nodeName: string): Promise<void> {
  const ok = await eventually(
    async () => (await get(nodeName, 'http://127.0.0.1:15021/healthz/ready')).status === 200,
    10_000,
  );
  if (!ok) throw new Error(`${nodeName} never became ready`);
}

/** `podapp connect` from the client pod, counted in `clientConnections`. */
async function fromClient(to: string, opts: ConnectOptions): Promise<ConnectResult[]> {
  clientConnections += opts.count ?? 1;
  return lab.connect('client', to, PORT, opts);
}

async function canConnect(): Promise<boolean> {
  const [r] = await fromClient('server', { bytes: 64, timeoutMs: 3000, connectTimeoutMs: 1500 });
  return Boolean(r?.ok && r.match);
}

/** Opens one connection from the client pod to the server and keeps it open. */
async function holdConnection(): Promise<LabProcess> {
  clientConnections += 1;
  const holder = lab.spawn(lab.pod('client').netns, [
    process.execPath,
    '-e',
    `const s=require('net').connect({host:'${lab.pod('server').ip}',port:${PORT}},()=>{console.log('connected');s.write('x')});` +
      `s.on('data',()=>console.log('data'));s.on('close',()=>{console.log('closed');process.exit(0)});` +
      `s.on('error',e=>console.log('error '+e.code));setTimeout(()=>{console.log('still-open');process.exit(2)},30000)`,
  ]);
  await holder.waitForLine((l) => l === 'data', 5000);
  return holder;
}

async function writeConfig(name: string, objects: object[]): Promise<void> {
  const tmp = `${mesh.configDir}/.${name}.tmp`;
  await writeFile(tmp, objects.map((o) => stringify(o)).join('---\n'));
  await rename(tmp, `${mesh.configDir}/${name}`);
}

function tcpSeries(samples: readonly Sample[]): string[] {
  return samples
    .filter((s) => s.name.startsWith('istio_tcp_'))
    .map((s) => `${s.name}${JSON.stringify(s.labels)} ${s.value}`)
    .sort();
}

// ---- tests ----

test.serial(
  'Istio TCP metrics count N connections and N*S bytes exactly, on both proxies',
  async (t) => {
    const N = 5;
    const S = 3000;
    const before = { 'node-0': await scrape('node-0'), 'node-1': await scrape('node-1') };
    const results = await fromClient('server', { bytes: S, count: N });
    t.true(
      results.every((r) => r.ok && r.match && r.bytesSent === S && r.bytesReceived === S),
      JSON.stringify(results),
    );

    const ends = [
      { node: 'node-0', labels: AS_SOURCE },
      { node: 'node-1', labels: AS_DESTINATION },
    ] as const;
    const after: Record<string, Sample[]> = {};
    const delta = (node: 'node-0' | 'node-1', metric: string, labels: Record<string, string>) =>
      value(after[node]!, metric, labels) - value(before[node], metric, labels);
    // A close is counted once the proxy has seen both halves end: poll for it (bounded).
    await eventually(async () => {
      for (const { node } of ends) after[node] = await scrape(node);
      return ends.every(
        ({ node, labels }) => delta(node, 'istio_tcp_connections_closed_total', labels) >= N,
      );
    }, 5000);

    const expected: Record<(typeof TCP_METRICS)[number], number> = {
      istio_tcp_connections_opened_total: N,
      istio_tcp_connections_closed_total: N,
      istio_tcp_sent_bytes_total: N * S,
      istio_tcp_received_bytes_total: N * S,
    };
    for (const { node, labels } of ends) {
      for (const metric of TCP_METRICS) {
        t.is(
          select(after[node]!, metric, labels).length,
          1,
          `${node}: exactly one ${metric} series for ${JSON.stringify(labels)}`,
        );
        t.is(delta(node, metric, labels), expected[metric], `${node} ${metric}`);
      }
    }
    const [series] = select(after['node-1']!, 'istio_tcp_connections_opened_total', AS_DESTINATION);
    t.is(series?.labels.source_canonical_service, 'client');
    t.is(series?.labels.destination_canonical_service, 'server');
    t.is(series?.labels.request_protocol, 'tcp');

    // /stats/prometheus serves the same series as /metrics (no traffic in between).
    for (const { node } of ends) {
      const [metrics, stats] = await http(node, [
        'http://127.0.0.1:15020/metrics',
        'http://127.0.0.1:15020/stats/prometheus',
      ]);
      t.is(stats!.status, 200);
      t.deepEqual(
        tcpSeries(parsePrometheus(stats!.body)),
        tcpSeries(parsePrometheus(metrics!.body)),
        `${node}: /stats/prometheus and /metrics agree`,
      );
    }
  },
);

test.serial(
  'same-node: metrics and access log are exact whether the proxy relayed or BPF passed it',
  async (t) => {
    const N = 5;
    const S = 7000;
    const labels = { ...AS_SOURCE, destination_workload: 'local-server' };
    const before = await scrape('node-0');
    const countersBefore = mesh.counters(lab.node('node-0'), lab.pod('client').ip);
    const logged = mesh.accessLog('node-0').length;
    const results = await lab.connect('client', 'local-server', PORT, { bytes: S, count: N });
    t.true(
      results.every((r) => r.ok && r.match && r.bytesSent === S && r.bytesReceived === S),
      JSON.stringify(results),
    );
    const countersAfter = mesh.counters(lab.node('node-0'), lab.pod('client').ip);
    const captured = Number(countersAfter!.capturedOutbound - countersBefore!.capturedOutbound);
    const direct = Number(countersAfter!.direct - countersBefore!.direct);
    clientConnections += captured;
    t.is(captured + direct, N, 'each connection was either captured or passed in BPF');
    t.is(captured, 1, 'the first is relayed; the proxy then records the pair');

    let after: Sample[] = before;
    const delta = (metric: string) => value(after, metric, labels) - value(before, metric, labels);
    await eventually(async () => {
      after = await scrape('node-0');
      return delta('istio_tcp_connections_closed_total') >= N;
    }, 5000);
    t.is(delta('istio_tcp_connections_opened_total'), N);
    t.is(delta('istio_tcp_connections_closed_total'), N);
    t.is(delta('istio_tcp_sent_bytes_total'), N * S);
    t.is(delta('istio_tcp_received_bytes_total'), N * S);

    const entries = (await mesh.waitForAccessLog('node-0', logged + N)).slice(logged);
    t.is(entries.length, N, 'one line per connection');
    t.is(entries.filter((e) => e.datapath === 'bpf').length, direct);
    for (const entry of entries) {
      t.is(entry.path, 'same-node');
      t.is(entry.bytesSent, S);
      t.is(entry.bytesReceived, S);
      t.is(entry.dstIdentity, SERVER_ID);
      t.is(entry.srcIdentity, CLIENT_ID);
    }
  },
);

test.serial(
  'the access log has one JSON line per closed connection, with exact bytes',
  async (t) => {
    const N = 3;
    const S = 2048;
    const from = {
      'node-0': mesh.accessLog('node-0').length,
      'node-1': mesh.accessLog('node-1').length,
    };
    const results = await fromClient('server', { bytes: S, count: N });
    t.true(
      results.every((r) => r.ok && r.match),
      JSON.stringify(results),
    );
    const clientAddrs = results.map((r) => r.local).sort();
    const server = lab.pod('server');

    for (const [node, direction] of [
      ['node-0', 'outbound'],
      ['node-1', 'inbound'],
    ] as const) {
      await mesh.waitForAccessLog(node, from[node] + N);
      await new Promise((r) => setTimeout(r, 300)); // nothing more may come
      const entries = mesh.accessLog(node).slice(from[node]);
      t.is(entries.length, N, `${node}: one line per connection: ${JSON.stringify(entries)}`);
      t.deepEqual(entries.map((e) => e.src).sort(), clientAddrs, `${node}: the client's addresses`);
      for (const e of entries) {
        t.like(
          e,
          {
            event: 'connection',
            direction,
            path: 'hbone',
            dst: `${server.ip}:${PORT}`,
            srcWorkload: 'default/client',
            dstWorkload: 'shop/server',
            srcIdentity: CLIENT_ID,
            dstIdentity: SERVER_ID,
            security: 'mutual_tls',
            responseFlags: '-',
            bytesSent: S,
            bytesReceived: S,
          },
          `${node}: ${JSON.stringify(e)}`,
        );
        t.is(e.refused, undefined);
      }
    }
  },
);

test.serial(
  'a DENY policy is counted by policy at the destination, with response_flags="DENY"',
  async (t) => {
    const node1Before = await scrape('node-1');
    const denialLabels = { policy: 'shop/deny-web', reporter: 'destination' };
    const denySeries = {
      reporter: 'destination',
      response_flags: 'DENY',
      source_principal: CLIENT_ID,
      destination_workload: 'server',
      destination_workload_namespace: 'shop',
      destination_principal: SERVER_ID,
    };
    const sum = (samples: Sample[], name: string, labels: Record<string, string>) =>
      select(samples, name, labels).reduce((a, s) => a + s.value, 0);

    await writeConfig('policy.yaml', [
      {
        apiVersion: 'security.istio.io/v1',
        kind: 'AuthorizationPolicy',
        metadata: { name: 'deny-web', namespace: 'shop' },
        spec: {
          selector: { matchLabels: { app: 'server' } },
          action: 'DENY',
          rules: [{ from: [{ source: { principals: ['cluster.local/ns/default/sa/web'] } }] }],
        },
      },
    ]);
    let denied = 0;
    try {
      const tookEffect = await eventually(async () => {
        const ok = await canConnect();
        if (!ok) denied++;
        return !ok;
      });
      t.true(tookEffect, 'the policy took effect');
      for (let i = 0; i < 2; i++) {
        const ok = await canConnect();
        t.false(ok, 'still denied');
        if (!ok) denied++;
      }

      let after: Sample[] = [];
      await eventually(async () => {
        after = await scrape('node-1');
        return (
          value(after, 'weft_policy_denials_total', denialLabels) -
            value(node1Before, 'weft_policy_denials_total', denialLabels) >=
          denied
        );
      }, 5000);
      t.is(
        value(after, 'weft_policy_denials_total', denialLabels) -
          value(node1Before, 'weft_policy_denials_total', denialLabels),
        denied,
        'weft_policy_denials_total{policy="shop/deny-web",reporter="destination"} counts each denial',
      );
      t.is(
        sum(after, 'istio_tcp_connections_closed_total', denySeries) -
          sum(node1Before, 'istio_tcp_connections_closed_total', denySeries),
        denied,
        'the closed connections carry response_flags="DENY"',
      );
      const deny = select(after, 'istio_tcp_connections_closed_total', denySeries)[0];
      t.is(
        deny?.labels.source_workload,
        'client',
        `the denied series names the source workload: ${JSON.stringify(deny?.labels)}`,
      );
      // The source only saw a 401 from the tunnel: it must not blame a default deny (there
      // is no ALLOW policy at all) for what the destination's shop/deny-web decided.
      const node0 = await scrape('node-0');
      t.deepEqual(
        select(node0, 'weft_policy_denials_total', { policy: 'default-deny' }),
        [],
        'no denial is attributed to a default deny that never happened',
      );
      const logged = mesh
        .accessLog('node-1')
        .filter((e) => e.responseFlags === 'DENY')
        .pop();
      t.like(logged, {
        policy: 'shop/deny-web',
        srcIdentity: CLIENT_ID,
        dstWorkload: 'shop/server',
      });
    } finally {
      await rm(`${mesh.configDir}/policy.yaml`, { force: true });
    }
    t.true(await eventually(canConnect), 'allowed again once the policy is gone');
  },
);

test.serial('weft_bpf_packets_total counts every connection the client made', async (t) => {
  const samples = await scrape('node-0');
  const counter = (pod: string, name: string) =>
    select(samples, 'weft_bpf_packets_total', { pod, namespace: 'default', counter: name });
  const captured = counter('client', 'captured_outbound');
  t.is(captured.length, 1);
  t.is(captured[0]?.value, clientConnections, 'one capture per client connection');
  t.is(
    Number(mesh.counters(lab.node('node-0'), lab.pod('client').ip)?.capturedOutbound),
    clientConnections,
    'the pinned map agrees',
  );
  t.is(counter('outsider', 'captured_outbound')[0]?.value, 0, 'the outsider is not captured');
  t.is(counter('client', 'dropped_no_listener')[0]?.value, 0);
});

test.serial('the pool, certificate and config gauges describe this node', async (t) => {
  const samples = await scrape('node-0');
  // The client's cross-node connections went through pooled tunnels: at least one handshake,
  // and far fewer than connections.
  const handshakes = value(samples, 'weft_hbone_pool', { kind: 'handshakes' });
  t.true(handshakes >= 1 && handshakes < clientConnections, `${handshakes} handshakes`);
  const expiry = value(samples, 'weft_certificate_expiry_timestamp_seconds', {
    identity: CLIENT_ID,
  });
  t.true(expiry > Date.now() / 1000, 'the client certificate expires in the future');
  t.true(value(samples, 'weft_config_generation', {}) >= 1);
  t.is(value(samples, 'weft_config_last_reload_errors', {}), 0);
});

test.serial(
  'admin: config_dump without keys, the log level at run time, live connections',
  async (t) => {
    // /config_dump: workloads with identities, this node's certificates only, never a key.
    // node-0 runs the client and local-server (service account api), node-1 the server.
    for (const [node, own] of [
      ['node-0', [CLIENT_ID, SERVER_ID]],
      ['node-1', [SERVER_ID]],
    ] as const) {
      const res = await get(node, 'http://127.0.0.1:15000/config_dump');
      t.is(res.status, 200);
      t.false(res.body.includes('PRIVATE KEY'), `${node}: no private key in /config_dump`);
      t.false(res.body.includes('-----BEGIN'), `${node}: no PEM at all in /config_dump`);
      const dump = JSON.parse(res.body) as {
        node: string;
        workloads: { pod: string; identity: string; enrolled: boolean }[];
        certificates: { spiffeId: string; state: string; serial?: string; notAfter?: string }[];
      };
      t.is(dump.node, node);
      t.like(
        dump.workloads.find((w) => w.pod === 'default/client'),
        {
          identity: CLIENT_ID,
          enrolled: true,
        },
      );
      t.like(
        dump.workloads.find((w) => w.pod === 'shop/server'),
        {
          identity: SERVER_ID,
          enrolled: true,
        },
      );
      t.like(
        dump.workloads.find((w) => w.pod === 'default/outsider'),
        { enrolled: false },
      );
      t.deepEqual(
        dump.certificates.map((c) => c.spiffeId).sort(),
        [...own].sort(),
        `${node} holds only its own workloads' certificates`,
      );
      const [cert] = dump.certificates;
      t.is(cert?.state, 'ready');
      t.regex(cert?.serial ?? '', /^[0-9a-fA-F:]{8,}$/);
      const notAfter = Date.parse(cert?.notAfter ?? '');
      t.true(notAfter > Date.now() + 3_600_000, `notAfter ${cert?.notAfter} is in the future`);
    }

    // /logging: debug at run time, GET shows it, a bad level is refused.
    const [set, show, bad, restore] = await http('node-0', [
      'http://127.0.0.1:15000/logging?level=debug',
      'http://127.0.0.1:15000/logging',
      'http://127.0.0.1:15000/logging?level=loud',
      'http://127.0.0.1:15000/logging?level=info',
    ]);
    t.is(set!.status, 200);
    t.deepEqual(JSON.parse(show!.body), { level: 'debug' });
    t.is(bad!.status, 400);
    t.regex(bad!.body, /level must be one of/);
    t.deepEqual(JSON.parse(restore!.body), { level: 'info' });
    t.true(
      mesh
        .proxy('node-0')
        .lines.some((l) => l.includes('"log level changed"') && l.includes('"debug"')),
      'the change is logged',
    );

    // The admin endpoint listens on 127.0.0.1 only.
    const fromUplink = await get('node-0', `http://${lab.node('node-0').ip}:15000/config_dump`);
    t.is(fromUplink.status, 0, `not served on the node address: ${JSON.stringify(fromUplink)}`);

    // /debug/connections: a connection held open shows on both ends.
    const holder = await holdConnection();
    try {
      const client = lab.pod('client');
      const dst = `${lab.pod('server').ip}:${PORT}`;
      for (const [node, direction] of [
        ['node-0', 'outbound'],
        ['node-1', 'inbound'],
      ] as const) {
        const res = await get(node, 'http://127.0.0.1:15000/debug/connections');
        t.is(res.status, 200);
        const live = JSON.parse(res.body) as {
          direction: string;
          path: string;
          src: string;
          dst: string;
          srcIdentity?: string;
          dstIdentity?: string;
          bytesSent: number;
          bytesReceived: number;
        }[];
        const held = live.filter((c) => c.src.startsWith(`${client.ip}:`) && c.dst === dst);
        t.is(held.length, 1, `${node}: ${res.body}`);
        t.like(held[0], {
          direction,
          path: 'hbone',
          srcIdentity: CLIENT_ID,
          dstIdentity: SERVER_ID,
          bytesSent: 1,
          bytesReceived: 1,
        });
      }
    } finally {
      await holder.stop();
    }
  },
);

test.serial(
  'weft status lists the enrolled pod with its identity and certificate expiry',
  async (t) => {
    const node0 = lab.node('node-0');
    const client = lab.pod('client');
    const table = await lab.exec(node0.netns, [process.execPath, WEFT_CLI, 'status']);
    const row = table.stdout.split('\n').find((l) => l.includes('default/client'));
    t.truthy(row, table.stdout);
    t.regex(
      row ?? '',
      new RegExp(`${client.ip.replaceAll('.', '\\.')}\\s+yes\\s+${CLIENT_ID}\\s+(\\d+h\\d+m)\\s`),
    );
    t.regex(row ?? '', /\s2[34]h\d+m\s/, 'a 24 h certificate');
    const outsider = table.stdout.split('\n').find((l) => l.includes('default/outsider'));
    t.regex(outsider ?? '', /\sno\s+-\s+-\s/, 'the outsider has no identity and no certificate');
    t.regex(table.stdout, /^node node-0 /m);

    const json = await lab.exec(node0.netns, [process.execPath, WEFT_CLI, 'status', '--json']);
    const status = JSON.parse(json.stdout) as {
      node: string;
      pods: {
        pod: string;
        ip: string;
        enrolled: boolean;
        identity?: string;
        certificateExpires?: string;
      }[];
    };
    t.is(status.node, 'node-0');
    const pod = status.pods.find((p) => p.pod === 'default/client');
    t.like(pod, { ip: client.ip, enrolled: true, identity: CLIENT_ID });
    t.true(Date.parse(pod?.certificateExpires ?? '') > Date.now() + 23 * 3_600_000);
    t.like(
      status.pods.find((p) => p.pod === 'default/outsider'),
      { enrolled: false },
    );
    t.is(status.pods.find((p) => p.pod === 'default/outsider')?.identity, undefined);
  },
);

test.serial(
  '--no-access-log prints no connection line while the metrics still count',
  async (t) => {
    await mesh.stopNode('node-1');
    try {
      await mesh.startNode('node-1', ['--no-access-log']);
      await waitReady('node-1');
      const N = 4;
      const S = 1000;
      const before = await scrape('node-1');
      const node0Lines = mesh.accessLog('node-0').length;
      const results = await fromClient('server', { bytes: S, count: N });
      t.true(
        results.every((r) => r.ok && r.match),
        JSON.stringify(results),
      );
      const closed = async () =>
        value(await scrape('node-1'), 'istio_tcp_connections_closed_total', AS_DESTINATION) -
        value(before, 'istio_tcp_connections_closed_total', AS_DESTINATION);
      await eventually(async () => (await closed()) >= N, 5000);
      const after = await scrape('node-1');
      for (const [metric, n] of [
        ['istio_tcp_connections_closed_total', N],
        ['istio_tcp_sent_bytes_total', N * S],
        ['istio_tcp_received_bytes_total', N * S],
      ] as const) {
        t.is(
          value(after, metric, AS_DESTINATION) - value(before, metric, AS_DESTINATION),
          n,
          metric,
        );
      }
      t.is(mesh.accessLog('node-1').length, 0, 'node-1 printed no access log line');
      t.is(
        (await mesh.waitForAccessLog('node-0', node0Lines + N)).length - node0Lines,
        N,
        'node-0 still logs',
      );
    } finally {
      await mesh.stopNode('node-1');
      await mesh.startNode('node-1');
      await waitReady('node-1');
    }
  },
);

test.serial(
  'readiness is 200 when running and 503 "draining" during a SIGTERM drain, then the process exits',
  async (t) => {
    for (const node of ['node-0', 'node-1']) {
      const ready = await get(node, 'http://127.0.0.1:15021/healthz/ready');
      t.is(ready.status, 200, node);
      t.is(ready.body, 'ready\n');
    }
    await mesh.stopNode('node-0');
    let holder: LabProcess | undefined;
    try {
      const proxy = await mesh.startNode('node-0', ['--drain-grace', '5s']);
      await waitReady('node-0');
      holder = await holdConnection();
      t.true(proxy.signal('SIGTERM'));
      let seen: HttpResult | undefined;
      await eventually(async () => {
        seen = await get('node-0', 'http://127.0.0.1:15021/healthz/ready');
        return seen.status === 503;
      }, 3000);
      t.is(seen?.status, 503);
      t.regex(seen?.body ?? '', /draining/);
      t.true(proxy.running, 'still draining while a connection is open');
      // The held connection ends: the drain is over and the process exits cleanly.
      await holder.stop();
      t.true(await waitFor(proxy.exited, 4000), 'the proxy exited after the drain');
      t.is(proxy.exitInfo?.code, 0);
      const stopped = proxy.lines.find((l) => l.includes('"node proxy stopped'));
      t.regex(stopped ?? '', /"resetConnections":0/, 'no connection had to be reset');
    } finally {
      await holder?.stop();
      await mesh.stopNode('node-0');
      await mesh.startNode('node-0');
      await waitReady('node-0');
    }
  },
);

test.serial("a deleted pod's series disappear from both proxies", async (t) => {
  const [r] = await fromClient('server', { bytes: 100 });
  t.true(r?.ok && r.match, JSON.stringify(r));
  const naming = (samples: Sample[]) =>
    samples.filter(
      (s) =>
        s.name.startsWith('istio_tcp_') &&
        ((s.labels.source_workload === 'client' &&
          s.labels.source_workload_namespace === 'default') ||
          (s.labels.destination_workload === 'client' &&
            s.labels.destination_workload_namespace === 'default')),
    );
  t.true(
    await eventually(async () => {
      const [a, b] = [await scrape('node-0'), await scrape('node-1')];
      return naming(a).length >= TCP_METRICS.length && naming(b).length >= TCP_METRICS.length;
    }, 5000),
    'both proxies have series naming the client first',
  );

  const index = lab.pods.findIndex((p) => p.name === 'client');
  const [client] = lab.pods.splice(index, 1);
  try {
    await mesh.writeManifests();
  } finally {
    lab.pods.splice(index, 0, client!);
  }
  let left: Record<string, Sample[]> = {};
  const gone = await eventually(async () => {
    left = {
      'node-0': naming(await scrape('node-0')),
      'node-1': naming(await scrape('node-1')),
    };
    return left['node-0']!.length === 0 && left['node-1']!.length === 0;
  });
  t.true(gone, `series left: ${JSON.stringify(left)}`);
  const bpf = select(await scrape('node-0'), 'weft_bpf_packets_total', { pod: 'client' });
  t.deepEqual(bpf, [], 'no BPF counters for a pod that is gone');
  const server = select(await scrape('node-1'), 'weft_bpf_packets_total', { pod: 'server' });
  t.true(server.length > 0, 'the server is still reported');
  await mesh.writeManifests(); // the client comes back for whatever runs after
});
