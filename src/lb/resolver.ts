// Where a captured connection goes: a service VIP:port resolves to one of its endpoints
// (locality tiers, the service's algorithm, skipping endpoints that already failed), a pod IP
// to that pod, anything else to itself (passthrough) unless the source namespace is
// registry-only. Shapes match proxy/'s DestinationResolver without importing it.
import type { Node, Namespace, Workload } from '../config/model.js';
import {
  OUTBOUND_POLICY_ANNOTATION,
  type EndpointSlice,
  type Service,
} from '../config/mesh-model.js';
import { Balancer } from './balancer.js';
import {
  clientLocality,
  resolveServiceTarget,
  serviceTargetKeys,
  type TargetEndpoint,
} from './endpoints.js';

export interface ClusterView {
  serviceByVip(ip: string): Service | undefined;
  endpointSlicesFor(namespace: string, serviceName: string): readonly EndpointSlice[];
  workloadByIp(ip: string): Workload | undefined;
  namespace(name: string): Namespace | undefined;
  readonly state: {
    readonly nodes: ReadonlyMap<string, Node>;
    readonly services: ReadonlyMap<string, Service>;
  };
}

export interface Resolved {
  readonly endpoint: { readonly ip: string; readonly port: number };
  readonly workload?: Workload;
  readonly service?: { readonly name: string; readonly namespace: string };
  /** The balancer's endpoint, when the destination was a service. */
  readonly lbEndpoint?: TargetEndpoint;
}

export class ServiceResolver {
  constructor(
    private readonly view: ClusterView,
    private readonly nodeName: string,
    private readonly balancer = new Balancer(),
  ) {}

  resolve(
    target: { readonly ip: string; readonly port: number },
    source: Workload | undefined,
    exclude: ReadonlySet<string>,
  ): Resolved | { readonly refuse: string } | undefined {
    const service = this.view.serviceByVip(target.ip);
    if (service) return this.resolveService(service, target.port, exclude);
    if (exclude.has(`${target.ip}:${target.port}`)) return undefined;
    const workload = this.view.workloadByIp(target.ip);
    if (workload) return { endpoint: target, workload };
    const policy =
      source && this.view.namespace(source.namespace)?.annotations[OUTBOUND_POLICY_ANNOTATION];
    if (policy === 'registry-only') {
      return {
        refuse: `${target.ip}:${target.port} is neither a pod nor a service, and namespace ${source!.namespace} is registry-only`,
      };
    }
    return { endpoint: target };
  }

  /** Counts the connection against its endpoint (p2c reads it); returns the release. */
  track(destination: Resolved): (() => void) | undefined {
    if (!destination.lbEndpoint) return undefined;
    const lease = this.balancer.acquire(destination.lbEndpoint);
    return () => lease.release();
  }

  /**
   * Drops balancing state of services that are gone (call on config changes). Costs nothing
   * while no service has such state (the key set of every service is not built).
   */
  retainLive(): void {
    if (!this.balancer.hasServiceState) return;
    this.balancer.retain(serviceTargetKeys(this.view.state.services.values()));
  }

  private resolveService(service: Service, port: number, exclude: ReadonlySet<string>) {
    const name = `${service.namespace}/${service.name}`;
    const servicePort = service.ports.find((p) => p.port === port && p.protocol === 'TCP');
    if (!servicePort) return { refuse: `service ${name} has no TCP port ${port}` };
    const nodes = this.view.state.nodes;
    const target = resolveServiceTarget(
      service,
      servicePort,
      this.view.endpointSlicesFor(service.namespace, service.name),
      {
        locality: clientLocality(this.nodeName, nodes),
        nodes,
      },
    );
    if (target.tiers.length === 0) {
      return {
        refuse: `service ${name} port ${port} has no ready endpoint${service.internalTrafficPolicy === 'Local' ? ' on this node (internalTrafficPolicy: Local)' : ''}`,
      };
    }
    const endpoint = this.balancer.pickTarget(target, exclude);
    if (!endpoint) return undefined;
    return {
      endpoint: { ip: endpoint.address, port: endpoint.port },
      workload: this.view.workloadByIp(endpoint.address),
      service: { name: service.name, namespace: service.namespace },
      lbEndpoint: endpoint,
    };
  }
}
