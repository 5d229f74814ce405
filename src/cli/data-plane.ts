// What every process that relays connections builds the same way, whether it is the single
// `weft node` process or one of its data-plane workers: the mesh directory over a config
// store, the NodeProxy with its observers (access log, metrics) and policy, and the
// /debug/connections view of its live flows.
import type { ConfigStore, Workload } from '../config/index.js';
import { spiffeIdFor } from '../identity/index.js';
import type { DestinationResolver } from '../proxy/node-proxy.js';
import type { DirectPathControl } from '../proxy/direct-flows.js';
import { observeAll } from '../proxy/flow.js';
import { NodeProxy, type MeshDirectory, type TunnelCredentials } from '../proxy/node-proxy.js';
import type { PolicyEngine } from '../policy/index.js';
import { isEnrolled } from '../redirect/enrollment.js';
import { AccessLog } from '../telemetry/access-log.js';
import type { Logger } from '../telemetry/logger.js';
import type { MeshMetrics } from '../telemetry/metrics.js';
import type { NodeOptions } from './options.js';

export function identityOf(trustDomain: string, workload: Workload): string {
  return spiffeIdFor(trustDomain, workload.namespace, workload.serviceAccount).uri;
}

export function meshDirectory(store: ConfigStore, trustDomain: string): MeshDirectory {
  return {
    workloadByIp: (ip) => store.workloadByIp(ip),
    isEnrolled: (w) => isEnrolled(w, store.namespace(w.namespace)),
    identityOf: (w) => identityOf(trustDomain, w),
  };
}

export interface DataPlaneDeps {
  readonly options: NodeOptions;
  readonly log: Logger;
  readonly directory: MeshDirectory;
  readonly resolver: DestinationResolver;
  readonly metrics: MeshMetrics;
  readonly policy: PolicyEngine;
  readonly tunnels?: TunnelCredentials;
  readonly directPath?: DirectPathControl;
}

export function buildNodeProxy(deps: DataPlaneDeps): NodeProxy {
  const { options, log, policy } = deps;
  return new NodeProxy({
    nodeName: options.nodeName,
    directory: deps.directory,
    resolver: deps.resolver,
    observer: observeAll([
      ...(options.accessLog
        ? [
            new AccessLog(log.child({ component: 'access' }), {
              sampleRate: options.accessLogSample,
            }),
          ]
        : []),
      deps.metrics,
    ]),
    connectTimeoutMs: options.connectTimeoutMs,
    tunnels: deps.tunnels,
    authorize: (input) =>
      policy.evaluate({
        destination: input.destination,
        destinationPort: input.port,
        source: { identity: input.sourceIdentity, ip: input.sourceIp },
        mtls: input.mtls,
      }),
    logger: log.child({ component: 'hbone' }),
    directPath: deps.directPath,
  });
}

/** One live connection as /debug/connections and `weft status` show it. */
export interface ConnectionView {
  readonly id: number;
  readonly direction: string;
  readonly path: string;
  readonly src: string;
  readonly dst: string;
  readonly srcIdentity?: string;
  readonly dstIdentity?: string;
  readonly ageMs: number;
  readonly bytesSent: number;
  readonly bytesReceived: number;
  /** The data-plane worker that holds it (with --workers above 1). */
  readonly worker?: number;
}

export function connectionsOf(proxy: NodeProxy | undefined, worker?: number): ConnectionView[] {
  return (proxy?.activeFlows() ?? []).map(({ flow, sent, received }) => ({
    id: flow.id,
    direction: flow.direction,
    path: flow.path,
    src: `${flow.client.ip}:${flow.client.port}`,
    dst: `${flow.target.ip}:${flow.target.port}`,
    srcIdentity: flow.sourceIdentity,
    dstIdentity: flow.destinationIdentity,
    ageMs: Date.now() - flow.startedAt,
    bytesSent: sent,
    bytesReceived: received,
    ...(worker === undefined ? {} : { worker }),
  }));
}
