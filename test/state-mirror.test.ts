// A worker's copy of the cluster state (src/workers/state-mirror.ts) kept in step by changes
// only: after every change on the control plane's store, the copy must hold the same state,
// and objects that did not change must keep their identity (so the worker compares only
// what changed). No root needed.
import test from 'ava';
import {
  ConfigStore,
  changedObjects,
  stateObjects,
  translateRaw,
  type TranslatedObject,
} from '../src/config/index.js';
import { StateMirror } from '../src/workers/state-mirror.js';

function pod(name: string, ip: string, labels: Record<string, string> = {}) {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: 'shop', uid: `uid-${name}`, labels },
    spec: { nodeName: 'node-0', serviceAccountName: name },
    status: { podIP: ip, phase: 'Running' },
  };
}

function service(name: string, vip: string, port: number) {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name, namespace: 'shop' },
    spec: { clusterIP: vip, selector: { app: name }, ports: [{ port, targetPort: port }] },
  };
}

function objects(raw: unknown[]): TranslatedObject[] {
  const result = translateRaw({ apiVersion: 'v1', kind: 'List', items: raw });
  if (result.errors.length > 0) throw new Error(result.errors.map((e) => e.message).join('; '));
  return result.objects;
}

test('changes alone keep a worker copy equal to the control plane state', (t) => {
  const control = new ConfigStore();
  control.replaceFromSource(
    'files',
    objects([pod('web', '198.19.0.10'), pod('api', '198.19.0.20')]),
  );
  const worker = new ConfigStore();
  const mirror = new StateMirror(worker, 'control-plane', {
    generation: control.generation,
    objects: stateObjects(control.state),
  });
  const sent: number[] = [];
  control.on('change', (state, diff) => {
    const change = { generation: state.generation, ...changedObjects(state, diff) };
    sent.push(change.upserts.length + change.removed.length);
    // What crosses the channel is a structured clone, as with fork's advanced serialization.
    mirror.apply(structuredClone(change));
  });

  const steps: unknown[][] = [
    // a pod added, a service added
    [
      pod('web', '198.19.0.10'),
      pod('api', '198.19.0.20'),
      pod('db', '198.19.0.30'),
      service('api', '10.96.0.20', 8080),
    ],
    // a pod relabelled
    [
      pod('web', '198.19.0.10', { version: 'v2' }),
      pod('api', '198.19.0.20'),
      pod('db', '198.19.0.30'),
      service('api', '10.96.0.20', 8080),
    ],
    // a pod and the service removed, the service's port changed first
    [
      pod('web', '198.19.0.10', { version: 'v2' }),
      pod('db', '198.19.0.30'),
      service('api', '10.96.0.20', 9090),
    ],
    [pod('web', '198.19.0.10', { version: 'v2' }), pod('db', '198.19.0.30')],
  ];
  for (const step of steps) {
    const dbBefore = worker.workload('shop', 'db');
    control.replaceFromSource('files', objects(step));
    t.is(mirror.generation, control.generation);
    t.deepEqual(stateObjects(worker.state), stateObjects(control.state));
    const dbAfter = worker.workload('shop', 'db');
    if (dbBefore && dbAfter) t.is(dbAfter, dbBefore, 'an unchanged pod keeps its identity');
  }
  t.deepEqual(sent, [2, 1, 2, 1], 'only what changed was sent');
  t.is(worker.workloadByIp('198.19.0.20'), undefined, 'the removed pod is gone from the copy');
  t.is(worker.workload('shop', 'web')?.labels.version, 'v2');
  t.is(worker.serviceByVip('10.96.0.20'), undefined);
});

test('a change that skips a generation is refused; the whole state puts the copy right', (t) => {
  const control = new ConfigStore();
  control.replaceFromSource('files', objects([pod('web', '198.19.0.10')]));
  const worker = new ConfigStore();
  const mirror = new StateMirror(worker, 'control-plane', {
    generation: control.generation,
    objects: stateObjects(control.state),
  });
  const changes: Parameters<StateMirror['apply']>[0][] = [];
  control.on('change', (state, diff) =>
    changes.push({ generation: state.generation, ...changedObjects(state, diff) }),
  );
  control.replaceFromSource(
    'files',
    objects([pod('web', '198.19.0.10'), pod('api', '198.19.0.20')]),
  );
  control.replaceFromSource('files', objects([pod('api', '198.19.0.20')]));
  t.is(changes.length, 2);
  // The first change is lost on the way: the second does not follow what the copy holds.
  const before = stateObjects(worker.state);
  t.false(mirror.apply(changes[1]!));
  t.deepEqual(stateObjects(worker.state), before, 'nothing was applied');
  mirror.reset({ generation: control.generation, objects: stateObjects(control.state) });
  t.is(mirror.generation, control.generation);
  t.deepEqual(stateObjects(worker.state), stateObjects(control.state));
  t.is(worker.workload('shop', 'web'), undefined);
});
