// test/policy.test.ts: policy/: L4 AuthorizationPolicy and PeerAuthentication semantics at
// the node proxy, table-driven: each case is a policy set, one connection and the expected
// decision (allow, and the exact deciding policy). Pure: no sockets, no files.

import test from 'ava';
import type {
  AuthorizationPolicy,
  MtlsMode,
  PeerAuthentication,
  PolicyRule,
} from '../src/config/mesh-model.js';
import type { Workload } from '../src/config/model.js';
import {
  PolicyEngine,
  parseCidr,
  parseIp,
  cidrContains,
  type ConnectionFacts,
  type EffectiveMtlsMode,
  type PolicyOptions,
} from '../src/policy/index.js';

const ROOT = 'weft-system';
const CURL = 'spiffe://cluster.local/ns/client/sa/curl';
const OTHER = 'spiffe://cluster.local/ns/other/sa/bot';

function workload(
  name: string,
  namespace: string,
  labels: Record<string, string> = {},
  ip = '10.0.0.10',
): Workload {
  return {
    uid: `${namespace}/${name}`,
    name,
    namespace,
    nodeName: 'node-1',
    serviceAccount: 'default',
    ip,
    ips: [ip],
    labels,
    annotations: {},
    hostNetwork: false,
    phase: 'Running',
  };
}

const WEB = workload('web', 'app', { app: 'web', tier: 'front' });
const DB = workload('db', 'app', { app: 'db' });
const API = workload('api', 'shop', { app: 'web' });

type PolicyInit = Partial<AuthorizationPolicy> & { name: string };
function policy(p: PolicyInit): AuthorizationPolicy {
  return { namespace: 'app', targetRefs: [], action: 'ALLOW', rules: [], ...p };
}
function allow(name: string, rules: PolicyRule[], extra: Partial<AuthorizationPolicy> = {}) {
  return policy({ name, rules, action: 'ALLOW', ...extra });
}
function deny(name: string, rules: PolicyRule[], extra: Partial<AuthorizationPolicy> = {}) {
  return policy({ name, rules, action: 'DENY', ...extra });
}
function peerAuth(
  name: string,
  namespace: string,
  mode: MtlsMode,
  extra: { selector?: Record<string, string>; ports?: [number, MtlsMode][] } = {},
): PeerAuthentication {
  return {
    name,
    namespace,
    mode,
    ...(extra.selector ? { selector: extra.selector } : {}),
    portLevelModes: new Map(extra.ports ?? []),
  };
}

interface Conn {
  to?: Workload;
  port?: number;
  identity?: string | undefined;
  ip?: string;
  mtls?: boolean;
  destinationIp?: string;
}
function facts(c: Conn = {}): ConnectionFacts {
  const mtls = c.mtls ?? true;
  const identity = 'identity' in c ? c.identity : mtls ? CURL : undefined;
  return {
    destination: c.to ?? WEB,
    destinationPort: c.port ?? 8080,
    ...(c.destinationIp ? { destinationIp: c.destinationIp } : {}),
    source: { ...(identity !== undefined ? { identity } : {}), ip: c.ip ?? '10.1.2.3' },
    mtls,
  };
}
const PLAIN: Conn = { mtls: false, identity: undefined };

interface Case {
  title: string;
  policies?: AuthorizationPolicy[];
  peerAuths?: PeerAuthentication[];
  options?: PolicyOptions;
  conn?: Conn;
  allow: boolean;
  /** Exact deciding policy; undefined asserts there is none. */
  policy?: string;
  reason?: RegExp;
}

const src = (s: Record<string, string[]>): PolicyRule => ({ from: [s] });
const ports = (p: string[], not = false): PolicyRule => ({
  to: [not ? { notPorts: p } : { ports: p }],
});

