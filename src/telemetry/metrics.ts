// Prometheus metrics of the node proxy: Istio's TCP metrics with Istio's names and labels (so
// existing dashboards work), and weft's own `weft_*` series. Series are bounded: those of a
// deleted workload are removed, and past a budget new label sets fold into `other`, counted
// by weft_telemetry_series_folded_total.
import { Counter, Registry, collectDefaultMetrics, type Metric } from 'prom-client';
import type { Workload } from '../config/model.js';
import type { Flow, FlowObserver, FlowOutcome } from '../proxy/flow.js';
import { canonicalRevision, canonicalService, principal, workloadName } from './workload-labels.js';

const TCP_LABELS = [
  'reporter',
  'source_workload',
  'source_workload_namespace',
  'source_principal',
  'source_app',
  'source_version',
  'source_canonical_service',
  'source_canonical_revision',
  'destination_workload',
  'destination_workload_namespace',
  'destination_principal',
  'destination_app',
  'destination_version',
  'destination_canonical_service',
  'destination_canonical_revision',
  'destination_service',
  'destination_service_name',
  'destination_service_namespace',
  'request_protocol',
  'response_flags',
  'connection_security_policy',
] as const;
type TcpLabel = (typeof TCP_LABELS)[number];
type TcpLabels = Record<TcpLabel, string>;

/** Label values that identify workloads; folded to `other` past the budget. */
const VARIABLE_LABELS: readonly TcpLabel[] = TCP_LABELS.filter(
  (l) =>
    l !== 'reporter' &&
    l !== 'request_protocol' &&
    l !== 'response_flags' &&
    l !== 'connection_security_policy',
);

export interface MeshMetricsOptions {
  /** Most distinct TCP label sets kept; further ones fold into `other`. */
  readonly seriesBudget: number;
  readonly trustDomain?: string;
}

type WorkloadLabels = Partial<TcpLabels>;

function workloadLabels(
  prefix: 'source' | 'destination',
  w: Workload | undefined,
  id: string | undefined,
): WorkloadLabels {
  return {
    [`${prefix}_workload`]: w ? workloadName(w) : 'unknown',
    [`${prefix}_workload_namespace`]: w?.namespace ?? 'unknown',
    [`${prefix}_principal`]: principal(id),
    [`${prefix}_app`]: w ? (w.labels.app ?? canonicalService(w)) : 'unknown',
    [`${prefix}_version`]: w ? (w.labels.version ?? 'unknown') : 'unknown',
    [`${prefix}_canonical_service`]: w ? canonicalService(w) : 'unknown',
    [`${prefix}_canonical_revision`]: w ? canonicalRevision(w) : 'latest',
  };
}

/** One TCP label set and its four counters (undefined: never counted, so not exported). */
interface TcpSeries {
  readonly labels: TcpLabels;
  /** Workload uids the labels mention (the series goes when one of them is deleted). */
  readonly uids: readonly string[];
  opened?: number;
  closed?: number;
  sent?: number;
  received?: number;
}

type TcpCounter = 'opened' | 'closed' | 'sent' | 'received';

const TCP_COUNTERS: readonly { counter: TcpCounter; name: string; help: string }[] = [
  { counter: 'opened', name: 'istio_tcp_connections_opened_total', help: 'TCP connections opened' },
  { counter: 'closed', name: 'istio_tcp_connections_closed_total', help: 'TCP connections closed' },
  {
    counter: 'sent',
    name: 'istio_tcp_sent_bytes_total',
    help: 'Bytes sent by the client (request direction)',
  },
  {
    counter: 'received',
    name: 'istio_tcp_received_bytes_total',
    help: 'Bytes received by the client (response direction)',
  },
];

/**
 * Istio's TCP counters. They are kept here and read at scrape time rather than held in
 * prom-client Counters: a Counter hashes its 21 labels on every increment, which was a
 * measurable share of the proxy's CPU per connection. A flow finds its series through a key
 * built from per-workload parts that are computed once per workload object (config updates
 * replace the objects, so a relabelled pod gets fresh parts).
 */
export class MeshMetrics implements FlowObserver {
  readonly registry = new Registry();
  private readonly folded: Counter<string>;
  private readonly denials: Counter<'policy' | 'reporter'>;
  /** Label-set key -> series, within the budget. */
  private readonly series = new Map<string, TcpSeries>();
  /** Label sets past the budget, their workload labels folded to `other`. */
  private readonly foldedSeries = new Map<string, TcpSeries>();
  private readonly workloadParts = new WeakMap<Workload, Map<string, WorkloadPart>>();

  constructor(private readonly options: MeshMetricsOptions) {
    const registers = [this.registry];
    for (const { counter, name, help } of TCP_COUNTERS) {
      scrapeMetric(this.registry, { name, help, type: 'counter', labelNames: TCP_LABELS }, () =>
        this.values(counter),
      );
    }
    this.folded = new Counter({
      name: 'weft_telemetry_series_folded_total',
      help: 'Label sets folded into "other" because the series budget was reached',
      registers,
    });
    this.denials = new Counter({
      name: 'weft_policy_denials_total',
      help: 'Connections denied by an authorization policy, by policy (namespace/name)',
      labelNames: ['policy', 'reporter'],
      registers,
    });
    collectDefaultMetrics({ register: this.registry, prefix: 'weft_process_' });
  }

  opened(flow: Flow): void {
    const series = this.seriesFor(flow, '-');
    series.opened = (series.opened ?? 0) + 1;
  }

