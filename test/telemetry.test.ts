// telemetry/ on its own. The TCP counters: exact counts per label set, folding past the
// series budget, forgetting deleted workloads, a relabelled pod getting new labels. The
// batched log writer: whole lines, atomic-sized writes, warnings at once. No root needed.
import test from 'ava';
import type { Workload } from '../src/config/model.js';
import type { Flow } from '../src/proxy/flow.js';
import { BatchedLines } from '../src/telemetry/logger.js';
import { MeshMetrics } from '../src/telemetry/metrics.js';

function workload(name: string, labels: Record<string, string> = {}): Workload {
  return {
    uid: `uid-${name}`,
    name,
    namespace: 'shop',
    nodeName: 'node-0',
    serviceAccount: name,
    ip: '198.19.0.10',
    ips: ['198.19.0.10'],
    labels,
    annotations: {},
    hostNetwork: false,
    phase: 'Running',
  };
}

function flow(source: Workload, destination: Workload, id = 1): Flow {
  return {
    id,
    direction: 'outbound',
    client: { ip: '198.19.0.10', port: 40000 + id },
    target: { ip: '198.19.0.20', port: 8080 },
    sourceWorkload: source,
    destinationWorkload: destination,
    sourceIdentity: `spiffe://cluster.local/ns/shop/sa/${source.name}`,
    destinationIdentity: `spiffe://cluster.local/ns/shop/sa/${destination.name}`,
    path: 'hbone',
    security: 'mutual_tls',
    startedAt: 0,
  };
}

/** `name{...labels} value` lines of one metric, labels reduced to the ones named. */
async function lines(metrics: MeshMetrics, name: string, keep: string[]): Promise<string[]> {
  const text = await metrics.registry.getSingleMetricAsString(name);
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name}{`))
    .map((l) => {
      const [, labels = '', value = ''] = /\{(.*)\} (\S+)$/.exec(l) ?? [];
      const kept = labels.split(/,(?=[a-z_]+=")/).filter((p) => keep.includes(p.split('=')[0]!));
      return `${kept.join(',')} ${value}`;
    })
    .sort();
}

test('counts each label set exactly and exports only counters that counted', async (t) => {
  const metrics = new MeshMetrics({ seriesBudget: 100 });
  const web = workload('web-5d8f7c9b6d-x2x7q', { app: 'web', version: 'v1' });
  const api = workload('api', { app: 'api' });
  metrics.opened(flow(web, api, 1));
  metrics.opened(flow(web, api, 2));
  metrics.closed(flow(web, api, 1), { kind: 'relayed', sent: 10, received: 200 });
  metrics.closed(flow(web, api, 2), { kind: 'relayed', sent: 5, received: 0 });
  metrics.closed(flow(web, api, 3), { kind: 'refused', reason: 'denied', flag: 'DENY' });
  const keep = ['source_workload', 'source_version', 'destination_app', 'response_flags'];
  t.deepEqual(await lines(metrics, 'istio_tcp_connections_opened_total', keep), [
    'source_workload="web",source_version="v1",destination_app="api",response_flags="-" 2',
  ]);
  t.deepEqual(await lines(metrics, 'istio_tcp_connections_closed_total', keep), [
    'source_workload="web",source_version="v1",destination_app="api",response_flags="-" 2',
    'source_workload="web",source_version="v1",destination_app="api",response_flags="DENY" 1',
  ]);
  t.deepEqual(await lines(metrics, 'istio_tcp_sent_bytes_total', keep), [
    'source_workload="web",source_version="v1",destination_app="api",response_flags="-" 15',
  ]);
  t.deepEqual(await lines(metrics, 'istio_tcp_received_bytes_total', keep), [
    'source_workload="web",source_version="v1",destination_app="api",response_flags="-" 200',
  ]);
  t.is(metrics.seriesCount(), 2);
});

test('past the budget new label sets fold into "other"; deleted workloads lose their series', async (t) => {
  const metrics = new MeshMetrics({ seriesBudget: 1 });
  const [a, b, c] = [workload('a'), workload('b'), workload('c')];
  metrics.opened(flow(a, b));
  metrics.opened(flow(a, c));
  metrics.opened(flow(c, b));
  const keep = ['source_workload', 'destination_workload'];
  t.deepEqual(await lines(metrics, 'istio_tcp_connections_opened_total', keep), [
    'source_workload="a",destination_workload="b" 1',
    'source_workload="other",destination_workload="other" 2',
  ]);
  t.regex(
    await metrics.registry.getSingleMetricAsString('weft_telemetry_series_folded_total'),
    /weft_telemetry_series_folded_total 2$/m,
  );
  t.is(metrics.forgetWorkloadsExcept(new Set(['uid-a', 'uid-c'])), 1);
  t.is(metrics.seriesCount(), 0);
  // Room again: a new pair gets its own series.
  metrics.opened(flow(a, c));
  t.deepEqual(await lines(metrics, 'istio_tcp_connections_opened_total', keep), [
    'source_workload="a",destination_workload="c" 1',
    'source_workload="other",destination_workload="other" 2',
  ]);
});

test('a relabelled pod (a new workload object) is counted under its new labels', async (t) => {
  const metrics = new MeshMetrics({ seriesBudget: 100 });
  const api = workload('api');
  metrics.opened(flow(workload('web', { version: 'v1' }), api));
  metrics.opened(flow(workload('web', { version: 'v2' }), api));
  t.deepEqual(await lines(metrics, 'istio_tcp_connections_opened_total', ['source_version']), [
    'source_version="v1" 1',
    'source_version="v2" 1',
  ]);
});

test('log lines are written in whole-line batches of at most 4096 bytes; warnings at once', async (t) => {
  const writes: string[] = [];
  const out = new BatchedLines({ write: (data: string) => writes.push(data) }, 20);
  const info = (i: number) => `{"level":"info","i":${i},"pad":"${'x'.repeat(90)}"}\n`;
  for (let i = 0; i < 100; i++) out.write(info(i));
  // 100 lines of ~110 bytes: flushed whenever the next line would pass 4096 bytes.
  t.true(writes.length >= 2 && writes.length <= 3, `${writes.length} writes`);
  for (const w of writes) {
    t.true(Buffer.byteLength(w) <= 4096);
    t.true(w.endsWith('\n'));
  }
  out.write('{"level":"warn","msg":"now"}\n');
  t.true(writes.at(-1)!.endsWith('{"level":"warn","msg":"now"}\n'));
  const lines = writes.join('').split('\n').filter(Boolean);
  t.is(lines.length, 101);
  t.deepEqual(
    lines.slice(0, 100).map((l) => (JSON.parse(l) as { i: number }).i),
    [...Array(100).keys()],
  );
  out.write(info(100));
  const before = writes.length;
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.is(writes.length, before + 1, 'a lone info line is written after the delay');
  out.flush();
  t.is(writes.length, before + 1, 'nothing pending, nothing written');
});

test('with no delay every log line is written at once', (t) => {
  const writes: string[] = [];
  const out = new BatchedLines({ write: (data: string) => writes.push(data) }, 0);
  out.write('{"level":"info","i":1}\n');
  out.write('{"level":"info","i":2}\n');
  t.deepEqual(writes, ['{"level":"info","i":1}\n', '{"level":"info","i":2}\n']);
});