const cases: Case[] = [
  // defaults
  { title: 'no policy: allow', allow: true, reason: /no ALLOW policy applies/ },
  {
    title: 'ALLOW present but not matching: default deny',
    policies: [allow('only-bot', [src({ principals: ['cluster.local/ns/other/sa/bot'] })])],
    allow: false,
    reason: /ALLOW policy app\/only-bot applies and does not match/,
  },
  {
    title: 'only a non-matching DENY: allow',
    policies: [deny('no-bot', [src({ principals: ['cluster.local/ns/other/sa/bot'] })])],
    allow: true,
    reason: /no ALLOW policy applies/,
  },

  // principals
  {
    title: 'principals exact: allow',
    policies: [allow('curl', [src({ principals: ['cluster.local/ns/client/sa/curl'] })])],
    allow: true,
    policy: 'app/curl',
    reason: /allowed by ALLOW policy app\/curl/,
  },
  {
    title: 'principals exact, other peer: deny',
    policies: [allow('curl', [src({ principals: ['cluster.local/ns/client/sa/curl'] })])],
    conn: { identity: OTHER },
    allow: false,
  },
  {
    title: 'principals "*" matches any mTLS peer',
    policies: [allow('any', [src({ principals: ['*'] })])],
    conn: { identity: OTHER },
    allow: true,
    policy: 'app/any',
  },
  {
    title: 'principals prefix wildcard',
    policies: [allow('ns-client', [src({ principals: ['cluster.local/ns/client/*'] })])],
    allow: true,
    policy: 'app/ns-client',
  },
  {
    title: 'principals prefix wildcard, other namespace: deny',
    policies: [allow('ns-client', [src({ principals: ['cluster.local/ns/client/*'] })])],
    conn: { identity: OTHER },
    allow: false,
  },
  {
    title: 'principals suffix wildcard',
    policies: [allow('sa-curl', [src({ principals: ['*/sa/curl'] })])],
    allow: true,
    policy: 'app/sa-curl',
  },
  {
    title: 'principals, spiffe:// is not part of the principal',
    policies: [allow('uri', [src({ principals: ['spiffe://cluster.local/ns/client/sa/curl'] })])],
    allow: false,
  },
  {
    title: 'notPrincipals excludes the peer: deny',
    policies: [allow('not-curl', [src({ notPrincipals: ['cluster.local/ns/client/sa/curl'] })])],
    allow: false,
  },
  {
    title: 'notPrincipals, other peer: allow',
    policies: [allow('not-curl', [src({ notPrincipals: ['cluster.local/ns/client/sa/curl'] })])],
    conn: { identity: OTHER },
    allow: true,
    policy: 'app/not-curl',
  },
  {
    title: 'principal "cluster.local/..." means the local trust domain',
    policies: [allow('curl', [src({ principals: ['cluster.local/ns/client/sa/curl'] })])],
    options: { trustDomain: 'example.org' },
    conn: { identity: 'spiffe://example.org/ns/client/sa/curl' },
    allow: true,
    policy: 'app/curl',
  },
  {
    title: 'principal of a foreign trust domain does not match cluster.local/...',
    policies: [allow('curl', [src({ principals: ['cluster.local/ns/client/sa/curl'] })])],
    options: { trustDomain: 'example.org' },
    conn: { identity: 'spiffe://cluster.local/ns/client/sa/curl' },
    allow: false,
  },

  // namespaces
  {
    title: 'namespaces match the principal namespace',
    policies: [allow('from-client', [src({ namespaces: ['client'] })])],
    allow: true,
    policy: 'app/from-client',
  },
  {
    title: 'namespaces, other namespace: deny',
    policies: [allow('from-client', [src({ namespaces: ['client'] })])],
    conn: { identity: OTHER },
    allow: false,
  },
  {
    title: 'notNamespaces excludes the peer namespace: deny',
    policies: [allow('not-client', [src({ notNamespaces: ['client'] })])],
    allow: false,
  },
  {
    title: 'notNamespaces, other namespace: allow',
    policies: [allow('not-client', [src({ notNamespaces: ['client'] })])],
    conn: { identity: OTHER },
    allow: true,
    policy: 'app/not-client',
  },
  {
    title: 'namespaces wildcard prefix',
    policies: [allow('cl', [src({ namespaces: ['cli*'] })])],
    allow: true,
    policy: 'app/cl',
  },

  // ipBlocks / remoteIpBlocks
  {
    title: 'ipBlocks CIDR contains the peer: allow',
    policies: [allow('lan', [src({ ipBlocks: ['10.1.0.0/16'] })])],
    allow: true,
    policy: 'app/lan',
  },
  {
    title: 'ipBlocks CIDR does not contain the peer: deny',
    policies: [allow('lan', [src({ ipBlocks: ['10.2.0.0/16'] })])],
    allow: false,
  },
  {
    title: 'ipBlocks bare address',
    policies: [allow('host', [src({ ipBlocks: ['10.1.2.3'] })])],
    allow: true,
    policy: 'app/host',
  },
  {
    title: 'ipBlocks with host bits set is masked (10.1.2.3/8)',
    policies: [allow('lan', [src({ ipBlocks: ['10.9.9.9/8'] })])],
    allow: true,
    policy: 'app/lan',
  },
  {
    title: 'ipBlocks matches an IPv4-mapped IPv6 peer',
    policies: [allow('lan', [src({ ipBlocks: ['10.1.0.0/16'] })])],
    conn: { ip: '::ffff:10.1.2.3' },
    allow: true,
    policy: 'app/lan',
  },
  {
    title: 'ipBlocks IPv6',
    policies: [allow('v6', [src({ ipBlocks: ['fd00:1::/64'] })])],
    conn: { ip: 'fd00:1::7' },
    allow: true,
    policy: 'app/v6',
  },
  {
    title: 'notIpBlocks contains the peer: deny',
    policies: [allow('not-lan', [src({ notIpBlocks: ['10.1.0.0/16'] })])],
    allow: false,
  },
  {
    title: 'notIpBlocks does not contain the peer: allow',
    policies: [allow('not-lan', [src({ notIpBlocks: ['10.2.0.0/16'] })])],
    allow: true,
    policy: 'app/not-lan',
  },
  {
    title: 'remoteIpBlocks is the peer IP at L4',
    policies: [allow('remote', [src({ remoteIpBlocks: ['10.1.2.0/24'] })])],
    allow: true,
    policy: 'app/remote',
  },
  {
    title: 'notRemoteIpBlocks contains the peer: deny',
    policies: [allow('not-remote', [src({ notRemoteIpBlocks: ['10.1.2.0/24'] })])],
    allow: false,
  },
  {
    title: 'ipBlocks work for plaintext too',
    policies: [allow('lan', [src({ ipBlocks: ['10.1.0.0/16'] })])],
    conn: PLAIN,
    allow: true,
    policy: 'app/lan',
  },

  // ports
  {
    title: 'ports matches the destination port',
    policies: [allow('http', [ports(['80', '8080'])])],
    allow: true,
    policy: 'app/http',
  },
  {
    title: 'ports, other port: deny',
    policies: [allow('http', [ports(['80', '8080'])])],
    conn: { port: 9090 },
    allow: false,
  },
  {
    title: 'notPorts excludes the port: deny',
    policies: [allow('not-admin', [ports(['8080'], true)])],
    allow: false,
  },
  {
    title: 'notPorts, other port: allow',
    policies: [allow('not-admin', [ports(['9090'], true)])],
    allow: true,
    policy: 'app/not-admin',
  },
  {
    title: 'from AND to both must match',
    policies: [
      allow('curl-admin', [
        { from: [{ principals: ['cluster.local/ns/client/sa/curl'] }], to: [{ ports: ['9090'] }] },
      ]),
    ],
    allow: false,
  },
  {
    title: 'any source of from matches',
    policies: [
      allow('two', [
        { from: [{ principals: ['cluster.local/ns/x/sa/y'] }, { ipBlocks: ['10.0.0.0/8'] }] },
      ]),
    ],
    allow: true,
    policy: 'app/two',
  },
  {
    title: 'fields within a source are ANDed',
    policies: [
      allow('both', [
        { from: [{ principals: ['cluster.local/ns/client/sa/curl'], ipBlocks: ['10.9.0.0/16'] }] },
      ]),
    ],
    allow: false,
  },
  {
    title: 'any rule matches: second rule',
    policies: [allow('rules', [ports(['1']), src({ namespaces: ['client'] })])],
    allow: true,
    policy: 'app/rules',
  },

  // when
  {
    title: 'when source.ip',
    policies: [allow('w', [{ when: [{ key: 'source.ip', values: ['10.1.0.0/16'] }] }])],
    allow: true,
    policy: 'app/w',
  },
  {
    title: 'when source.ip notValues',
    policies: [allow('w', [{ when: [{ key: 'source.ip', notValues: ['10.1.0.0/16'] }] }])],
    allow: false,
  },
  {
    title: 'when source.namespace',
    policies: [allow('w', [{ when: [{ key: 'source.namespace', values: ['client'] }] }])],
    allow: true,
    policy: 'app/w',
  },
  {
    title: 'when source.principal',
    policies: [
      allow('w', [{ when: [{ key: 'source.principal', values: ['cluster.local/ns/other/*'] }] }]),
    ],
    allow: false,
  },
  {
    title: 'when destination.port',
    policies: [allow('w', [{ when: [{ key: 'destination.port', values: ['8080'] }] }])],
    allow: true,
    policy: 'app/w',
  },
  {
    title: 'when destination.ip uses the workload IP',
    policies: [allow('w', [{ when: [{ key: 'destination.ip', values: ['10.0.0.0/24'] }] }])],
    allow: true,
    policy: 'app/w',
  },
  {
    title: 'when destination.ip uses the dialled IP when given',
    policies: [allow('w', [{ when: [{ key: 'destination.ip', values: ['10.0.0.0/24'] }] }])],
    conn: { destinationIp: '192.168.1.1' },
    allow: false,
  },
  {
    title: 'when conditions are ANDed',
    policies: [
      allow('w', [
        {
          when: [
            { key: 'source.namespace', values: ['client'] },
            { key: 'destination.port', notValues: ['8080'] },
          ],
        },
      ]),
    ],
    allow: false,
  },

  // DENY precedence
  {
    title: 'DENY match wins over a matching ALLOW',
    policies: [
      allow('all', [{}]),
      deny('no-curl', [src({ principals: ['cluster.local/ns/client/sa/curl'] })]),
    ],
    allow: false,
    policy: 'app/no-curl',
    reason: /denied by DENY policy app\/no-curl/,
  },
  {
    title: 'non-matching DENY, matching ALLOW: allow',
    policies: [allow('all', [{}]), deny('no-bot', [src({ namespaces: ['other'] })])],
    allow: true,
    policy: 'app/all',
  },

  // scope
  {
    title: 'root-namespace policy without selector applies mesh-wide',
    policies: [deny('deny-9090', [ports(['8080'])], { namespace: ROOT })],
    allow: false,
    policy: 'weft-system/deny-9090',
  },
  {
    title: 'root namespace is an option (istio-system)',
    policies: [deny('d', [{}], { namespace: 'istio-system' })],
    options: { rootNamespace: 'istio-system' },
    allow: false,
    policy: 'istio-system/d',
  },
  {
    title: 'istio-system is only a namespace when the root is weft-system',
    policies: [deny('d', [{}], { namespace: 'istio-system' })],
    allow: true,
  },
  {
    title: 'root-namespace policy with selector applies in every namespace (shop/api app=web)',
    policies: [deny('web', [{}], { namespace: ROOT, selector: { app: 'web' } })],
    conn: { to: API },
    allow: false,
    policy: 'weft-system/web',
  },
  {
    title: 'root-namespace policy with selector skips non-matching workloads',
    policies: [deny('web', [{}], { namespace: ROOT, selector: { app: 'web' } })],
    conn: { to: DB },
    allow: true,
  },
  {
    title: 'a namespace policy does not apply to another namespace',
    policies: [deny('all', [{}], { namespace: 'shop' })],
    allow: true,
  },
  {
    title: 'namespace policy without selector applies to all its workloads',
    policies: [deny('all', [{}])],
    conn: { to: DB },
    allow: false,
    policy: 'app/all',
  },
  {
    title: 'selector subset of labels: applies',
    policies: [deny('web', [{}], { selector: { app: 'web', tier: 'front' } })],
    allow: false,
    policy: 'app/web',
  },
  {
    title: 'selector with a label the pod lacks: does not apply',
    policies: [deny('web', [{}], { selector: { app: 'web', tier: 'back' } })],
    allow: true,
  },
  {
    title: 'ALLOW policy for another workload does not make this one default-deny',
    policies: [allow('db-only', [src({ namespaces: ['nobody'] })], { selector: { app: 'db' } })],
    allow: true,
    reason: /no ALLOW policy applies/,
  },
  {
    title: 'empty selector selects all',
    policies: [deny('all', [{}], { selector: {} })],
    conn: { to: DB },
    allow: false,
    policy: 'app/all',
  },
  {
    title: 'deciding policy is the first by name among matching DENY policies',
    policies: [deny('zz', [{}]), deny('aa', [{}], { namespace: ROOT }), deny('mm', [{}])],
    allow: false,
    policy: 'app/mm',
  },

  // empty rules
  {
    title: 'ALLOW with no rules denies all',
    policies: [allow('nothing', [])],
    allow: false,
    reason: /ALLOW policy app\/nothing applies and does not match/,
  },
  {
    title: 'ALLOW rules [{}] allows all',
    policies: [allow('all', [{}])],
    allow: true,
    policy: 'app/all',
  },
  { title: 'DENY with no rules matches nothing', policies: [deny('nothing', [])], allow: true },
  {
    title: 'DENY rules [{}] denies all',
    policies: [deny('all', [{}])],
    allow: false,
    policy: 'app/all',
  },

  // L7
  {
    title: 'ALLOW rule with an L7 field never matches',
    policies: [allow('get', [{ to: [{ methods: ['GET'] }] }])],
    allow: false,
  },
  {
    title: 'ALLOW rule with L7 and matching L4 still never matches',
    policies: [
      allow('curl-get', [
        { from: [{ principals: ['cluster.local/ns/client/sa/curl'] }], to: [{ methods: ['GET'] }] },
      ]),
    ],
    allow: false,
  },
  {
    title: 'ALLOW: an L4 rule next to an L7 rule still matches',
    policies: [allow('mixed', [{ to: [{ paths: ['/x'] }] }, src({ namespaces: ['client'] })])],
    allow: true,
    policy: 'app/mixed',
  },
  {
    title: 'ALLOW rule with requestPrincipals never matches',
    policies: [allow('jwt', [src({ requestPrincipals: ['*'] })])],
    allow: false,
  },
  {
    title: 'ALLOW rule with an L7 when key never matches',
    policies: [allow('hdr', [{ when: [{ key: 'request.headers[x-user]', values: ['a'] }] }])],
    allow: false,
  },
  {
    title: 'DENY with L7 and an L4 remainder: enforced on the remainder (curl denied)',
    policies: [
      deny('curl-post', [
        {
          from: [{ principals: ['cluster.local/ns/client/sa/curl'] }],
          to: [{ methods: ['POST'] }],
        },
      ]),
    ],
    allow: false,
    policy: 'app/curl-post',
  },
  {
    title: 'DENY with L7 and an L4 remainder: others not denied',
    policies: [
      deny('curl-post', [
        {
          from: [{ principals: ['cluster.local/ns/client/sa/curl'] }],
          to: [{ methods: ['POST'] }],
        },
      ]),
    ],
    conn: { identity: OTHER },
    allow: true,
  },
  {
    title: 'DENY with L7 port remainder: other port not denied',
    policies: [deny('admin', [{ to: [{ ports: ['9090'], paths: ['/admin'] }] }])],
    allow: true,
  },
  {
    title: 'DENY with only L7 fields denies all (fail closed)',
    policies: [deny('admin-path', [{ to: [{ paths: ['/admin'] }] }])],
    allow: false,
    policy: 'app/admin-path',
  },
  {
    title: 'DENY with only an L7 when condition denies all (fail closed)',
    policies: [deny('hdr', [{ when: [{ key: 'request.auth.claims[iss]', values: ['x'] }] }])],
    conn: PLAIN,
    allow: false,
    policy: 'app/hdr',
  },
  {
    title: 'DENY: one L7-only source among several widens from to everything',
    policies: [
      deny('jwt-or-bot', [
        {
          from: [{ namespaces: ['other'] }, { requestPrincipals: ['*'] }],
          to: [{ ports: ['8080'] }],
        },
      ]),
    ],
    allow: false,
    policy: 'app/jwt-or-bot',
  },

  // plaintext and mTLS-only fields
  {
    title: 'plaintext never matches principals (ALLOW): deny',
    policies: [allow('any-id', [src({ principals: ['*'] })])],
    conn: PLAIN,
    allow: false,
  },
  {
    title: 'plaintext never matches principals (DENY): not denied',
    policies: [deny('no-curl', [src({ principals: ['*'] })])],
    conn: PLAIN,
    allow: true,
  },
  {
    title: 'plaintext never matches namespaces',
    policies: [allow('client', [src({ namespaces: ['client'] })])],
    conn: PLAIN,
    allow: false,
  },
  {
    title: 'plaintext does not match ALLOW notNamespaces (no ISTIO-SECURITY-2021-004 bypass)',
    policies: [allow('not-foo', [src({ notNamespaces: ['foo'] })])],
    conn: PLAIN,
    allow: false,
  },
  {
    title: 'plaintext does not match ALLOW notPrincipals',
    policies: [allow('not-foo', [src({ notPrincipals: ['cluster.local/ns/foo/sa/x'] })])],
    conn: PLAIN,
    allow: false,
  },
  {
    title: 'plaintext matches DENY notPrincipals (as Envoy/ztunnel: denied)',
    policies: [deny('only-curl', [src({ notPrincipals: ['cluster.local/ns/client/sa/curl'] })])],
    conn: PLAIN,
    allow: false,
    policy: 'app/only-curl',
  },
  {
    title: 'plaintext matches DENY when source.namespace notValues',
    policies: [deny('ns', [{ when: [{ key: 'source.namespace', notValues: ['client'] }] }])],
    conn: PLAIN,
    allow: false,
    policy: 'app/ns',
  },
  {
    title: 'identity is ignored when the connection is not mTLS',
    policies: [allow('curl', [src({ principals: ['cluster.local/ns/client/sa/curl'] })])],
    conn: { mtls: false, identity: CURL },
    allow: false,
  },

  // PeerAuthentication
  {
    title: 'mesh-wide STRICT rejects plaintext',
    peerAuths: [peerAuth('default', ROOT, 'STRICT')],
    conn: PLAIN,
    allow: false,
    policy: 'weft-system/default',
    reason: /plaintext rejected.*STRICT/,
  },
  {
    title: 'mesh-wide STRICT accepts mTLS',
    peerAuths: [peerAuth('default', ROOT, 'STRICT')],
    allow: true,
  },
  {
    title: 'STRICT is checked before ALLOW policies',
    policies: [allow('all', [{}])],
    peerAuths: [peerAuth('default', ROOT, 'STRICT')],
    conn: PLAIN,
    allow: false,
    policy: 'weft-system/default',
  },
  { title: 'no PeerAuthentication: PERMISSIVE', conn: PLAIN, allow: true },
  {
    title: 'namespace PERMISSIVE overrides mesh STRICT',
    peerAuths: [peerAuth('default', ROOT, 'STRICT'), peerAuth('ns', 'app', 'PERMISSIVE')],
    conn: PLAIN,
    allow: true,
  },
  {
    title: 'workload selector STRICT overrides namespace PERMISSIVE',
    peerAuths: [
      peerAuth('ns', 'app', 'PERMISSIVE'),
      peerAuth('web', 'app', 'STRICT', { selector: { app: 'web' } }),
    ],
    conn: PLAIN,
    allow: false,
    policy: 'app/web',
  },
  {
    title: 'workload selector UNSET inherits namespace STRICT',
    peerAuths: [
      peerAuth('ns', 'app', 'STRICT'),
      peerAuth('web', 'app', 'UNSET', { selector: { app: 'web' } }),
    ],
    conn: PLAIN,
    allow: false,
    policy: 'app/ns',
  },
  {
    title: 'port-level PERMISSIVE opens one port of a STRICT workload',
    peerAuths: [
      peerAuth('web', 'app', 'STRICT', { selector: { app: 'web' }, ports: [[8080, 'PERMISSIVE']] }),
    ],
    conn: PLAIN,
    allow: true,
  },
  {
    title: 'port-level PERMISSIVE leaves other ports STRICT',
    peerAuths: [
      peerAuth('web', 'app', 'STRICT', { selector: { app: 'web' }, ports: [[8080, 'PERMISSIVE']] }),
    ],
    conn: { ...PLAIN, port: 9090 },
    allow: false,
    policy: 'app/web',
  },
  {
    title: 'port-level STRICT under a PERMISSIVE namespace',
    peerAuths: [
      peerAuth('ns', 'app', 'PERMISSIVE'),
      peerAuth('web', 'app', 'UNSET', { selector: { app: 'web' }, ports: [[8080, 'STRICT']] }),
    ],
    conn: PLAIN,
    allow: false,
    policy: 'app/web',
  },
  {
    title: 'a selector PeerAuthentication in another namespace does not apply',
    peerAuths: [peerAuth('web', 'shop', 'STRICT', { selector: { app: 'web' } })],
    conn: PLAIN,
    allow: true,
  },

  // ignored kinds
  {
    title: 'AUDIT is not enforced',
    policies: [policy({ name: 'audit', action: 'AUDIT', rules: [{}] })],
    allow: true,
    reason: /no ALLOW policy applies/,
  },
  {
    title: 'CUSTOM is not enforced',
    policies: [policy({ name: 'ext', action: 'CUSTOM', rules: [{}] })],
    allow: true,
  },
  {
    title: 'targetRefs (waypoint) policies are not the node proxy’s',
    policies: [allow('wp', [src({ namespaces: ['nobody'] })], { targetRefs: ['Service/web'] })],
    allow: true,
  },

  // invalid values: treated like L7 (fail closed)
  {
    title: 'ALLOW rule with an invalid CIDR never matches',
    policies: [allow('bad', [src({ ipBlocks: ['10.1.0.0/16', '10.1.0.0/40'] })])],
    allow: false,
  },
  {
    title: 'DENY rule with an invalid CIDR drops the field (denies all)',
    policies: [deny('bad', [src({ notIpBlocks: ['nope'] })])],
    allow: false,
    policy: 'app/bad',
  },
];