  closed(flow: Flow, outcome: FlowOutcome): void {
    const series = this.seriesFor(flow, outcome.flag ?? '-');
    series.closed = (series.closed ?? 0) + 1;
    if (outcome.kind === 'relayed') {
      series.sent = (series.sent ?? 0) + outcome.sent;
      series.received = (series.received ?? 0) + outcome.received;
    }
    // Counted where policy was evaluated (the destination's proxy), not again at the source
    // that only saw the tunnel's 401. A same-node connection is decided by this proxy acting
    // for the destination, so it counts as the destination's denial too.
    const evaluatedHere = flow.direction === 'inbound' || flow.path === 'same-node';
    if (outcome.flag === 'DENY' && evaluatedHere) {
      this.denials.inc({ policy: outcome.policy ?? 'default-deny', reporter: 'destination' });
    }
  }

  /** Removes every series that names a workload no longer in the cluster. */
  forgetWorkloadsExcept(liveUids: ReadonlySet<string>): number {
    let removed = 0;
    for (const [key, entry] of this.series) {
      if (entry.uids.every((uid) => liveUids.has(uid))) continue;
      this.series.delete(key);
      removed++;
    }
    return removed;
  }

  seriesCount(): number {
    return this.series.size;
  }

  private *values(counter: TcpCounter): Generator<{ labels: TcpLabels; value: number }> {
    for (const map of [this.series, this.foldedSeries]) {
      for (const entry of map.values()) {
        const value = entry[counter];
        if (value !== undefined) yield { labels: entry.labels, value };
      }
    }
  }

  private seriesFor(flow: Flow, flag: string): TcpSeries {
    const source = this.part('source', flow.sourceWorkload, flow.sourceIdentity);
    const destination = this.part(
      'destination',
      flow.destinationWorkload,
      flow.destinationIdentity,
    );
    const destinationService = flow.service
      ? `${flow.service.name}.${flow.service.namespace}.svc.cluster.local`
      : flow.destinationWorkload
        ? 'unknown'
        : flow.target.ip;
    const reporter = flow.direction === 'outbound' ? 'source' : 'destination';
    const security = flow.security === 'mutual_tls' ? 'mutual_tls' : 'none';
    const key = [
      reporter,
      source.key,
      destination.key,
      destinationService,
      flow.service?.name ?? 'unknown',
      flow.service?.namespace ?? 'unknown',
      flag,
      security,
    ].join('\u0000');
    const known = this.series.get(key);
    if (known) return known;
    const labels = {
      reporter,
      ...source.labels,
      ...destination.labels,
      destination_service: destinationService,
      destination_service_name: flow.service?.name ?? 'unknown',
      destination_service_namespace: flow.service?.namespace ?? 'unknown',
      request_protocol: 'tcp',
      response_flags: flag,
      connection_security_policy: security,
    } as TcpLabels;
    if (this.series.size < this.options.seriesBudget) {
      const uids = [flow.sourceWorkload?.uid, flow.destinationWorkload?.uid].filter(
        (u): u is string => u !== undefined,
      );
      const entry: TcpSeries = { labels, uids };
      this.series.set(key, entry);
      return entry;
    }
    this.folded.inc();
    const folded = { ...labels };
    for (const l of VARIABLE_LABELS) folded[l] = 'other';
    const foldedKey = TCP_LABELS.map((l) => folded[l]).join('\u0000');
    let entry = this.foldedSeries.get(foldedKey);
    if (!entry) {
      entry = { labels: folded, uids: [] };
      this.foldedSeries.set(foldedKey, entry);
    }
    return entry;
  }

  /** A workload's labels for one side, computed once per workload object and identity. */
  private part(
    prefix: 'source' | 'destination',
    workload: Workload | undefined,
    identity: string | undefined,
  ): WorkloadPart {
    const id = identity ?? '';
    if (!workload) return makePart(prefix, undefined, identity);
    let byIdentity = this.workloadParts.get(workload);
    if (!byIdentity) {
      byIdentity = new Map();
      this.workloadParts.set(workload, byIdentity);
    }
    const cacheKey = `${prefix}\u0000${id}`;
    let part = byIdentity.get(cacheKey);
    if (!part) {
      part = makePart(prefix, workload, identity);
      byIdentity.set(cacheKey, part);
    }
    return part;
  }
}

interface WorkloadPart {
  readonly labels: WorkloadLabels;
  /** The label values joined: equal keys mean equal labels. */
  readonly key: string;
}

function makePart(
  prefix: 'source' | 'destination',
  workload: Workload | undefined,
  identity: string | undefined,
): WorkloadPart {
  const labels = workloadLabels(prefix, workload, identity);
  return { labels, key: Object.values(labels).join('\u0000') };
}

/**
 * A metric whose values are read at scrape time (BPF counters, pools, certificates). It can be
 * a counter, which prom-client's own Counter cannot be when the value lives elsewhere.
 */
export function scrapeMetric<L extends string>(
  registry: Registry,
  spec: { name: string; help: string; type: 'counter' | 'gauge'; labelNames: readonly L[] },
  read: () => Iterable<{ labels: Record<L, string>; value: number }>,
): void {
  const metric = {
    name: spec.name,
    help: spec.help,
    type: spec.type,
    labelNames: spec.labelNames,
    aggregator: 'sum',
    get: async () => ({
      name: spec.name,
      help: spec.help,
      type: spec.type,
      aggregator: 'sum',
      values: [...read()].map(({ labels, value }) => ({ labels, value })),
    }),
  };
  // prom-client's Registry accepts any object with name/type/get(); its Metric type is a class.
  registry.registerMetric(metric as unknown as Metric);
}
