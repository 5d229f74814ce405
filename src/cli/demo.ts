// `weft demo`: builds a 2-node cluster of network namespaces, runs a weft node proxy on each,
// drives traffic between pods and prints what the mesh did. Everything it builds is torn
// down on exit or Ctrl-C; it touches nothing outside its own namespaces and pins.
import { Lab, type LabPod } from '../lab/cluster.js';
import { LabMesh, type AccessEntry } from '../lab/mesh.js';
import type { PodCounters } from '../bpf/weft-maps.js';
import { assertPrivileges } from './node-agent.js';

export interface DemoOptions {
  readonly keep: boolean;
  readonly logLevel: string;
}

const AMBIENT = { 'weft.io/dataplane-mode': 'ambient' };
const SERVER_PORT = 8080;

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => '  ' + r.map((c, i) => c.padEnd(widths[i]!)).join('  ')).join('\n');
}

function say(text = ''): void {
  process.stdout.write(`${text}\n`);
}

export async function runDemo(options: DemoOptions): Promise<void> {
  assertPrivileges();
  say('weft demo: building a 2-node cluster in network namespaces ...');
  const lab = await Lab.create({
    nodes: 2,
    podsPerNode: 2,
    pods: {
      'pod-0-0': { name: 'frontend', namespace: 'shop', annotations: AMBIENT },
      'pod-0-1': { name: 'cart', namespace: 'shop', annotations: AMBIENT },
      'pod-1-0': { name: 'payments', namespace: 'shop', annotations: AMBIENT },
      'pod-1-1': { name: 'legacy', namespace: 'shop' },
    },
  });
  let interrupted = false;
  const teardown = async () => {
    say('\ntearing down the demo cluster ...');
    await lab.destroy();
  };
  const onSignal = () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    teardown().then(
      () => process.exit(130),
      () => process.exit(1),
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    const mesh = await LabMesh.start(lab, {
      logLevel: options.logLevel === 'info' ? 'info' : options.logLevel,
    });
    await showCluster(lab);
    await Promise.all(lab.pods.map((pod) => lab.serve(pod.name, SERVER_PORT)));
    say('\nTraffic (each connection sends 64 KiB and checks the echo):');
    const flows: [string, string][] = [
      ['frontend', 'cart'],
      ['frontend', 'payments'],
      ['frontend', 'legacy'],
      ['legacy', 'payments'],
      ['legacy', 'frontend'],
    ];
    const rows = [['from', 'to', 'result', 'how']];
    for (const [from, to] of flows) {
      const [result] = await lab.connect(from, lab.pod(to).ip, SERVER_PORT, { bytes: 65536 });
      rows.push([
        `${from} (${lab.pod(from).node.name})`,
        `${to} (${lab.pod(to).node.name})`,
        result?.ok && result.match ? 'ok, bytes intact' : `FAILED: ${result?.error ?? 'no result'}`,
        describePath(lab.pod(from), lab.pod(to)),
      ]);
    }
    say(table(rows));

    await showAccessLog(lab, mesh);
    showCounters(lab, mesh);

    say('\nFail closed: stopping the proxy on node-0 and trying frontend -> payments again ...');
    await mesh.stopNode('node-0');
    const [blocked] = await lab.connect('frontend', lab.pod('payments').ip, SERVER_PORT, {
      bytes: 1024,
      connectTimeoutMs: 1000,
    });
    say(
      blocked?.ok
        ? '  UNEXPECTED: the connection went through without the proxy'
        : `  refused as it should be (${blocked?.error ?? 'no connection'}); dropped-no-listener for frontend: ${mesh.counters(lab.node('node-0'), lab.pod('frontend').ip)?.droppedNoListener ?? 0n}`,
    );
    if (options.keep && !interrupted) {
      say('\n--keep: the cluster stays up; press Ctrl-C to tear it down.');
      await new Promise(() => undefined);
    }
  } finally {
    if (!interrupted) await teardown();
  }
}

function describePath(from: LabPod, to: LabPod): string {
  const enrolled = (p: LabPod) => p.annotations['weft.io/dataplane-mode'] === 'ambient';
  if (enrolled(from)) {
    const sameNode = from.node.name === to.node.name;
    return `captured outbound${sameNode ? ', same-node fast path' : ', relayed to ' + to.node.name}${enrolled(to) && !sameNode ? ', captured inbound there' : ''}`;
  }
  return enrolled(to)
    ? 'not captured at source; captured inbound at destination'
    : 'not captured (neither is enrolled)';
}

async function showCluster(lab: Lab): Promise<void> {
  say('\nPods:');
  const rows = [['pod', 'node', 'ip', 'enrolled']];
  for (const pod of lab.pods) {
    rows.push([
      `${pod.namespace}/${pod.name}`,
      pod.node.name,
      pod.ip,
      pod.annotations['weft.io/dataplane-mode'] === 'ambient'
        ? 'yes (weft.io/dataplane-mode=ambient)'
        : 'no',
    ]);
  }
  say(table(rows));
}

async function showAccessLog(lab: Lab, mesh: LabMesh): Promise<void> {
  say('\nWhat the node proxies saw (access log):');
  const rows = [
    ['node', 'direction', 'path', 'client', 'original destination', 'bytes sent/received'],
  ];
  for (const node of lab.nodes) {
    const entries: AccessEntry[] = await mesh.waitForAccessLog(node.name, 1, 2000);
    for (const e of entries) {
      rows.push([
        node.name,
        e.direction,
        e.path,
        `${e.src}${e.srcWorkload ? ` (${e.srcWorkload})` : ''}`,
        `${e.dst}${e.dstWorkload ? ` (${e.dstWorkload})` : ''}`,
        e.refused ? `refused: ${e.refused}` : `${e.bytesSent}/${e.bytesReceived}`,
      ]);
    }
  }
  say(table(rows));
}

function showCounters(lab: Lab, mesh: LabMesh): void {
  say('\nBPF counters per pod (read from the pinned per-CPU map):');
  const rows = [
    ['pod', 'captured out', 'captured in', 'bypassed pkts', 'dropped (no listener/spoof/stray)'],
  ];
  for (const pod of lab.pods) {
    const c: PodCounters | undefined = mesh.counters(pod.node, pod.ip);
    rows.push([
      pod.name,
      String(c?.capturedOutbound ?? 0n),
      String(c?.capturedInbound ?? 0n),
      String(c?.bypassed ?? 0n),
      `${c?.droppedNoListener ?? 0n}/${c?.droppedSpoofed ?? 0n}/${c?.droppedStray ?? 0n}`,
    ]);
  }
  say(table(rows));
}
