// test/config-mesh.test.ts: the mesh kinds of the config layer: Service, EndpointSlice and
// Istio's AuthorizationPolicy and PeerAuthentication: translation and defaults, located
// validation errors, Istio manifests loading unchanged, the store's indices, and last good
// state for policies. Uses temp directories only; every wait is bounded.

import test, { type ExecutionContext } from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ConfigStore,
  FileSource,
  loadPath,
  silentLogger,
  type ConfigError,
  type Kind,
  type KindMap,
  type TranslatedObject,
} from '../src/config/index.js';

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'weft-config-mesh-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const texts = (errors: readonly ConfigError[]): string[] => errors.map((e) => e.toString());

async function loadText(t: ExecutionContext, text: string, name = 'mesh.yaml') {
  const dir = await tempDir(t);
  await writeFile(join(dir, name), text);
  const result = await loadPath(dir);
  return { dir, result, errors: texts(result.errors) };
}

function valueOf<K extends Kind>(
  objects: readonly TranslatedObject[],
  kind: K,
  name: string,
): KindMap[K] {
  const o = objects.find((x) => x.kind === kind && x.ref.name === name);
  if (o === undefined) throw new Error(`${kind} ${name} not loaded`);
  return o.value as KindMap[K];
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// --- each kind loads ------------------------------------------------------------------------

test('Service: fields, defaults, headless, dual-stack, annotations', async (t) => {
  const { result, errors } = await loadText(
    t,
    `apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web}
  annotations:
    weft.io/load-balancing: round-robin
    weft.io/use-waypoint: shop-waypoint
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00::10"]
  internalTrafficPolicy: Local
  ports:
  - name: http
    port: 80
    targetPort: 8080
    appProtocol: http
  - name: grpc
    port: 9090
    protocol: TCP
    targetPort: grpc-port
  - name: dns
    port: 53
    protocol: UDP
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  ports:
  - port: 5432
---
apiVersion: v1
kind: Service
metadata: {name: manual}
spec:
  clusterIPs: [10.96.0.11]
  selector: {}
  ports: [{port: 443, targetPort: 0}]
`,
  );
  t.deepEqual(errors, []);
  t.deepEqual(valueOf(result.objects, 'Service', 'web'), {
    name: 'web',
    namespace: 'shop',
    labels: { app: 'web' },
    annotations: {
      'weft.io/load-balancing': 'round-robin',
      'weft.io/use-waypoint': 'shop-waypoint',
    },
    clusterIPs: ['10.96.0.10'],
    ports: [
      { name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'http' },
      { name: 'grpc', port: 9090, targetPort: 'grpc-port', protocol: 'TCP' },
      { name: 'dns', port: 53, targetPort: 53, protocol: 'UDP' },
    ],
    selector: { app: 'web' },
    internalTrafficPolicy: 'Local',
    loadBalancing: 'round-robin',
    waypoint: 'shop-waypoint',
  });
  t.deepEqual(valueOf(result.objects, 'Service', 'db'), {
    name: 'db',
    namespace: 'default',
    labels: {},
    annotations: {},
    clusterIPs: [],
    ports: [{ name: '', port: 5432, targetPort: 5432, protocol: 'TCP' }],
    internalTrafficPolicy: 'Cluster',
    loadBalancing: 'p2c',
  });
  const manual = valueOf(result.objects, 'Service', 'manual');
  t.is(manual.selector, undefined, 'an empty selector is no selector');
  t.deepEqual(manual.clusterIPs, ['10.96.0.11']);
  t.deepEqual(manual.ports[0]!.targetPort, 443, 'targetPort 0 defaults to the port');
});

test('EndpointSlice: endpoints, condition defaults, ports without a number left out', async (t) => {
  const { result, errors } = await loadText(
    t,
    `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
- port: 9090
- name: all
endpoints:
- addresses: [10.1.0.5]
  nodeName: node-1
  zone: z1
  targetRef: {kind: Pod, namespace: shop, name: web-1}
- addresses: [10.1.0.6]
  conditions: {ready: false}
- addresses: [10.1.0.7]
  conditions: {ready: false, serving: true, terminating: true}
`,
  );
  t.deepEqual(errors, []);
  t.deepEqual(valueOf(result.objects, 'EndpointSlice', 'web-abc12'), {
    name: 'web-abc12',
    namespace: 'shop',
    serviceName: 'web',
    addressType: 'IPv4',
    ports: [
      { name: 'http', port: 8080, protocol: 'TCP' },
      { name: '', port: 9090, protocol: 'TCP' },
    ],
    endpoints: [
      {
        addresses: ['10.1.0.5'],
        ready: true,
        serving: true,
        terminating: false,
        nodeName: 'node-1',
        zone: 'z1',
        targetRef: { kind: 'Pod', namespace: 'shop', name: 'web-1' },
      },
      { addresses: ['10.1.0.6'], ready: false, serving: false, terminating: false },
      { addresses: ['10.1.0.7'], ready: false, serving: true, terminating: true },
    ],
  });
});

/** The shape of Istio's documentation examples, L7 fields included. */
function istioPolicy(apiVersion: string): string {
  return `apiVersion: ${apiVersion}
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
      version: v1
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["dev"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
  - from:
    - source:
        requestPrincipals: ["*"]
        notIpBlocks: ["203.0.113.4", "2001:db8::/32"]
        remoteIpBlocks: ["198.51.100.0/24"]
    - source:
        serviceAccounts: ["curl", "other/client"]
    - source:
        principals: ["*/ns/prod/sa/frontend", "cluster.local/ns/prod/*"]
        notPrincipals: ["*"]
        trustDomains: ["cluster.local"]
    to:
    - operation:
        hosts: ["*.example.com"]
        notHosts: ["admin.example.com"]
        notPaths: ["/admin*"]
        notMethods: ["DELETE"]
        ports: ["8080"]
        notPorts: ["9090"]
    when:
    - key: request.headers[User-Agent]
      notValues: ["curl/*"]
    - key: source.ip
      values: ["10.1.2.3", "10.2.0.0/16"]
    - key: destination.port
      values: ["8080"]
    - key: experimental.envoy.filters.network.mysql_proxy[db.table]
      values: ["[update]"]
  - {}
`;
}

const istioExpected = {
  name: 'httpbin',
  namespace: 'foo',
  selector: { app: 'httpbin', version: 'v1' },
  targetRefs: [],
  action: 'ALLOW',
  rules: [
    {
      from: [{ principals: ['cluster.local/ns/default/sa/sleep'] }, { namespaces: ['dev'] }],
      to: [
        { methods: ['GET'], paths: ['/info*'] },
        { methods: ['POST'], paths: ['/data'] },
      ],
      when: [{ key: 'request.auth.claims[iss]', values: ['https://accounts.google.com'] }],
    },
    {
      from: [
        {
          requestPrincipals: ['*'],
          notIpBlocks: ['203.0.113.4', '2001:db8::/32'],
          remoteIpBlocks: ['198.51.100.0/24'],
        },
        { serviceAccounts: ['foo/curl', 'other/client'] },
        {
          principals: ['*/ns/prod/sa/frontend', 'cluster.local/ns/prod/*'],
          notPrincipals: ['*'],
          trustDomains: ['cluster.local'],
        },
      ],
      to: [
        {
          hosts: ['*.example.com'],
          notHosts: ['admin.example.com'],
          ports: ['8080'],
          notPorts: ['9090'],
          notMethods: ['DELETE'],
          notPaths: ['/admin*'],
        },
      ],
      when: [
        { key: 'request.headers[User-Agent]', notValues: ['curl/*'] },
        { key: 'source.ip', values: ['10.1.2.3', '10.2.0.0/16'] },
        { key: 'destination.port', values: ['8080'] },
        { key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]'] },
      ],
    },
    {},
  ],
};

for (const apiVersion of ['security.istio.io/v1', 'security.istio.io/v1beta1']) {
  test(`AuthorizationPolicy: an Istio manifest with L7 fields loads unchanged (${apiVersion})`, async (t) => {
    const { result, errors } = await loadText(t, istioPolicy(apiVersion));
    t.deepEqual(errors, []);
    t.deepEqual(valueOf(result.objects, 'AuthorizationPolicy', 'httpbin'), istioExpected);
  });
}

test('AuthorizationPolicy: defaults, targetRefs, DENY and CUSTOM, List form', async (t) => {
  const { result, errors } = await loadText(
    t,
    `apiVersion: security.istio.io/v1
kind: AuthorizationPolicyList
items:
- metadata: {name: allow-nothing, namespace: shop}
- metadata: {name: deny-ports, namespace: shop}
  spec:
    action: DENY
    rules:
    - to: [{operation: {ports: ["22"]}}]
- metadata: {name: waypoint, namespace: shop}
  spec:
    targetRefs:
    - {kind: Service, group: "", name: web}
    - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}
    rules: [{from: [{source: {namespaces: ["a*"]}}]}]
- metadata: {name: ext, namespace: shop}
  spec:
    action: CUSTOM
    provider: {name: opa}
    rules: [{to: [{operation: {paths: ["/admin"]}}]}]
`,
  );
  t.deepEqual(errors, []);
  t.deepEqual(valueOf(result.objects, 'AuthorizationPolicy', 'allow-nothing'), {
    name: 'allow-nothing',
    namespace: 'shop',
    targetRefs: [],
    action: 'ALLOW',
    rules: [],
  });
  t.deepEqual(valueOf(result.objects, 'AuthorizationPolicy', 'deny-ports').rules, [
    { to: [{ ports: ['22'] }] },
  ]);
  t.deepEqual(valueOf(result.objects, 'AuthorizationPolicy', 'waypoint').targetRefs, [
    'Service/web',
    'Gateway/waypoint',
  ]);
  t.is(valueOf(result.objects, 'AuthorizationPolicy', 'ext').action, 'CUSTOM');
});

test('PeerAuthentication: modes and port-level modes, v1 and v1beta1', async (t) => {
  const { result, errors } = await loadText(
    t,
    `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: db, namespace: shop}
spec:
  selector:
    matchLabels: {app: db}
  mtls:
    mode: PERMISSIVE
  portLevelMtls:
    5432:
      mode: DISABLE
    "8080": {}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: empty, namespace: shop}
`,
  );
  t.deepEqual(errors, []);
  t.deepEqual(valueOf(result.objects, 'PeerAuthentication', 'default'), {
    name: 'default',
    namespace: 'istio-system',
    mode: 'STRICT',
    portLevelModes: new Map(),
  });
  t.deepEqual(valueOf(result.objects, 'PeerAuthentication', 'db'), {
    name: 'db',
    namespace: 'shop',
    selector: { app: 'db' },
    mode: 'PERMISSIVE',
    portLevelModes: new Map([
      [5432, 'DISABLE'],
      [8080, 'UNSET'],
    ]),
  });
  t.is(valueOf(result.objects, 'PeerAuthentication', 'empty').mode, 'UNSET');
});

test('Namespace: weft.io/outbound-policy registry-only is accepted', async (t) => {
  const { errors } = await loadText(
    t,
    'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations: {weft.io/outbound-policy: registry-only}\n',
  );
  t.deepEqual(errors, []);
});

// --- validation: every rule gives an exact, located message ---------------------------------

const svc = (spec: string, meta = ''): string =>
  `apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n${meta}spec:\n${spec}`;
const slice = (body: string, labels = '    kubernetes.io/service-name: web\n'): string =>
  `apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels:\n${labels}${body}`;
const ap = (spec: string, version = 'v1'): string =>
  `apiVersion: security.istio.io/${version}\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: shop\nspec:\n${spec}`;
const pa = (spec: string): string =>
  `apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: p\n  namespace: shop\nspec:\n${spec}`;

const validationCases: Array<{ title: string; yaml: string; errors: string[] }> = [
  // Service
  {
    title: 'Service: cluster IPs must be IPs or None',
    yaml: svc('  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n'),
    errors: [
      'mesh.yaml:6: Service default/web: spec.clusterIP: "10.96.0.300" is not an IP address (or "None" for a headless service)',
    ],
  },
  {
    title: 'Service: clusterIPs entries are checked one by one; None must be alone',
    yaml: svc('  clusterIPs:\n  - None\n  - banana\n'),
    errors: [
      'mesh.yaml:7: Service default/web: spec.clusterIPs[0]: "None" (headless) must be the only cluster IP',
      'mesh.yaml:8: Service default/web: spec.clusterIPs[1]: "banana" is not an IP address (or "None" for a headless service)',
    ],
  },
  {
    title: 'Service: port numbers are 1-65535 and required',
    yaml: svc('  ports:\n  - name: a\n    port: 70000\n  - name: b\n    targetPort: 80\n'),
    errors: [
      'mesh.yaml:8: Service default/web: spec.ports[0].port: 70000 is not a valid port number (expected 1-65535)',
      'mesh.yaml:9: Service default/web: spec.ports[1].port: required',
    ],
  },
  {
    title: 'Service: targetPort is a number or an IANA service name',
    yaml: svc(
      '  ports:\n  - name: a\n    port: 80\n    targetPort: "8080"\n  - name: b\n    port: 81\n    targetPort: Http_Port\n  - name: c\n    port: 82\n    targetPort: 0.5\n',
    ),
    errors: [
      'mesh.yaml:9: Service default/web: spec.ports[0].targetPort: "8080" is not a valid port name (at most 15 lowercase letters, digits and "-", with at least one letter); write a port number without quotes',
      'mesh.yaml:12: Service default/web: spec.ports[1].targetPort: "Http_Port" is not a valid port name (at most 15 lowercase letters, digits and "-", with at least one letter)',
      'mesh.yaml:15: Service default/web: spec.ports[2].targetPort: 0.5 is not a valid port number (expected 1-65535)',
    ],
  },
  {
    title: 'Service: several ports need distinct names; protocol is TCP, UDP or SCTP',
    yaml: svc(
      '  ports:\n  - port: 80\n  - name: a\n    port: 81\n    protocol: tcp\n  - name: a\n    port: 82\n',
    ),
    errors: [
      'mesh.yaml:7: Service default/web: spec.ports[0].name: required when a service has several ports',
      'mesh.yaml:10: Service default/web: spec.ports[1].protocol: "tcp" is not a protocol (expected one of TCP, UDP, SCTP)',
      'mesh.yaml:11: Service default/web: spec.ports[2].name: "a" is already used by spec.ports[1]',
    ],
  },
  {
    title: 'Service: weft.io/load-balancing must be p2c, random or round-robin',
    yaml: svc(
      '  ports: [{port: 80}]\n',
      '  annotations:\n    weft.io/load-balancing: least-conn\n',
    ),
    errors: [
      'mesh.yaml:6: Service default/web: metadata.annotations["weft.io/load-balancing"]: "least-conn" is not a load-balancing mode (expected one of p2c, random, round-robin)',
    ],
  },
  {
    title: 'Service: weft.io/use-waypoint must name a waypoint',
    yaml: svc('  ports: [{port: 80}]\n', '  annotations:\n    weft.io/use-waypoint: My Waypoint\n'),
    errors: [
      'mesh.yaml:6: Service default/web: metadata.annotations["weft.io/use-waypoint"]: "My Waypoint" is not a waypoint name (a DNS-1123 subdomain, optionally prefixed by "<namespace>/")',
    ],
  },
  {
    title: 'Service: internalTrafficPolicy and type are checked',
    yaml: svc('  type: Internal\n  internalTrafficPolicy: Node\n'),
    errors: [
      'mesh.yaml:6: Service default/web: spec.type: "Internal" is not a service type (expected one of ClusterIP, NodePort, LoadBalancer, ExternalName)',
      'mesh.yaml:7: Service default/web: spec.internalTrafficPolicy: "Node" is not a traffic policy (expected Cluster or Local)',
    ],
  },
  // EndpointSlice
  {
    title: 'EndpointSlice: the kubernetes.io/service-name label and addressType are required',
    yaml: slice('endpoints: []\n', '    app: web\n'),
    errors: [
      'mesh.yaml:1: EndpointSlice default/web-1: addressType: required (IPv4, IPv6, FQDN)',
      'mesh.yaml:5: EndpointSlice default/web-1: metadata.labels["kubernetes.io/service-name"]: required (the name of the Service these endpoints belong to)',
    ],
  },
  {
    title: 'EndpointSlice: addresses match addressType; conditions are booleans',
    yaml: slice(
      'addressType: IPv4\nendpoints:\n- addresses: ["fd00::1"]\n  conditions:\n    ready: "yes"\n- addresses: []\n- nodeName: node-1\n',
    ),
    errors: [
      'mesh.yaml:9: EndpointSlice default/web-1: endpoints[0].addresses[0]: "fd00::1" is not an IPv4 address',
      'mesh.yaml:11: EndpointSlice default/web-1: endpoints[0].conditions.ready: expected true or false, got a string "yes"',
      'mesh.yaml:12: EndpointSlice default/web-1: endpoints[1].addresses: must hold at least one address',
      'mesh.yaml:13: EndpointSlice default/web-1: endpoints[2].addresses: required',
    ],
  },
  {
    title: 'EndpointSlice: addressType, ports and targetRef are checked',
    yaml: slice(
      'addressType: IP\nports:\n- port: 0\nendpoints:\n- addresses: [10.0.0.1]\n  targetRef: {kind: Pod}\n',
    ),
    errors: [
      'mesh.yaml:7: EndpointSlice default/web-1: addressType: "IP" is not an address type (expected one of IPv4, IPv6, FQDN)',
      'mesh.yaml:9: EndpointSlice default/web-1: ports[0].port: 0 is not a valid port number (expected 1-65535)',
      'mesh.yaml:12: EndpointSlice default/web-1: endpoints[0].targetRef.name: required',
    ],
  },
  // AuthorizationPolicy
  {
    title: 'AuthorizationPolicy: principals follow <trust-domain>/ns/<ns>/sa/<sa>',
    yaml: ap(`  rules:
  - from:
    - source:
        principals:
        - sleep
        - spiffe://cluster.local/ns/default/sa/sleep
        - cluster.local/ns/*/sa/sleep
        - "*sleep*"
        notPrincipals: [7]
`),
    errors: [
      'mesh.yaml:11: AuthorizationPolicy shop/p: spec.rules[0].from[0].source.principals[0]: "sleep" is not a principal (expected <trust-domain>/ns/<namespace>/sa/<service-account>, optionally with a "*" prefix or suffix)',
      'mesh.yaml:12: AuthorizationPolicy shop/p: spec.rules[0].from[0].source.principals[1]: "spiffe://cluster.local/ns/default/sa/sleep" is not a principal (write it without "spiffe://")',
      'mesh.yaml:13: AuthorizationPolicy shop/p: spec.rules[0].from[0].source.principals[2]: "cluster.local/ns/*/sa/sleep" is not a principal ("*" is only allowed as the first or the last character)',
      'mesh.yaml:14: AuthorizationPolicy shop/p: spec.rules[0].from[0].source.principals[3]: "*sleep*" is not a principal ("*" is only allowed as the first or the last character)',
      'mesh.yaml:15: AuthorizationPolicy shop/p: spec.rules[0].from[0].source.notPrincipals[0]: expected a string, got number 7 (quote it)',
    ],
  },
  {
    title: 'AuthorizationPolicy: ipBlocks are IP addresses or CIDRs',
    yaml: ap(`  rules:
  - from:
    - source:
        ipBlocks: [10.0.0.0/33, 10.0.0.256, ""]
        notRemoteIpBlocks: [foo]
`),
    errors: [
      'mesh.yaml:10: AuthorizationPolicy shop/p: spec.rules[0].from[0].source.ipBlocks[0]: "10.0.0.0/33" is not an IP address or CIDR block',
      'mesh.yaml:10: AuthorizationPolicy shop/p: spec.rules[0].from[0].source.ipBlocks[1]: "10.0.0.256" is not an IP address or CIDR block',
      'mesh.yaml:10: AuthorizationPolicy shop/p: spec.rules[0].from[0].source.ipBlocks[2]: must not be empty',
      'mesh.yaml:11: AuthorizationPolicy shop/p: spec.rules[0].from[0].source.notRemoteIpBlocks[0]: "foo" is not an IP address or CIDR block',
    ],
  },
  {
    title: 'AuthorizationPolicy: ports are numeric strings 1-65535',
    yaml: ap(`  rules:
  - to:
    - operation:
        ports: ["http", "0", 8080]
        notPorts: ["65536"]
`),
    errors: [
      'mesh.yaml:10: AuthorizationPolicy shop/p: spec.rules[0].to[0].operation.ports[0]: "http" is not a port (expected a number from 1 to 65535, as a string)',
      'mesh.yaml:10: AuthorizationPolicy shop/p: spec.rules[0].to[0].operation.ports[1]: "0" is not a port (expected a number from 1 to 65535, as a string)',
      'mesh.yaml:10: AuthorizationPolicy shop/p: spec.rules[0].to[0].operation.ports[2]: expected a string, got number 8080 (quote it)',
      'mesh.yaml:11: AuthorizationPolicy shop/p: spec.rules[0].to[0].operation.notPorts[0]: "65536" is not a port (expected a number from 1 to 65535, as a string)',
    ],
  },
  {
    title: 'AuthorizationPolicy: action is ALLOW, DENY, AUDIT or CUSTOM',
    yaml: ap('  action: allow\n'),
    errors: [
      'mesh.yaml:7: AuthorizationPolicy shop/p: spec.action: "allow" is not an action (expected one of ALLOW, DENY, AUDIT, CUSTOM)',
    ],
  },
  {
    title: 'AuthorizationPolicy: fields Istio does not know are errors (a typo would widen a rule)',
    yaml: ap(
      `  rule: []
  rules:
  - from:
    - source:
        principal: ["cluster.local/ns/a/sa/b"]
    to:
    - operation: {port: ["80"]}
      extra: 1
    ttl: 5
`,
      'v1beta1',
    ),
    errors: [
      'mesh.yaml:7: AuthorizationPolicy shop/p: spec.rule: unknown field (did you mean "rules"?)',
      'mesh.yaml:10: AuthorizationPolicy shop/p: spec.rules[0].from[0].source: must set at least one field (leave "from" out to match any source)',
      'mesh.yaml:11: AuthorizationPolicy shop/p: spec.rules[0].from[0].source.principal: unknown field (did you mean "principals"?)',
      'mesh.yaml:13: AuthorizationPolicy shop/p: spec.rules[0].to[0].operation.port: unknown field (did you mean "ports"?)',
      'mesh.yaml:13: AuthorizationPolicy shop/p: spec.rules[0].to[0].operation: must set at least one field (leave "to" out to match any operation)',
      'mesh.yaml:14: AuthorizationPolicy shop/p: spec.rules[0].to[0].extra: unknown field (expected operation)',
      'mesh.yaml:15: AuthorizationPolicy shop/p: spec.rules[0].ttl: unknown field (expected one of from, to, when)',
    ],
  },
  {
    title: 'AuthorizationPolicy: from and to need a source and an operation',
    yaml: ap(`  rules:
  - from: []
    to:
    - {}
`),
    errors: [
      'mesh.yaml:8: AuthorizationPolicy shop/p: spec.rules[0].from: must not be empty (leave it out to match any source)',
      'mesh.yaml:10: AuthorizationPolicy shop/p: spec.rules[0].to[0].operation: required',
    ],
  },
  {
    title: 'AuthorizationPolicy: when keys are Istio attributes; values are checked by key',
    yaml: ap(`  rules:
  - when:
    - key: source.ip
      values: [10.0.0.999]
    - key: destination.labels[app]
      values: [web]
    - key: request.headers[]
      values: [x]
    - key: destination.port
      notValues: [http]
    - key: source.namespace
`),
    errors: [
      'mesh.yaml:10: AuthorizationPolicy shop/p: spec.rules[0].when[0].values[0]: "10.0.0.999" is not an IP address or CIDR block',
      'mesh.yaml:11: AuthorizationPolicy shop/p: spec.rules[0].when[1].key: "destination.labels[app]" is not an attribute Istio knows (such as source.ip, source.namespace, source.principal, destination.port, request.headers[<name>])',
      'mesh.yaml:13: AuthorizationPolicy shop/p: spec.rules[0].when[2].key: "request.headers[]" is not an attribute Istio knows (such as source.ip, source.namespace, source.principal, destination.port, request.headers[<name>])',
      'mesh.yaml:16: AuthorizationPolicy shop/p: spec.rules[0].when[3].notValues[0]: "http" is not a port (expected a number from 1 to 65535, as a string)',
      'mesh.yaml:17: AuthorizationPolicy shop/p: spec.rules[0].when[4]: at least one of values and notValues is required',
    ],
  },
  {
    title: 'AuthorizationPolicy: selector, targetRef and targetRefs exclude each other',
    yaml: ap(`  selector:
    matchLabels: {app: "web*"}
  targetRefs:
  - {kind: Service, name: web, namespace: other}
`),
    errors: [
      'mesh.yaml:8: AuthorizationPolicy shop/p: spec.selector.matchLabels.app: wildcards are not allowed in label values',
      'mesh.yaml:9: AuthorizationPolicy shop/p: spec.targetRefs: only one of selector, targetRef and targetRefs may be set',
      'mesh.yaml:10: AuthorizationPolicy shop/p: spec.targetRefs[0].namespace: must not be set (Istio does not support cross-namespace references)',
    ],
  },
  {
    title: 'AuthorizationPolicy: serviceAccounts exclude principals; provider only with CUSTOM',
    yaml: ap(`  provider: {name: opa}
  rules:
  - from:
    - source:
        serviceAccounts: ["ns/*"]
        namespaces: [a]
`),
    errors: [
      'mesh.yaml:7: AuthorizationPolicy shop/p: spec.provider: only allowed with action CUSTOM (the action is ALLOW)',
      'mesh.yaml:11: AuthorizationPolicy shop/p: spec.rules[0].from[0].source.serviceAccounts[0]: "ns/*" is not a service account (expected <namespace>/<name> or <name>, without wildcards)',
    ],
  },
  {
    title: 'AuthorizationPolicy: serviceAccounts with namespaces is refused',
    yaml: ap(`  rules:
  - from:
    - source:
        serviceAccounts: [sleep]
        namespaces: [a]
`),
    errors: [
      'mesh.yaml:10: AuthorizationPolicy shop/p: spec.rules[0].from[0].source.serviceAccounts: cannot be set together with principals or namespaces',
    ],
  },
  {
    title: 'AuthorizationPolicy: an unsupported version is an error',
    yaml: ap('  action: DENY\n', 'v1alpha1'),
    errors: [
      'mesh.yaml:1: AuthorizationPolicy shop/p: apiVersion: "security.istio.io/v1alpha1" is not supported for AuthorizationPolicy (expected security.istio.io/v1 or security.istio.io/v1beta1)',
    ],
  },
  // PeerAuthentication
  {
    title: 'PeerAuthentication: mode is UNSET, DISABLE, PERMISSIVE or STRICT',
    yaml: pa('  mtls:\n    mode: strict\n'),
    errors: [
      'mesh.yaml:8: PeerAuthentication shop/p: spec.mtls.mode: "strict" is not an mTLS mode (expected one of UNSET, DISABLE, PERMISSIVE, STRICT)',
    ],
  },
  {
    title: 'PeerAuthentication: portLevelMtls keys are ports and need a selector',
    yaml: pa('  portLevelMtls:\n    http: {mode: DISABLE}\n    "70000": {mode: OFF}\n'),
    errors: [
      'mesh.yaml:7: PeerAuthentication shop/p: spec.portLevelMtls: requires spec.selector.matchLabels (a mesh- or namespace-wide policy cannot set port modes)',
      'mesh.yaml:8: PeerAuthentication shop/p: spec.portLevelMtls.http: "http" is not a port number (expected 1-65535)',
      'mesh.yaml:9: PeerAuthentication shop/p: spec.portLevelMtls["70000"]: "70000" is not a port number (expected 1-65535)',
      'mesh.yaml:9: PeerAuthentication shop/p: spec.portLevelMtls["70000"].mode: "OFF" is not an mTLS mode (expected one of UNSET, DISABLE, PERMISSIVE, STRICT)',
    ],
  },
  // Namespace
  {
    title: 'Namespace: weft.io/outbound-policy must be registry-only',
    yaml: 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations:\n    weft.io/outbound-policy: allow-any\n',
    errors: [
      'mesh.yaml:6: Namespace shop: metadata.annotations["weft.io/outbound-policy"]: "allow-any" is not an outbound policy (expected registry-only, or no annotation)',
    ],
  },
];

for (const c of validationCases) {
  test(`validation: ${c.title}`, async (t) => {
    const { dir, errors, result } = await loadText(t, c.yaml);
    t.deepEqual(
      errors,
      c.errors.map((e) => `${dir}/${e}`),
    );
    t.deepEqual(result.objects, [], 'the invalid object is not loaded');
  });
}

// --- store indices ----------------------------------------------------------------------------

test('store: services by VIP and name, slices by service, policies by namespace', async (t) => {
  const { result, errors } = await loadText(
    t,
    `apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIPs: [10.96.0.10, 10.96.1.10]
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: other}
spec:
  clusterIP: 10.96.0.11
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: shop}
spec: {clusterIP: None}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.2]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x, namespace: other, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b, namespace: shop}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: a, namespace: shop}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh, namespace: istio-system}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
`,
  );
  t.deepEqual(errors, []);
  const store = new ConfigStore();
  const diffs: string[] = [];
  store.on('change', (_s, diff) =>
    diffs.push(...diff.AuthorizationPolicy.added.map((r) => `+${r.namespace}/${r.name}`)),
  );
  store.replaceFromSource('files', result.objects);

  t.is(store.serviceByVip('10.96.0.10')?.namespace, 'shop');
  t.is(store.serviceByVip('10.96.1.10')?.namespace, 'shop', 'every cluster IP is indexed');
  t.is(store.serviceByVip('10.96.0.11')?.namespace, 'other');
  t.is(store.serviceByVip('10.96.9.9'), undefined);
  t.deepEqual(store.service('shop', 'headless')?.clusterIPs, []);
  t.is(store.service('shop', 'nope'), undefined);
  t.deepEqual(
    store.endpointSlicesFor('shop', 'web').map((s) => s.name),
    ['web-a', 'web-b'],
  );
  t.deepEqual(
    store.endpointSlicesFor('other', 'web').map((s) => s.name),
    ['web-x'],
  );
  t.deepEqual(store.endpointSlicesFor('shop', 'headless'), []);
  t.deepEqual(
    store.authorizationPolicies('shop').map((p) => p.name),
    ['a', 'b'],
  );
  t.deepEqual(
    store.authorizationPolicies('istio-system').map((p) => p.name),
    ['mesh'],
  );
  t.deepEqual(store.authorizationPolicies('nowhere'), []);
  t.deepEqual(
    store.peerAuthentications('shop').map((p) => p.mode),
    ['STRICT'],
  );
  t.deepEqual(diffs, ['+istio-system/mesh', '+shop/a', '+shop/b']);
  t.is(store.state.services.size, 3);

  // Removing a service and a policy updates the indices.
  store.replaceFromSource(
    'files',
    result.objects.filter(
      (o) => !(o.ref.name === 'web' && o.ref.namespace === 'shop') && o.ref.name !== 'a',
    ),
  );
  t.is(store.serviceByVip('10.96.0.10'), undefined);
  t.is(store.service('shop', 'web'), undefined);
  t.deepEqual(
    store.authorizationPolicies('shop').map((p) => p.name),
    ['b'],
  );
  t.is(store.endpointSlicesFor('shop', 'web').length, 2, 'slices outlive their service');
});

// --- last good state -------------------------------------------------------------------------

test('hot reload: an invalid policy edit keeps the last good policy', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'policy.yaml');
  const policy = (principal: string) =>
    ap(`  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["${principal}"]
`);
  await writeFile(file, policy('cluster.local/ns/shop/sa/web'));
  const store = new ConfigStore();
  const source = new FileSource({
    path: dir,
    store,
    logger: silentLogger,
    debounceMs: 20,
    pollIntervalMs: 100,
  });
  const reported: string[][] = [];
  source.on('errors', (errs) => reported.push(texts(errs)));
  t.teardown(() => source.stop());
  const first = await source.start();
  t.deepEqual(texts(first.errors), []);
  const principals = () =>
    store.authorizationPolicies('shop')[0]?.rules[0]?.from?.[0]?.principals ?? [];
  t.deepEqual(principals(), ['cluster.local/ns/shop/sa/web']);

  await writeFile(file, policy('cluster.local/ns/shop/sa/*/x'));
  await waitFor('the error', () => reported.length > 0);
  t.deepEqual(reported, [
    [
      `${file}:11: AuthorizationPolicy shop/p: spec.rules[0].from[0].source.principals[0]: "cluster.local/ns/shop/sa/*/x" is not a principal ("*" is only allowed as the first or the last character)`,
    ],
  ]);
  t.deepEqual(principals(), ['cluster.local/ns/shop/sa/web'], 'the last good policy stays');
  t.deepEqual(source.lastReport?.kept, [
    { kind: 'AuthorizationPolicy', namespace: 'shop', name: 'p' },
  ]);

  await writeFile(file, policy('cluster.local/ns/shop/sa/api'));
  await waitFor('the fix', () => principals()[0] === 'cluster.local/ns/shop/sa/api');
  t.is(source.lastReport?.errors.length, 0);
});

test('Service: clusterIP must agree with clusterIPs[0]', async (t) => {
  const { dir, errors } = await loadText(
    t,
    svc('  clusterIP: 10.96.0.1\n  clusterIPs: [10.96.0.2]\n  ports: [{port: 80}]\n'),
  );
  t.deepEqual(errors, [
    `${dir}/mesh.yaml:6: Service default/web: spec.clusterIP: "10.96.0.1" must equal spec.clusterIPs[0] ("10.96.0.2")`,
  ]);
});
