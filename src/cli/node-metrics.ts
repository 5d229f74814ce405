// The node proxy's scrape-time metrics: values that live elsewhere (BPF counters, workload
// certificates, the HBONE pool, the config store), read when Prometheus scrapes. It reads
// through the functions it is given; it changes nothing.
import type { Registry } from 'prom-client';
import { COUNTER_FIELDS, type PodCounters } from '../bpf/weft-maps.js';
import type { Workload } from '../config/index.js';
import { scrapeMetric } from '../telemetry/metrics.js';

export interface NodeMetricSources {
  /** This node's pods. */
  localPods(): readonly Workload[];
  /** The redirect program's counters for a pod IP; undefined before the datapath is open. */
  podCounters(ip: string): PodCounters | undefined;
  certificates(): readonly { spiffeId: string; notAfter?: string }[];
  /** The HBONE client pool's figures; absent with workers (each reports its own). */
  hbonePool?(): Record<string, number>;
  configGeneration(): number;
  lastReloadErrors(): number;
}

export function registerNodeMetrics(registry: Registry, sources: NodeMetricSources): void {
  scrapeMetric(
    registry,
    {
      name: 'weft_bpf_packets_total',
      help: 'Redirect program decisions per local pod (captured counts new connections)',
      type: 'counter',
      labelNames: ['pod', 'namespace', 'counter'],
    },
    () =>
      sources.localPods().flatMap((pod) => {
        const counters = sources.podCounters(pod.ip);
        return COUNTER_FIELDS.map((field) => ({
          labels: { pod: pod.name, namespace: pod.namespace, counter: snake(field) },
          value: Number(counters?.[field] ?? 0n),
        }));
      }),
  );
  scrapeMetric(
    registry,
    {
      name: 'weft_certificate_expiry_timestamp_seconds',
      help: 'When each workload certificate held by this node expires',
      type: 'gauge',
      labelNames: ['identity'],
    },
    () =>
      sources
        .certificates()
        .filter((c) => c.notAfter)
        .map((c) => ({ labels: { identity: c.spiffeId }, value: Date.parse(c.notAfter!) / 1000 })),
  );
  const hbonePool = sources.hbonePool;
  if (hbonePool) {
    scrapeMetric(
      registry,
      {
        name: 'weft_hbone_pool',
        help: 'HBONE client pool: live connections, open streams, handshakes done',
        type: 'gauge',
        labelNames: ['kind'],
      },
      () =>
        Object.entries(hbonePool()).map(([kind, value]) => ({
          labels: { kind },
          value: Number(value),
        })),
    );
  }
  scrapeMetric(
    registry,
    {
      name: 'weft_config_generation',
      help: 'Generation of the cluster state in force',
      type: 'gauge',
      labelNames: [],
    },
    () => [{ labels: {}, value: sources.configGeneration() }],
  );
  scrapeMetric(
    registry,
    {
      name: 'weft_config_last_reload_errors',
      help: 'Invalid objects in the last config load (their last good versions stay in force)',
      type: 'gauge',
      labelNames: [],
    },
    () => [{ labels: {}, value: sources.lastReloadErrors() }],
  );
}

function snake(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}
