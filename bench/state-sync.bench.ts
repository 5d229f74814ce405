// bench/state-sync.bench.ts: what one config change costs to bring to the data-plane workers
// at 10,000 pods and 2,000 services, the whole state (what weft did before) against only the
// change (workers/state-mirror.ts). Each path: build the message on the control plane, copy
// it as fork's advanced serialization does (v8.serialize / deserialize), and apply it to a
// worker store that holds the state before the change. One pod relabelled per change.
// Medians of 7 runs. Run: node dist/bench/state-sync.bench.js
import { deserialize, serialize } from 'node:v8';
import {
  ConfigStore,
  changedObjects,
  stateObjects,
  translateRaw,
  type TranslatedObject,
} from '../src/config/index.js';
import { StateMirror } from '../src/workers/state-mirror.js';

const PODS = 10_000;
const SERVICES = 2_000;
const RUNS = 7;

function ip(i: number): string {
  return `198.19.${Math.floor(i / 250)}.${(i % 250) + 1}`;
}

function cluster(version: number): TranslatedObject[] {
  const items: unknown[] = [];
  for (let i = 0; i < PODS; i++) {
    const app = `app-${i % SERVICES}`;
    items.push({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: `${app}-${i}`,
        namespace: `ns-${i % 50}`,
        uid: `uid-${i}`,
        labels: { app, version: i === 0 ? `v${version}` : 'v1' },
      },
      spec: { nodeName: `node-${i % 100}`, serviceAccountName: app },
      status: { podIP: ip(i), phase: 'Running' },
    });
  }
  for (let s = 0; s < SERVICES; s++) {
    items.push({
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: `app-${s}`, namespace: `ns-${s % 50}` },
      spec: {
        clusterIP: `10.96.${Math.floor(s / 250)}.${(s % 250) + 1}`,
        selector: { app: `app-${s}` },
        ports: [{ port: 8080, targetPort: 8080 }],
      },
    });
  }
  return translateRaw({ apiVersion: 'v1', kind: 'List', items }).objects;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

function main(): void {
  // The control plane's source hands back the same objects for what did not change.
  const base = cluster(1);
  const control = new ConfigStore();
  control.replaceFromSource('files', base);
  const full = new ConfigStore();
  full.replaceFromSource('control-plane', stateObjects(control.state));
  const incremental = new ConfigStore();
  const mirror = new StateMirror(incremental, 'control-plane', {
    generation: control.generation,
    objects: stateObjects(control.state),
  });
  const results = { full: [] as number[], change: [] as number[], fullBytes: 0, changeBytes: 0 };
  control.on('change', (state, diff) => {
    let started = performance.now();
    const snapshot = serialize({ generation: state.generation, objects: stateObjects(state) });
    full.replaceFromSource('control-plane', deserialize(snapshot).objects);
    results.full.push(performance.now() - started);
    results.fullBytes = snapshot.length;

    started = performance.now();
    const change = serialize({ generation: state.generation, ...changedObjects(state, diff) });
    mirror.apply(deserialize(change));
    results.change.push(performance.now() - started);
    results.changeBytes = change.length;
  });
  const [first] = base;
  for (let run = 0; run < RUNS; run++) {
    // Relabel pod 0 only: a new object for it, the others unchanged.
    const relabelled = cluster(run + 2).find((o) => o.ref.name === first!.ref.name)!;
    control.replaceFromSource('files', [relabelled, ...base.slice(1)]);
  }
  const same =
    JSON.stringify(stateObjects(full.state)) === JSON.stringify(stateObjects(incremental.state));
  console.log(
    `state-sync at ${PODS} pods and ${SERVICES} services, one pod relabelled per change, median of ${RUNS}:\n` +
      `  whole state: ${median(results.full).toFixed(1)} ms, ${(results.fullBytes / 1048576).toFixed(1)} MiB per worker\n` +
      `  change only: ${median(results.change).toFixed(2)} ms, ${results.changeBytes} bytes per worker\n` +
      `  worker states equal: ${same}`,
  );
  if (!same) process.exitCode = 1;
}

main();