for (const c of cases) {
  test(`evaluate: ${c.title}`, (t) => {
    const engine = new PolicyEngine();
    engine.rebuild(c.policies ?? [], c.peerAuths ?? [], c.options ?? {});
    const d = engine.evaluate(facts(c.conn));
    t.is(d.allow, c.allow, d.reason);
    t.is(d.policy, c.policy, d.reason);
    if (c.reason) t.regex(d.reason, c.reason);
  });
}

test('mtlsMode: precedence, inheritance and port levels', (t) => {
  const engine = new PolicyEngine(
    [],
    [
      peerAuth('mesh', ROOT, 'STRICT'),
      peerAuth('ns', 'shop', 'DISABLE'),
      peerAuth('web', 'app', 'UNSET', {
        selector: { app: 'web' },
        ports: [
          [8080, 'PERMISSIVE'],
          [9090, 'UNSET'],
        ],
      }),
    ],
  );
  const table: [Workload, number, EffectiveMtlsMode][] = [
    [WEB, 8080, 'PERMISSIVE'],
    [WEB, 9090, 'STRICT'],
    [WEB, 80, 'STRICT'],
    [DB, 8080, 'STRICT'],
    [API, 8080, 'DISABLE'],
    [workload('x', 'elsewhere'), 1, 'STRICT'],
  ];
  for (const [w, port, mode] of table) t.is(engine.mtlsMode(w, port), mode, `${w.uid}:${port}`);
  engine.rebuild([], []);
  t.is(engine.mtlsMode(WEB, 8080), 'PERMISSIVE');
  t.is(engine.mtlsMode(WEB, 9090), 'PERMISSIVE');
});

