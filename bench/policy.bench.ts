// bench/policy.bench.ts: cost of one policy/ evaluation with 10 vs 10,000 AuthorizationPolicies,
// most of them unrelated to the destination (other namespaces, other selectors in the same
// namespace and in the root namespace). Prints ns per evaluation, median of several runs, for
// a warm workload (its applicable policies cached) and a cold one (first connection after a
// rebuild or a label change), plus the time to build the set from scratch and to rebuild it
// from unchanged policy objects. Run: node dist/bench/policy.bench.js

import type { AuthorizationPolicy, PolicyRule } from '../src/config/mesh-model.js';
import type { Workload } from '../src/config/model.js';
import { PolicyEngine, type ConnectionFacts } from '../src/policy/index.js';

const ROOT = 'weft-system';
const RUNS = 7;
const WARM_ITERATIONS = 500_000;
const COLD_WORKLOADS = 10_000;

function workload(uid: string): Workload {
  return {
    uid,
    name: 'web',
    namespace: 'app',
    nodeName: 'node-1',
    serviceAccount: 'web',
    ip: '10.0.0.10',
    ips: ['10.0.0.10'],
    labels: { app: 'web', tier: 'front', version: 'v1' },
    annotations: {},
    hostNetwork: false,
    phase: 'Running',
  };
}

function policy(
  name: string,
  namespace: string,
  action: 'ALLOW' | 'DENY',
  rules: PolicyRule[],
  selector?: Record<string, string>,
): AuthorizationPolicy {
  return { name, namespace, action, rules, targetRefs: [], ...(selector ? { selector } : {}) };
}

/** The policies that apply to app/web: mesh-wide, root selector, namespace-wide, selector. */
function related(): AuthorizationPolicy[] {
  return [
    policy('mesh-deny-admin', ROOT, 'DENY', [{ to: [{ ports: ['15000'] }] }]),
    policy('root-web-deny', ROOT, 'DENY', [{ from: [{ ipBlocks: ['192.0.2.0/24'] }] }], {
      app: 'web',
    }),
    policy('ns-deny-other', 'app', 'DENY', [{ from: [{ namespaces: ['blocked'] }] }]),
    policy('web-deny-bot', 'app', 'DENY', [{ from: [{ principals: ['*/sa/bot'] }] }], {
      app: 'web',
    }),
    policy('web-allow-db', 'app', 'ALLOW', [{ from: [{ namespaces: ['db'] }] }], { app: 'web' }),
    policy(
      'web-allow-client',
      'app',
      'ALLOW',
      [
        {
          from: [
            { principals: ['cluster.local/ns/client/sa/curl', 'cluster.local/ns/client/sa/x'] },
          ],
          to: [{ ports: ['8080', '8443'] }],
        },
      ],
      { app: 'web', tier: 'front' },
    ),
  ];
}

/** Policies that do not apply to app/web. */
function unrelated(count: number): AuthorizationPolicy[] {
  const out: AuthorizationPolicy[] = [];
  const rule: PolicyRule = {
    from: [{ principals: ['cluster.local/ns/x/sa/y'], ipBlocks: ['10.0.0.0/8'] }],
    to: [{ ports: ['80'] }],
  };
  for (let i = 0; i < count; i++) {
    const action = i % 3 === 0 ? 'DENY' : 'ALLOW';
    switch (i % 10) {
      case 0: // root namespace, selector for another app
        out.push(policy(`root-${i}`, ROOT, action, [rule], { app: `svc-${i}` }));
        break;
      case 1: // same namespace, another app
      case 2:
        out.push(policy(`app-${i}`, 'app', action, [rule], { app: `svc-${i}` }));
        break;
      case 3: // same namespace, same app label but a version the pod does not have
        out.push(policy(`ver-${i}`, 'app', action, [rule], { app: 'web', version: `v-${i}` }));
        break;
      default: // other namespaces, with and without selector
        out.push(
          policy(
            `p-${i}`,
            `ns-${i % 997}`,
            action,
            [rule],
            i % 2 === 0 ? { app: `svc-${i}` } : undefined,
          ),
        );
    }
  }
  return out;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function conn(destination: Workload): ConnectionFacts {
  return {
    destination,
    destinationPort: 8080,
    source: { identity: 'spiffe://cluster.local/ns/client/sa/curl', ip: '10.1.2.3' },
    mtls: true,
  };
}

function bench(total: number): {
  warm: number;
  cold: number;
  compileMs: number;
  rebuildMs: number;
  applicable: number;
} {
  const policies = [...related(), ...unrelated(total - related().length)];
  const compiles: number[] = [];
  let engine = new PolicyEngine();
  for (let r = 0; r < 3; r++) {
    engine = new PolicyEngine(); // compiles every policy
    const t0 = process.hrtime.bigint();
    engine.rebuild(policies, [], { rootNamespace: ROOT, trustDomain: 'cluster.local' });
    compiles.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const rebuilds: number[] = [];
  for (let r = 0; r < 3; r++) {
    const t0 = process.hrtime.bigint(); // same objects: re-indexes, compiles nothing
    engine.rebuild(policies, []);
    rebuilds.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const web = workload('app/web');
  const input = conn(web);
  const first = engine.evaluate(input);
  if (!first.allow || first.policy !== 'app/web-allow-client')
    throw new Error(`unexpected decision: ${JSON.stringify(first)}`);
  const applicable = Object.values(engine.policiesFor(web)).flat().length;

  let sink = 0;
  const warm: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < WARM_ITERATIONS; i++) if (engine.evaluate(input).allow) sink++;
    warm.push(Number(process.hrtime.bigint() - t0) / WARM_ITERATIONS);
  }
  const cold: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const inputs = Array.from({ length: COLD_WORKLOADS }, (_, i) => conn(workload(`w-${r}-${i}`)));
    engine.rebuild(policies, []); // empties the per-workload cache
    const t0 = process.hrtime.bigint();
    for (const c of inputs) if (engine.evaluate(c).allow) sink++;
    cold.push(Number(process.hrtime.bigint() - t0) / COLD_WORKLOADS);
  }
  if (sink === 0) throw new Error('nothing allowed');
  return {
    warm: median(warm),
    cold: median(cold),
    compileMs: median(compiles),
    rebuildMs: median(rebuilds),
    applicable,
  };
}

// Warm up the JIT on a mid-size set first, so the first row is not paying for compilation.
bench(1000);
console.log(`policy evaluation, median of ${RUNS} runs (node ${process.version})`);
console.log('policies  applicable  warm ns/eval  cold ns/eval  first build ms  rebuild ms');
for (const total of [10, 10_000]) {
  const r = bench(total);
  console.log(
    [
      String(total).padStart(8),
      String(r.applicable).padStart(10),
      r.warm.toFixed(0).padStart(12),
      r.cold.toFixed(0).padStart(12),
      r.compileMs.toFixed(2).padStart(14),
      r.rebuildMs.toFixed(2).padStart(10),
    ].join('  '),
  );
}
