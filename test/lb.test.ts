// test/lb.test.ts: lb/: candidate endpoints of a VIP:port (readiness and the terminating
// fallback, targetPort resolution per slice, IPv4 only, locality tiers with failover,
// internalTrafficPolicy Local) and the Balancer (p2c, weighted random, smooth weighted
// round-robin, exclusion for retries, connectWithRetry, bounded state). Pure and in-memory;
// randomness comes from a seeded PRNG and every loop is bounded.

import test from 'ava';
import type { Node } from '../src/config/model.js';
import type {
  Endpoint,
  EndpointSlice,
  LoadBalancing,
  Service,
  ServicePort,
} from '../src/config/mesh-model.js';
import {
  Balancer,
  NoEndpointError,
  REGION_LABEL,
  ZONE_LABEL,
  clientLocality,
  connectWithRetry,
  resolveServiceTarget,
  seededRandom,
  serviceTargetKey,
  serviceTargetKeys,
  type ClientLocality,
  type ResolveOptions,
  type ServiceTarget,
  type TargetEndpoint,
} from '../src/lb/index.js';

const HTTP: ServicePort = { name: 'http', port: 80, targetPort: 8080, protocol: 'TCP' };

function service(over: Partial<Service> = {}): Service {
  return {
    name: 'web',
    namespace: 'default',
    labels: {},
    annotations: {},
    clusterIPs: ['10.96.0.10'],
    ports: [HTTP],
    selector: { app: 'web' },
    internalTrafficPolicy: 'Cluster',
    loadBalancing: 'p2c',
    ...over,
  };
}

function ep(address: string, over: Partial<Endpoint> = {}): Endpoint {
  return { addresses: [address], ready: true, serving: true, terminating: false, ...over };
}

function slice(
  name: string,
  endpoints: Endpoint[],
  over: Partial<EndpointSlice> = {},
): EndpointSlice {
  return {
    name,
    namespace: 'default',
    serviceName: 'web',
    addressType: 'IPv4',
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    endpoints,
    ...over,
  };
}

function node(name: string, zone?: string, region?: string): Node {
  const labels: Record<string, string> = {};
  if (zone !== undefined) labels[ZONE_LABEL] = zone;
  if (region !== undefined) labels[REGION_LABEL] = region;
  return { name, addresses: [], labels };
}

const NODES = new Map<string, Node>(
  [
    node('n1', 'z1', 'r1'),
    node('n2', 'z1', 'r1'),
    node('n3', 'z2', 'r1'),
    node('n4', 'z3', 'r2'),
  ].map((n) => [n.name, n]),
);
const ON_N1: ClientLocality = clientLocality('n1', NODES);
const OPTS: ResolveOptions = { locality: ON_N1, nodes: NODES };

function keys(eps: readonly TargetEndpoint[]): string[] {
  return eps.map((e) => e.key);
}

function target(endpoints: TargetEndpoint[], loadBalancing: LoadBalancing = 'p2c'): ServiceTarget {
  const svc = service({ loadBalancing });
  return {
    key: serviceTargetKey(svc, HTTP),
    service: svc,
    port: HTTP,
    tiers: endpoints.length === 0 ? [] : [{ tier: 'any', endpoints }],
    candidates: endpoints,
    terminatingFallback: false,
  };
}

function te(address: string, weight = 1): TargetEndpoint {
  return { key: `${address}:8080`, address, port: 8080, weight, ready: true, slice: 'default/s' };
}