test('DISABLE accepts plaintext', (t) => {
  const engine = new PolicyEngine([], [peerAuth('default', ROOT, 'DISABLE')]);
  t.true(engine.evaluate(facts(PLAIN)).allow);
});

test('rebuild reports partially enforced, ignored and invalid policies', (t) => {
  const engine = new PolicyEngine();
  const report = engine.rebuild(
    [
      deny('l7-deny', [{ to: [{ methods: ['POST'] }] }]),
      deny('l7-remainder', [{ from: [{ namespaces: ['x'] }], to: [{ paths: ['/a'] }] }]),
      allow('l7-allow', [{ from: [{ requestPrincipals: ['*'] }] }]),
      allow('fine', [src({ namespaces: ['client'] })]),
      policy({ name: 'audit', action: 'AUDIT', rules: [{}] }),
      policy({ name: 'custom', action: 'CUSTOM', rules: [{}] }),
      allow('wp', [{}], { targetRefs: ['Gateway/waypoint'] }),
      allow('bad-port', [ports(['http'])]),
    ],
    [
      peerAuth('a', 'app', 'STRICT'),
      peerAuth('b', 'app', 'PERMISSIVE'),
      peerAuth('ns-ports', 'shop', 'STRICT', { ports: [[80, 'DISABLE']] }),
    ],
  );
  t.deepEqual(
    report.partiallyEnforced.map((n) => n.policy),
    ['app/l7-deny', 'app/l7-remainder', 'app/l7-allow'],
  );
  t.regex(report.partiallyEnforced[0]!.message, /methods.*denies all traffic.*fail closed/);
  t.regex(report.partiallyEnforced[1]!.message, /paths.*L4 remainder/);
  t.regex(report.partiallyEnforced[2]!.message, /never matches.*requestPrincipals/);
  t.deepEqual(
    report.ignored.map((n) => `${n.kind} ${n.policy}`),
    [
      'AuthorizationPolicy app/audit',
      'AuthorizationPolicy app/custom',
      'AuthorizationPolicy app/wp',
      'PeerAuthentication app/b',
      'PeerAuthentication shop/ns-ports',
    ],
  );
  t.deepEqual(
    report.invalid.map((n) => n.policy),
    ['app/bad-port'],
  );
  t.regex(report.invalid[0]!.message, /"http"/);
  t.is(report.enforced, 5);
  // The first by name wins among namespace-wide PeerAuthentications.
  t.is(engine.mtlsMode(WEB, 80), 'STRICT');
});

