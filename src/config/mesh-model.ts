// config/mesh-model.ts: the model of services, endpoints and security policy: plain readonly
// types translated from Service, EndpointSlice, AuthorizationPolicy and PeerAuthentication.
// Types and constants only (like model.ts); the consumers are lb/ and policy/.
//
// AuthorizationPolicy keeps Istio's shape field for field, L7 fields included, so that policy/
// can apply Istio's rule for what the node proxy cannot enforce at L4.

export type LoadBalancing = 'p2c' | 'random' | 'round-robin';
export const LOAD_BALANCINGS: readonly LoadBalancing[] = ['p2c', 'random', 'round-robin'];
export const DEFAULT_LOAD_BALANCING: LoadBalancing = 'p2c';
export const LOAD_BALANCING_ANNOTATION = 'weft.io/load-balancing';
export const USE_WAYPOINT_ANNOTATION = 'weft.io/use-waypoint';
/** Namespace annotation; its only value is `registry-only`. */
export const OUTBOUND_POLICY_ANNOTATION = 'weft.io/outbound-policy';
export const OUTBOUND_POLICIES: readonly string[] = ['registry-only'];
/** EndpointSlice label naming the Service the slice belongs to. */
export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';

export interface ServicePort {
  /** '' when the service has a single unnamed port. */
  readonly name: string;
  readonly port: number;
  /** A number, or a container port name resolved per endpoint through EndpointSlice ports. */
  readonly targetPort: number | string;
  readonly protocol: 'TCP' | 'UDP' | 'SCTP';
  readonly appProtocol?: string;
}

export interface Service {
  readonly name: string;
  readonly namespace: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly annotations: Readonly<Record<string, string>>;
  /** spec.clusterIPs (IPv4 only, in order); empty for headless (`None`) services. */
  readonly clusterIPs: readonly string[];
  readonly ports: readonly ServicePort[];
  /** spec.selector; undefined for a service without selector (endpoints managed by hand). */
  readonly selector?: Readonly<Record<string, string>>;
  readonly internalTrafficPolicy: 'Cluster' | 'Local';
  /** From the `weft.io/load-balancing` annotation; `p2c` by default. */
  readonly loadBalancing: LoadBalancing;
  /** From the `weft.io/use-waypoint` annotation, if any. */
  readonly waypoint?: string;
}

/**
 * One EndpointSlice port. A slice port without `port` means "all ports" in Kubernetes (only
 * for services without a selector); weft cannot forward to "any port", so such entries are
 * left out of `EndpointSlice.ports`.
 */
export interface EndpointPort {
  /** '' for an unnamed port. */
  readonly name: string;
  readonly port: number;
  readonly protocol: 'TCP' | 'UDP' | 'SCTP';
}

export interface Endpoint {
  /** IPv4 addresses of this endpoint (EndpointSlice addressType IPv4). */
  readonly addresses: readonly string[];
  /** conditions.ready; Kubernetes treats a missing value as true. */
  readonly ready: boolean;
  readonly serving: boolean;
  readonly terminating: boolean;
  readonly nodeName?: string;
  readonly zone?: string;
  readonly targetRef?: {
    readonly kind: string;
    readonly namespace?: string;
    readonly name: string;
  };
}

export interface EndpointSlice {
  readonly name: string;
  readonly namespace: string;
  /** The `kubernetes.io/service-name` label: which Service these endpoints belong to. */
  readonly serviceName: string;
  readonly addressType: 'IPv4' | 'IPv6' | 'FQDN';
  readonly ports: readonly EndpointPort[];
  readonly endpoints: readonly Endpoint[];
}

export type PolicyAction = 'ALLOW' | 'DENY' | 'AUDIT' | 'CUSTOM';
export const POLICY_ACTIONS: readonly PolicyAction[] = ['ALLOW', 'DENY', 'AUDIT', 'CUSTOM'];

/** One `from.source` of an Istio rule. Absent lists mean "not constrained". */
export interface PolicySource {
  readonly principals?: readonly string[];
  readonly notPrincipals?: readonly string[];
  readonly requestPrincipals?: readonly string[];
  readonly notRequestPrincipals?: readonly string[];
  readonly namespaces?: readonly string[];
  readonly notNamespaces?: readonly string[];
  /**
   * Kubernetes service accounts as `<namespace>/<name>` (a bare `<name>` in the manifest is
   * resolved to the policy's namespace). Istio's shorthand for principals in any trust domain.
   */
  readonly serviceAccounts?: readonly string[];
  readonly notServiceAccounts?: readonly string[];
  /** IPs or CIDRs as written (IPv4 or IPv6: Istio accepts both; IPv6 never matches here). */
  readonly ipBlocks?: readonly string[];
  readonly notIpBlocks?: readonly string[];
  readonly remoteIpBlocks?: readonly string[];
  readonly notRemoteIpBlocks?: readonly string[];
  /** Peer trust domains (exact, `*` prefix/suffix, or `*`). */
  readonly trustDomains?: readonly string[];
  readonly notTrustDomains?: readonly string[];
}

/** One `to.operation` of an Istio rule. */
export interface PolicyOperation {
  readonly hosts?: readonly string[];
  readonly notHosts?: readonly string[];
  readonly ports?: readonly string[];
  readonly notPorts?: readonly string[];
  readonly methods?: readonly string[];
  readonly notMethods?: readonly string[];
  readonly paths?: readonly string[];
  readonly notPaths?: readonly string[];
}

export interface PolicyCondition {
  readonly key: string;
  readonly values?: readonly string[];
  readonly notValues?: readonly string[];
}

/** A rule matches when every present field matches (from: any source; to: any operation). */
export interface PolicyRule {
  readonly from?: readonly PolicySource[];
  readonly to?: readonly PolicyOperation[];
  readonly when?: readonly PolicyCondition[];
}

export interface AuthorizationPolicy {
  readonly name: string;
  readonly namespace: string;
  /** spec.selector.matchLabels; undefined applies to every workload in scope. */
  readonly selector?: Readonly<Record<string, string>>;
  /** spec.targetRefs as `Kind/name` (waypoint-bound policies; not enforced by the node proxy). */
  readonly targetRefs: readonly string[];
  /** spec.action, ALLOW when absent. */
  readonly action: PolicyAction;
  /** spec.rules; an empty list never matches (an ALLOW policy with no rules denies all). */
  readonly rules: readonly PolicyRule[];
}

export type MtlsMode = 'UNSET' | 'DISABLE' | 'PERMISSIVE' | 'STRICT';
export const MTLS_MODES: readonly MtlsMode[] = ['UNSET', 'DISABLE', 'PERMISSIVE', 'STRICT'];

export interface PeerAuthentication {
  readonly name: string;
  readonly namespace: string;
  readonly selector?: Readonly<Record<string, string>>;
  /** spec.mtls.mode, UNSET when absent (inherit). */
  readonly mode: MtlsMode;
  /** spec.portLevelMtls: container port -> mode. */
  readonly portLevelModes: ReadonlyMap<number, MtlsMode>;
}