function tally(picks: Iterable<TargetEndpoint | undefined>): Map<string, number> {
  const counts = new Map<string, number>();
  for (const p of picks) {
    const k = p?.address ?? 'none';
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  return counts;
}

// --- candidates ---------------------------------------------------------------------------

test('clientLocality reads the node topology labels', (t) => {
  t.deepEqual(ON_N1, { nodeName: 'n1', zone: 'z1', region: 'r1' });
  t.deepEqual(clientLocality('unknown', NODES), {
    nodeName: 'unknown',
    zone: undefined,
    region: undefined,
  });
});

test('only ready endpoints are candidates', (t) => {
  const target = resolveServiceTarget(
    service(),
    HTTP,
    [
      slice('s1', [
        ep('10.0.0.1'),
        ep('10.0.0.2', { ready: false, serving: false }),
        ep('10.0.0.3', { ready: false, serving: true, terminating: true }),
        ep('10.0.0.4', { ready: false, serving: true, terminating: false }),
      ]),
    ],
    OPTS,
  );
  t.deepEqual(keys(target.candidates), ['10.0.0.1:8080']);
  t.false(target.terminatingFallback);
});

test('with no ready endpoint, serving terminating ones are used (kube-proxy fallback)', (t) => {
  const target = resolveServiceTarget(
    service(),
    HTTP,
    [
      slice('s1', [
        ep('10.0.0.2', { ready: false, serving: false, terminating: true }),
        ep('10.0.0.3', { ready: false, serving: true, terminating: true }),
      ]),
    ],
    OPTS,
  );
  t.deepEqual(keys(target.candidates), ['10.0.0.3:8080']);
  t.true(target.terminatingFallback);
  t.false(target.candidates[0]!.ready);
});

test('a ready endpoint anywhere beats a terminating one on this node', (t) => {
  const target = resolveServiceTarget(
    service(),
    HTTP,
    [
      slice('s1', [
        ep('10.0.0.1', { nodeName: 'n1', ready: false, serving: true, terminating: true }),
        ep('10.0.0.4', { nodeName: 'n4' }),
      ]),
    ],
    OPTS,
  );
  t.deepEqual(keys(target.candidates), ['10.0.0.4:8080']);
  t.is(target.tiers[0]!.tier, 'any');
});

test('no slices or no usable endpoints: no candidates', (t) => {
  for (const slices of [[], [slice('s1', [ep('10.0.0.1', { ready: false, serving: false })])]]) {
    const target = resolveServiceTarget(service(), HTTP, slices, OPTS);
    t.deepEqual(target.candidates, []);
    t.deepEqual(target.tiers, []);
  }
});

test('other services, other namespaces and non-IPv4 slices are skipped', (t) => {
  const target = resolveServiceTarget(
    service(),
    HTTP,
    [
      slice('mine', [ep('10.0.0.1')]),
      slice('other', [ep('10.0.0.2')], { serviceName: 'api' }),
      slice('elsewhere', [ep('10.0.0.3')], { namespace: 'prod' }),
      slice('v6', [ep('fd00::1')], { addressType: 'IPv6' }),
      slice('fqdn', [ep('example.com')], { addressType: 'FQDN' }),
    ],
    OPTS,
  );
  t.deepEqual(keys(target.candidates), ['10.0.0.1:8080']);
  t.is(target.candidates[0]!.slice, 'default/mine');
});

test('an endpoint uses its first address; the same ip:port in two slices counts once', (t) => {
  const target = resolveServiceTarget(
    service(),
    HTTP,
    [
      slice('old', [ep('10.0.0.1', { ready: false, serving: true, terminating: true })]),
      slice('new', [{ ...ep('10.0.0.1'), addresses: ['10.0.0.1', '10.0.0.9'] }]),
      slice('dup', [ep('10.0.0.1')]),
    ],
    OPTS,
  );
  t.deepEqual(keys(target.candidates), ['10.0.0.1:8080']);
  t.true(target.candidates[0]!.ready);
  t.is(target.candidates[0]!.slice, 'default/new');
});

test('named targetPort resolves per slice through the slice port named like the service port', (t) => {
  const port: ServicePort = { name: 'http', port: 80, targetPort: 'web', protocol: 'TCP' };
  const target = resolveServiceTarget(
    service({ ports: [port] }),
    port,
    [
      // Controller-written slices: pods of different versions expose `web` on different ports.
      slice('v1', [ep('10.0.0.1')], { ports: [{ name: 'http', port: 8080, protocol: 'TCP' }] }),
      slice('v2', [ep('10.0.0.2')], { ports: [{ name: 'http', port: 9090, protocol: 'TCP' }] }),
      // Hand-written slice naming the container port instead.
      slice('hand', [ep('10.0.0.3')], { ports: [{ name: 'web', port: 7070, protocol: 'TCP' }] }),
      // Pods without the named port: left out.
      slice('none', [ep('10.0.0.4')], { ports: [{ name: 'grpc', port: 5000, protocol: 'TCP' }] }),
      // Same name, other protocol: not this port.
      slice('udp', [ep('10.0.0.5')], { ports: [{ name: 'http', port: 8080, protocol: 'UDP' }] }),
      slice('noports', [ep('10.0.0.6')], { ports: [] }),
    ],
    OPTS,
  );
  t.deepEqual(keys(target.candidates), ['10.0.0.1:8080', '10.0.0.2:9090', '10.0.0.3:7070']);
});

test('numeric targetPort: the slice port wins, the targetPort fills in for port-less slices', (t) => {
  const port: ServicePort = { name: '', port: 80, targetPort: 8080, protocol: 'TCP' };
  const target = resolveServiceTarget(
    service({ ports: [port] }),
    port,
    [
      slice('a', [ep('10.0.0.1')], { ports: [{ name: '', port: 8081, protocol: 'TCP' }] }),
      slice('b', [ep('10.0.0.2')], { ports: [] }),
    ],
    OPTS,
  );
  t.deepEqual(keys(target.candidates), ['10.0.0.1:8081', '10.0.0.2:8080']);
});

test('multi-port service: each port picks its own slice port', (t) => {
  const grpc: ServicePort = { name: 'grpc', port: 9000, targetPort: 'grpc', protocol: 'TCP' };
  const svc = service({ ports: [HTTP, grpc] });
  const s = slice('s', [ep('10.0.0.1')], {
    ports: [
      { name: 'http', port: 8080, protocol: 'TCP' },
      { name: 'grpc', port: 5000, protocol: 'TCP' },
    ],
  });
  t.deepEqual(keys(resolveServiceTarget(svc, HTTP, [s], OPTS).candidates), ['10.0.0.1:8080']);
  t.deepEqual(keys(resolveServiceTarget(svc, grpc, [s], OPTS).candidates), ['10.0.0.1:5000']);
  t.deepEqual(serviceTargetKeys([svc]), new Set(['default/web:80/TCP', 'default/web:9000/TCP']));
});

test('weights come from the map by ip:port, else ip; invalid weights mean 1', (t) => {
  const target = resolveServiceTarget(
    service(),
    HTTP,
    [slice('s', [ep('10.0.0.1'), ep('10.0.0.2'), ep('10.0.0.3'), ep('10.0.0.4')])],
    {
      ...OPTS,
      weights: new Map([
        ['10.0.0.1:8080', 5],
        ['10.0.0.2', 3],
        ['10.0.0.3', 0],
      ]),
    },
  );
  t.deepEqual(
    target.candidates.map((e) => e.weight),
    [5, 3, 1, 1],
  );
});

// --- locality -----------------------------------------------------------------------------

const SPREAD = [
  ep('10.0.1.1', { nodeName: 'n1', zone: 'z1' }),
  ep('10.0.2.1', { nodeName: 'n2', zone: 'z1' }),
  ep('10.0.3.1', { nodeName: 'n3', zone: 'z2' }),
  ep('10.0.4.1', { nodeName: 'n4', zone: 'z3' }),
  ep('10.0.5.1'), // no locality at all
];

test('locality tiers: node > zone > region > any', (t) => {
  const target = resolveServiceTarget(service(), HTTP, [slice('s', SPREAD)], OPTS);
  t.deepEqual(
    target.tiers.map((tier) => [tier.tier, keys(tier.endpoints)]),
    [
      ['node', ['10.0.1.1:8080']],
      ['zone', ['10.0.2.1:8080']],
      ['region', ['10.0.3.1:8080']],
      ['any', ['10.0.4.1:8080', '10.0.5.1:8080']],
    ],
  );
  t.deepEqual(keys(target.candidates), ['10.0.1.1:8080']);
  t.is(target.candidates[0]!.region, 'r1');
});

test('locality failover: the best non-empty tier is chosen', (t) => {
  const resolve = (eps: Endpoint[]) =>
    resolveServiceTarget(service(), HTTP, [slice('s', eps)], OPTS).tiers[0]?.tier;
  t.is(resolve(SPREAD.slice(1)), 'zone');
  t.is(resolve(SPREAD.slice(2)), 'region');
  t.is(resolve(SPREAD.slice(3)), 'any');
  // Not ready locally: fails over too.
  t.is(resolve([{ ...SPREAD[0]!, ready: false, serving: false }, ...SPREAD.slice(2)]), 'region');
});

test("an endpoint's zone falls back to its Node's label; unknown client zone skips the zone tier", (t) => {
  const eps = [ep('10.0.2.1', { nodeName: 'n2' }), ep('10.0.4.1', { nodeName: 'n4' })];
  const target = resolveServiceTarget(service(), HTTP, [slice('s', eps)], OPTS);
  t.is(target.tiers[0]!.tier, 'zone');
  t.is(target.candidates[0]!.zone, 'z1');

  const lost = resolveServiceTarget(service(), HTTP, [slice('s', eps)], {
    locality: { nodeName: 'n9' },
    nodes: NODES,
  });
  t.deepEqual(
    lost.tiers.map((tier) => tier.tier),
    ['any'],
  );
  t.is(lost.candidates.length, 2);
});

test('internalTrafficPolicy Local: only same-node endpoints, none means no endpoint', (t) => {
  const local = service({ internalTrafficPolicy: 'Local' });
  const target = resolveServiceTarget(local, HTTP, [slice('s', SPREAD)], OPTS);
  t.deepEqual(
    target.tiers.map((tier) => tier.tier),
    ['node'],
  );
  t.deepEqual(keys(target.candidates), ['10.0.1.1:8080']);

  const none = resolveServiceTarget(local, HTTP, [slice('s', SPREAD.slice(1))], OPTS);
  t.deepEqual(none.candidates, []);
  t.deepEqual(none.tiers, []);
  t.is(new Balancer().pickTarget(none), undefined);

  // The terminating fallback is decided among this node's endpoints.
  const terminating = resolveServiceTarget(
    local,
    HTTP,
    [
      slice('s', [
        ep('10.0.1.1', { nodeName: 'n1', ready: false, serving: true, terminating: true }),
        ep('10.0.2.1', { nodeName: 'n2' }),
      ]),
    ],
    OPTS,
  );
  t.deepEqual(keys(terminating.candidates), ['10.0.1.1:8080']);
  t.true(terminating.terminatingFallback);
});

test('pickTarget fails over to the next tier once the preferred tier is excluded', (t) => {
  const target = resolveServiceTarget(service(), HTTP, [slice('s', SPREAD)], OPTS);
  const b = new Balancer({ random: seededRandom(1) });
  const exclude = new Set<string>();
  const order: string[] = [];
  for (let i = 0; i < 6; i++) {
    const picked = b.pickTarget(target, exclude);
    if (picked === undefined) break;
    order.push(picked.key);
    exclude.add(picked.key);
  }
  t.deepEqual(order.slice(0, 3), ['10.0.1.1:8080', '10.0.2.1:8080', '10.0.3.1:8080']);
  t.deepEqual(order.slice(3).sort(), ['10.0.4.1:8080', '10.0.5.1:8080']);
  t.is(order.length, 5);
});

// --- algorithms ---------------------------------------------------------------------------

test('seededRandom is deterministic and in [0, 1)', (t) => {
  const a = seededRandom(42);
  const b = seededRandom(42);
  for (let i = 0; i < 1000; i++) {
    const x = a();
    t.is(x, b());
    t.true(x >= 0 && x < 1);
  }
});

test('p2c prefers the less loaded endpoint', (t) => {
  const b = new Balancer({ random: seededRandom(7) });
  const [x, y] = [te('10.0.0.1'), te('10.0.0.2')];
  const leases = Array.from({ length: 5 }, () => b.acquire(x));
  t.is(b.active(x.key), 5);
  // Two candidates: both are always compared, so the idle one always wins.
  for (let i = 0; i < 50; i++) t.is(b.pick('svc', [x, y]), y);

  // Among many, a loaded endpoint wins only when drawn with another as loaded (never here).
  const many = [x, ...['2', '3', '4', '5'].map((n) => te(`10.0.0.${n}`))];
  const counts = tally(Array.from({ length: 2000 }, () => b.pick('svc', many)));
  t.is(counts.get('10.0.0.1'), undefined);
  for (const l of leases) l.release();
  t.is(b.active(x.key), 0);
});

test('p2c under sustained load spreads active connections in proportion to weight', (t) => {
  const b = new Balancer({ random: seededRandom(11) });
  const eps = [te('10.0.0.1', 1), te('10.0.0.2', 1), te('10.0.0.3', 2), te('10.0.0.4', 4)];
  for (let i = 0; i < 800; i++) b.acquire(b.pick('svc', eps)!);
  // 800 connections over weight 8: ideally 100, 100, 200, 400.
  const active = eps.map((e) => b.active(e.key));
  t.log(active);
  eps.forEach((e, i) => {
    const ideal = 100 * e.weight;
    t.true(Math.abs(active[i]! - ideal) <= ideal * 0.1, `${e.key}: ${active[i]} vs ${ideal}`);
  });
});

test('p2c with idle endpoints picks in proportion to weight', (t) => {
  const b = new Balancer({ random: seededRandom(3) });
  const eps = [te('10.0.0.1', 1), te('10.0.0.2', 3)];
  const n = 8000;
  // Each connection closes before the next opens: every comparison is a 0/w tie.
  const counts = tally(
    Array.from({ length: n }, () => {
      const lease = b.acquire(b.pick('svc', eps)!);
      lease.release();
      return lease.endpoint;
    }),
  );
  const share = (counts.get('10.0.0.2') ?? 0) / n;
  t.log(counts);
  t.true(share > 0.72 && share < 0.78, `heavy share ${share}`);
  t.is(b.stats().activeEndpoints, 0);
});

test('random picks in proportion to weight', (t) => {
  const b = new Balancer({ random: seededRandom(5) });
  const eps = [te('10.0.0.1', 1), te('10.0.0.2', 2), te('10.0.0.3', 3), te('10.0.0.4', 4)];
  const n = 20000;
  const counts = tally(Array.from({ length: n }, () => b.pick('svc', eps, undefined, 'random')));
  eps.forEach((e) => {
    const expected = (n * e.weight) / 10;
    const got = counts.get(e.address) ?? 0;
    t.true(Math.abs(got - expected) < expected * 0.06, `${e.address}: ${got} vs ${expected}`);
  });
});

test('round-robin follows the smooth weighted sequence exactly', (t) => {
  const b = new Balancer();
  const [a, bb, c] = [te('10.0.0.1', 5), te('10.0.0.2', 1), te('10.0.0.3', 1)];
  const seq = Array.from({ length: 14 }, () => b.pick('w', [a, bb, c], undefined, 'round-robin'));
  // nginx's smooth WRR for weights 5,1,1: a a b a c a a, repeating.
  const one = ['1', '1', '2', '1', '3', '1', '1'];
  t.deepEqual(
    seq.map((e) => e!.address.slice(-1)),
    [...one, ...one],
  );

  const eq = Array.from({ length: 6 }, () =>
    b.pick('eq', [te('10.0.0.1'), te('10.0.0.2'), te('10.0.0.3')], undefined, 'round-robin'),
  );
  t.deepEqual(
    eq.map((e) => e!.address.slice(-1)),
    ['1', '2', '3', '1', '2', '3'],
  );
});

test('round-robin state is per service; the service algorithm drives pickTarget', (t) => {
  const b = new Balancer();
  const eps = [te('10.0.0.1'), te('10.0.0.2')];
  const rr = target(eps, 'round-robin');
  t.is(b.pickTarget(rr)!.address, '10.0.0.1');
  t.is(b.pick('other', eps, undefined, 'round-robin')!.address, '10.0.0.1');
  t.is(b.pickTarget(rr)!.address, '10.0.0.2');
  t.is(b.pickTarget(rr)!.address, '10.0.0.1');
});

test('exclude: excluded endpoints are never picked, all excluded gives undefined', (t) => {
  const b = new Balancer({ random: seededRandom(9) });
  const eps = [te('10.0.0.1'), te('10.0.0.2'), te('10.0.0.3')];
  const exclude = new Set(['10.0.0.1:8080', '10.0.0.3:8080']);
  for (const alg of ['p2c', 'random', 'round-robin'] as const) {
    for (let i = 0; i < 50; i++) t.is(b.pick('svc', eps, exclude, alg)!.address, '10.0.0.2');
    t.is(b.pick('svc', eps, new Set(eps.map((e) => e.key)), alg), undefined);
    t.is(b.pick('svc', [], undefined, alg), undefined);
  }
});

test('connectWithRetry tries up to 3 distinct endpoints and releases failed leases', async (t) => {
  const b = new Balancer({ random: seededRandom(2) });
  const eps = ['1', '2', '3', '4', '5'].map((n) => te(`10.0.0.${n}`));
  const tried: string[] = [];
  const err = await t.throwsAsync(
    connectWithRetry(b, target(eps), async (e) => {
      tried.push(e.key);
      t.is(b.active(e.key), 1); // in flight while dialing
      throw new Error('ECONNREFUSED');
    }),
    { instanceOf: NoEndpointError },
  );
  t.is(tried.length, 3);
  t.is(new Set(tried).size, 3);
  t.is(err.failures.length, 3);
  t.regex(err.message, /3 endpoint\(s\) of default\/web:80\/TCP failed/);
  t.is(b.stats().activeConnections, 0);

  let calls = 0;
  const ok = await connectWithRetry(b, target(eps), async (e) => {
    if (++calls === 1) throw new Error('ECONNREFUSED');
    return `conn to ${e.key}`;
  });
  t.is(ok.failures.length, 1);
  t.not(ok.failures[0]!.endpoint.key, ok.endpoint.key);
  t.is(ok.connection, `conn to ${ok.endpoint.key}`);
  t.is(b.active(ok.endpoint.key), 1);
  ok.lease.release();
  ok.lease.release(); // idempotent
  t.is(b.active(ok.endpoint.key), 0);

  const none = await t.throwsAsync(
    connectWithRetry(b, target([]), async () => 'never'),
    { instanceOf: NoEndpointError },
  );
  t.is(none.message, 'no endpoint for default/web:80/TCP');
});

test('connectWithRetry stops when fewer endpoints than attempts exist', async (t) => {
  const b = new Balancer({ random: seededRandom(4) });
  let calls = 0;
  await t.throwsAsync(
    connectWithRetry(b, target([te('10.0.0.1'), te('10.0.0.2')]), async () => {
      calls++;
      throw new Error('EHOSTUNREACH');
    }),
    { instanceOf: NoEndpointError },
  );
  t.is(calls, 2);
});

test('retain drops state of removed services; removed endpoints leave round-robin state', (t) => {
  const b = new Balancer();
  t.false(b.hasServiceState);
  const eps = [te('10.0.0.1'), te('10.0.0.2'), te('10.0.0.3')];
  for (const svc of ['a', 'b', 'c']) b.pick(svc, eps, undefined, 'round-robin');
  t.like(b.stats(), { roundRobinServices: 3, roundRobinEntries: 9 });
  t.true(b.hasServiceState);
  b.retain(['a', 'zzz']);
  t.like(b.stats(), { roundRobinServices: 1, roundRobinEntries: 3 });
  b.retain(new Set());
  t.like(b.stats(), { roundRobinServices: 0, roundRobinEntries: 0 });
  t.false(b.hasServiceState);

  // Endpoint churn within one service: entries follow the live endpoints.
  for (let gen = 0; gen < 100; gen++) {
    const live = [te(`10.1.${gen}.1`), te(`10.1.${gen}.2`)];
    for (let i = 0; i < 3; i++) b.pick('churn', live, undefined, 'round-robin');
  }
  t.like(b.stats(), { roundRobinServices: 1, roundRobinEntries: 2 });

  // Active counts vanish at zero.
  const leases = eps.map((e) => b.acquire(e));
  t.like(b.stats(), { activeEndpoints: 3, activeConnections: 3 });
  for (const l of leases) l.release();
  t.like(b.stats(), { activeEndpoints: 0, activeConnections: 0 });
});