test('only the policies of a workload are considered (scope index)', (t) => {
  const policies: AuthorizationPolicy[] = [
    deny('mesh', [ports(['1'])], { namespace: ROOT }),
    deny('mesh-web', [ports(['2'])], { namespace: ROOT, selector: { app: 'web' } }),
    deny('mesh-db', [ports(['3'])], { namespace: ROOT, selector: { app: 'db' } }),
    allow('ns', [{}]),
    allow('web', [{}], { selector: { app: 'web' } }),
    allow('web-back', [{}], { selector: { app: 'web', tier: 'back' } }),
    allow('db', [{}], { selector: { app: 'db' } }),
    allow('shop', [{}], { namespace: 'shop' }),
  ];
  const engine = new PolicyEngine(policies);
  t.deepEqual(engine.policiesFor(WEB), {
    deny: ['weft-system/mesh', 'weft-system/mesh-web'],
    allow: ['app/ns', 'app/web'],
  });
  t.deepEqual(engine.policiesFor(DB), {
    deny: ['weft-system/mesh', 'weft-system/mesh-db'],
    allow: ['app/db', 'app/ns'],
  });
  t.deepEqual(engine.policiesFor(API), {
    deny: ['weft-system/mesh', 'weft-system/mesh-web'],
    allow: ['shop/shop'],
  });
});

