// Istio's naming for workloads in telemetry: workload name, canonical service and revision,
// derived from a pod the way Istio derives them from labels, so existing dashboards line up.
import type { Workload } from '../config/model.js';

/** Pods of a Deployment are `<name>-<replicaset hash>-<suffix>`; a DaemonSet's `<name>-<suffix>`. */
const DEPLOYMENT_POD = /^(.+)-[a-z0-9]{6,10}-[a-z0-9]{5}$/;

export function workloadName(w: Workload): string {
  return DEPLOYMENT_POD.exec(w.name)?.[1] ?? w.name;
}

export function canonicalService(w: Workload): string {
  return (
    w.labels['service.istio.io/canonical-name'] ??
    w.labels['app.kubernetes.io/name'] ??
    w.labels.app ??
    workloadName(w)
  );
}

export function canonicalRevision(w: Workload): string {
  return (
    w.labels['service.istio.io/canonical-revision'] ??
    w.labels['app.kubernetes.io/version'] ??
    w.labels.version ??
    'latest'
  );
}

/** Istio's principal label value: the SPIFFE ID itself, `unknown` when there is none. */
export function principal(spiffeId: string | undefined): string {
  return spiffeId ?? 'unknown';
}
