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

function workloadLabels(prefix: 'source' | 'destination', w: Workload | undefined, id?: string) {
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

export class MeshMetrics implements FlowObserver {
  readonly registry = new Registry();
  private readonly opened_: Counter<TcpLabel>;
  private readonly closed_: Counter<TcpLabel>;
  private readonly sent: Counter<TcpLabel>;
  private readonly received: Counter<TcpLabel>;
  private readonly folded: Counter<string>;
  private readonly denials: Counter<'policy' | 'reporter'>;
  /** Label-set key -> labels, and which workload uids each key mentions. */
  private readonly series = new Map<string, { labels: TcpLabels; uids: string[] }>();

  constructor(private readonly options: MeshMetricsOptions) {
    const registers = [this.registry];
    const tcp = (name: string, help: string) =>
      new Counter<TcpLabel>({ name, help, labelNames: TCP_LABELS, registers });
    this.opened_ = tcp('istio_tcp_connections_opened_total', 'TCP connections opened');
    this.closed_ = tcp('istio_tcp_connections_closed_total', 'TCP connections closed');
    this.sent = tcp('istio_tcp_sent_bytes_total', 'Bytes sent by the client (request direction)');
    this.received = tcp(
      'istio_tcp_received_bytes_total',
      'Bytes received by the client (response direction)',
    );
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
    this.opened_.inc(this.labelsFor(flow, '-'));
  }

  closed(flow: Flow, outcome: FlowOutcome): void {
    const flag = outcome.flag ?? '-';
    const labels = this.labelsFor(flow, flag);
    this.closed_.inc(labels);
    if (outcome.kind === 'relayed') {
      this.sent.inc(labels, outcome.sent);
      this.received.inc(labels, outcome.received);
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
      for (const metric of [this.opened_, this.closed_, this.sent, this.received])
        metric.remove(entry.labels);
      this.series.delete(key);
      removed++;
    }
    return removed;
  }

  seriesCount(): number {
    return this.series.size;
  }

  private labelsFor(flow: Flow, flag: string): TcpLabels {
    const labels: TcpLabels = {
      reporter: flow.direction === 'outbound' ? 'source' : 'destination',
      ...workloadLabels('source', flow.sourceWorkload, flow.sourceIdentity),
      ...workloadLabels('destination', flow.destinationWorkload, flow.destinationIdentity),
      destination_service: flow.service
        ? `${flow.service.name}.${flow.service.namespace}.svc.cluster.local`
        : flow.destinationWorkload
          ? 'unknown'
          : flow.target.ip,
      destination_service_name: flow.service?.name ?? 'unknown',
      destination_service_namespace: flow.service?.namespace ?? 'unknown',
      request_protocol: 'tcp',
      response_flags: flag,
      connection_security_policy: flow.security === 'mutual_tls' ? 'mutual_tls' : 'none',
    } as TcpLabels;
    const key = TCP_LABELS.map((l) => labels[l]).join('\u0000');
    if (this.series.has(key)) return labels;
    if (this.series.size >= this.options.seriesBudget) {
      this.folded.inc();
      const folded = { ...labels };
      for (const l of VARIABLE_LABELS) folded[l] = 'other';
      return folded;
    }
    const uids = [flow.sourceWorkload?.uid, flow.destinationWorkload?.uid].filter(
      (u): u is string => u !== undefined,
    );
    this.series.set(key, { labels, uids });
    return labels;
  }
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