test('a workload whose labels change is re-scoped; rebuild replaces the set', (t) => {
  const engine = new PolicyEngine([deny('web', [{}], { selector: { app: 'web' } })]);
  t.false(engine.evaluate(facts()).allow);
  const relabelled: Workload = { ...WEB, labels: { app: 'web2' } };
  t.true(engine.evaluate(facts({ to: relabelled })).allow);
  const g = engine.generation;
  engine.rebuild([deny('web2', [{}], { selector: { app: 'web2' } })], []);
  t.is(engine.generation, g + 1);
  t.true(engine.evaluate(facts()).allow);
  const d = engine.evaluate(facts({ to: relabelled }));
  t.false(d.allow);
  t.is(d.policy, 'app/web2');
});

test('rebuild keeps options that are left out', (t) => {
  const engine = new PolicyEngine([], [], { rootNamespace: 'istio-system' });
  engine.rebuild([deny('d', [{}], { namespace: 'istio-system' })], []);
  t.is(engine.rootNamespace, 'istio-system');
  t.false(engine.evaluate(facts()).allow);
});

test('the matching rule index is reported', (t) => {
  const engine = new PolicyEngine([
    allow('r', [ports(['1']), { to: [{ paths: ['/'] }] }, ports(['8080'])]),
  ]);
  const d = engine.evaluate(facts());
  t.true(d.allow);
  t.is(d.rule, 2);
});

test('an unparseable source IP is denied when a policy applies', (t) => {
  const engine = new PolicyEngine([allow('all', [{}])]);
  const d = engine.evaluate(facts({ ip: 'not-an-ip' }));
  t.false(d.allow);
  t.regex(d.reason, /not an IP address/);
});

test('ip: parsing and CIDR containment', (t) => {
  const yes: [string, string][] = [
    ['0.0.0.0/0', '203.0.113.9'],
    ['10.0.0.0/8', '10.255.255.255'],
    ['198.18.0.0/15', '198.19.1.1'],
    ['::/0', '2001:db8::1'],
    ['2001:db8::/32', '2001:db8:ffff::1'],
    ['::ffff:10.0.0.0/104', '10.1.1.1'],
    ['fe80::1', 'fe80::1%eth0'],
    ['1:2:3:4:5:6:7:8/128', '1:2:3:4:5:6:7:8'],
  ];
  for (const [cidr, ip] of yes)
    t.true(cidrContains(parseCidr(cidr)!, parseIp(ip)!), `${cidr} ∋ ${ip}`);
  const no: [string, string][] = [
    ['10.0.0.0/8', '11.0.0.0'],
    ['198.18.0.0/15', '198.20.0.1'],
    ['10.0.0.0/8', '::a00:1'],
    ['2001:db8::/32', '2001:db9::1'],
  ];
  for (const [cidr, ip] of no)
    t.false(cidrContains(parseCidr(cidr)!, parseIp(ip)!), `${cidr} ∌ ${ip}`);
  for (const bad of [
    '10.0.0.0/33',
    '10.0.0/8',
    '010.0.0.1',
    '1.2.3.4/',
    'x',
    '1::2::3',
    '::/129',
    '10.0.0.0/08',
  ])
    t.is(parseCidr(bad), undefined, bad);
});

test('one note per policy, however many of its rules are partial', (t) => {
  const report = new PolicyEngine().rebuild(
    [deny('two', [{ to: [{ methods: ['POST'] }] }, { to: [{ ports: ['1'], hosts: ['a'] }] }])],
    [],
  );
  t.is(report.partiallyEnforced.length, 1);
  t.regex(report.partiallyEnforced[0]!.message, /rules\[0\].*; DENY rules\[1\]: to\[0\]\.hosts/);
});

test('rebuild recompiles changed policy objects and a changed trust domain', (t) => {
  const same = allow('curl', [src({ principals: ['cluster.local/ns/client/sa/curl'] })]);
  const engine = new PolicyEngine([same]);
  t.true(engine.evaluate(facts()).allow);
  engine.rebuild([{ ...same, rules: [src({ principals: ['cluster.local/ns/x/sa/y'] })] }], []);
  t.false(engine.evaluate(facts()).allow);
  engine.rebuild([same], [], { trustDomain: 'example.org' });
  t.false(engine.evaluate(facts()).allow);
  t.true(engine.evaluate(facts({ identity: 'spiffe://example.org/ns/client/sa/curl' })).allow);
});

test('a rebuild after some policies change decides as a fresh engine does', (t) => {
  // Rebuilds reuse the index of namespaces whose policies did not change: hold them to an
  // engine built from scratch over random edits (seeded, so a failure replays).
  let seed = 7;
  const random = () => {
    seed = (seed + 0x6d2b79f5) >>> 0;
    let x = seed;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
  const namespaces = [ROOT, 'app', 'shop', 'other'];
  const make = (name: string): AuthorizationPolicy => {
    const rule = pick<PolicyRule>([
      {},
      { to: [{ ports: [pick(['8080', '9090'])] }] },
      { from: [{ principals: [pick(['cluster.local/ns/client/sa/curl', '*/sa/bot'])] }] },
      { from: [{ namespaces: [pick(['client', 'other'])] }] },
      { from: [{ ipBlocks: [pick(['10.0.0.0/8', '192.0.2.0/24'])] }] },
      { to: [{ methods: ['GET'] }] },
    ]);
    const selector = pick<Record<string, string> | undefined>([
      undefined,
      { app: 'web' },
      { app: 'db' },
      { app: 'web', tier: 'front' },
    ]);
    return {
      name,
      namespace: pick(namespaces),
      targetRefs: random() < 0.05 ? ['Gateway/waypoint'] : [],
      action: pick(['ALLOW', 'ALLOW', 'DENY', 'AUDIT'] as const),
      rules: [rule],
      ...(selector !== undefined && { selector }),
    };
  };
  const paFor = () =>
    pick([
      [],
      [peerAuth('mesh', ROOT, 'STRICT')],
      [
        peerAuth('mesh', ROOT, 'STRICT'),
        peerAuth('web', 'app', 'PERMISSIVE', { selector: { app: 'web' } }),
      ],
    ]);
  const workloads = [
    WEB,
    DB,
    API,
    workload('x', 'other', { app: 'db' }),
    workload('y', 'shop', { app: 'web', tier: 'front' }),
  ];
  const connections: Conn[] = [
    {},
    { port: 9090 },
    { identity: OTHER },
    { ip: '192.0.2.7' },
    PLAIN,
    { identity: 'spiffe://cluster.local/ns/other/sa/x' },
  ];
  let policies = Array.from({ length: 30 }, (_, i) => make(`p${i}`));
  let peerAuths = paFor();
  const engine = new PolicyEngine(policies, peerAuths, { rootNamespace: ROOT });
  for (let step = 0; step < 150; step++) {
    const r = random();
    if (r < 0.5) {
      const i = Math.floor(random() * policies.length);
      policies = policies.map((p, j) => (j === i ? make(p.name) : p));
    } else if (r < 0.65) {
      policies = [...policies, make(`p${policies.length + step * 100}`)];
    } else if (r < 0.8 && policies.length > 1) {
      policies = policies.filter((_, j) => j !== Math.floor(random() * policies.length));
    } else if (r < 0.9) {
      peerAuths = paFor();
    } // else: the very same inputs again
    const report = engine.rebuild(policies, peerAuths);
    const fresh = new PolicyEngine();
    const want = fresh.rebuild(policies, peerAuths, { rootNamespace: ROOT });
    t.deepEqual(report, want, `step ${step}: report`);
    for (const w of workloads) {
      t.deepEqual(engine.policiesFor(w), fresh.policiesFor(w), `step ${step}: ${w.uid}`);
      t.is(engine.mtlsMode(w, 8080), fresh.mtlsMode(w, 8080));
      for (const c of connections) {
        const input = facts({ ...c, to: w });
        t.deepEqual(engine.evaluate(input), fresh.evaluate(input), `step ${step}: ${w.uid}`);
      }
    }
  }
});
