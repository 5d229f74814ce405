// `weft demo`: builds a 2-node cluster of network namespaces, runs a weft node proxy on each,
// drives traffic between pods and prints what the mesh did. Everything it builds is torn
// down on exit or Ctrl-C; it touches nothing outside its own namespaces and pins.
import { mkdir, writeFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import { Lab, type LabPod } from '../lab/cluster.js';
import { LabMesh, WEFT_CLI, startCapture, type AccessEntry } from '../lab/mesh.js';
import type { PodCounters } from '../bpf/weft-maps.js';
import { assertPrivileges } from './node-agent.js';

export interface DemoOptions {
  readonly keep: boolean;
  readonly logLevel: string;
}

const AMBIENT = { 'weft.io/dataplane-mode': 'ambient' };
const SERVER_PORT = 8080;
const PAYMENTS_VIP = '198.18.100.20';

/** A Service in front of payments and a policy that lets only frontend call it. */
async function writeServiceAndPolicy(lab: Lab): Promise<void> {
  const dir = `${lab.dir}/cluster`;
  await mkdir(dir, { recursive: true });
  const payments = lab.pod('payments');
  const objects = [
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'payments', namespace: 'shop' },
      spec: {
        clusterIP: PAYMENTS_VIP,
        selector: { app: 'payments' },
        ports: [{ port: 80, targetPort: SERVER_PORT }],
      },
    },
    {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: {
        name: 'payments-1',
        namespace: 'shop',
        labels: { 'kubernetes.io/service-name': 'payments' },
      },
      addressType: 'IPv4',
      ports: [{ name: '', port: SERVER_PORT, protocol: 'TCP' }],
      endpoints: [
        { addresses: [payments.ip], conditions: { ready: true }, nodeName: payments.node.name },
      ],
    },
    {
      apiVersion: 'security.istio.io/v1',
      kind: 'AuthorizationPolicy',
      metadata: { name: 'payments-callers', namespace: 'shop' },
      spec: {
        selector: { matchLabels: { app: 'payments' } },
        action: 'ALLOW',
        rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/frontend'] } }] }],
      },
    },
  ];
  await writeFile(`${dir}/payments.yaml`, objects.map((o) => stringify(o)).join('---\n'));
}

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
      'pod-0-0': {
        name: 'frontend',
        namespace: 'shop',
        serviceAccount: 'frontend',
        annotations: AMBIENT,
      },
      'pod-0-1': { name: 'cart', namespace: 'shop', serviceAccount: 'cart', annotations: AMBIENT },
      'pod-1-0': {
        name: 'payments',
        namespace: 'shop',
        serviceAccount: 'payments',
        annotations: AMBIENT,
      },
      'pod-1-1': { name: 'legacy', namespace: 'shop', serviceAccount: 'legacy' },
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
    await writeServiceAndPolicy(lab);
    const mesh = await LabMesh.start(lab, {
      logLevel: options.logLevel === 'info' ? 'info' : options.logLevel,
    });
    await showCluster(lab);
    await Promise.all(lab.pods.map((pod) => lab.serve(pod.name, SERVER_PORT)));
    const node0 = lab.node('node-0');
    const pcap = `${lab.dir}/node-0-uplink.pcap`;
    const capture = await startCapture(lab, node0.netns, node0.uplink, pcap);
    say(`\nService shop/payments has VIP ${PAYMENTS_VIP}:80 -> payments:${SERVER_PORT}.`);
    say(
      'AuthorizationPolicy shop/payments-callers: ALLOW to payments from principal cluster.local/ns/shop/sa/frontend only.',
    );
    say('\nTraffic (each connection sends 64 KiB and checks the echo):');
    const flows: [string, string, string][] = [
      ['frontend', 'cart', lab.pod('cart').ip],
      ['frontend', 'payments (service VIP)', PAYMENTS_VIP],
      ['cart', 'payments (service VIP)', PAYMENTS_VIP],
      ['frontend', 'legacy', lab.pod('legacy').ip],
      ['legacy', 'payments', lab.pod('payments').ip],
      ['legacy', 'frontend', lab.pod('frontend').ip],
    ];
    const rows = [['from', 'to', 'result', 'how']];
    for (const [from, toLabel, address] of flows) {
      const port = address === PAYMENTS_VIP ? 80 : SERVER_PORT;
      const [result] = await lab.connect(from, address, port, { bytes: 65536, timeoutMs: 4000 });
      const to = lab.pod(toLabel.split(' ')[0]!);
      rows.push([
        `${from} (${lab.pod(from).node.name})`,
        `${toLabel} (${to.node.name})`,
        result?.ok && result.match
          ? 'ok, bytes intact'
          : `refused (${result?.error ?? 'no result'})`,
        describePath(lab.pod(from), to),
      ]);
    }
    say(table(rows));
    say('  (the refused ones are the policy at work: see "refused:" in the access log below)');
    await sleep(300);
    await capture.stop('SIGINT');
    await showWire(lab, pcap);

    await showAccessLog(lab, mesh);
    showCounters(lab, mesh);
    await showMetrics(mesh);
    await showStatus(lab);

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

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** What crossed the link between the nodes: TLS to port 15008, never the payload. */
async function showWire(lab: Lab, pcap: string): Promise<void> {
  const node0 = lab.node('node-0');
  say(`\nOn the wire between the nodes (tcpdump on node-0's uplink ${node0.uplink}):`);
  const read = async (filter: string) =>
    (
      await lab.exec(node0.netns, ['tcpdump', '-nn', '-r', pcap, filter], { allowFail: true })
    ).stdout
      .split('\n')
      .filter(Boolean).length;
  const tunnel = await read('tcp port 15008');
  const tlsRecords = await read('tcp port 15008 and (tcp[((tcp[12:1] & 0xf0) >> 2):1] = 0x17)');
  const meshPlain = await read(`tcp port 8080 and host ${lab.pod('payments').ip}`);
  const outsidePlain = await read(`tcp port 8080 and host ${lab.pod('legacy').ip}`);
  say(
    `  ${tunnel} packets to/from port 15008 (HBONE, mutual TLS 1.3), ${tlsRecords} of them TLS application data`,
  );
  say(
    `  ${meshPlain} packets in plaintext to or from payments (in the mesh): its traffic crossed encrypted only`,
  );
  say(
    `  ${outsidePlain} plaintext packets to or from legacy, which is outside the mesh (as with Istio ambient)`,
  );
}

async function showMetrics(mesh: LabMesh): Promise<void> {
  const metrics = await mesh.fetchFromNode('node-1', '/metrics');
  const lines = metrics
    .split('\n')
    .filter(
      (l) =>
        /^istio_tcp_(sent_bytes|connections_opened)_total\{reporter="destination"/.test(l) ||
        /^weft_bpf_packets_total\{pod="payments".*captured_hbone/.test(l),
    );
  say('\nA few metric lines from node-1 (http://<node>:15020/metrics, Istio names and labels):');
  for (const line of lines.slice(0, 4)) say(`  ${shorten(line)}`);
}

function shorten(line: string): string {
  // Keep the labels a person reads first; the full set is Istio's.
  const keep = [
    'reporter',
    'source_workload',
    'source_principal',
    'destination_workload',
    'destination_principal',
    'connection_security_policy',
    'pod',
    'counter',
  ];
  const match = /^([a-z_]+)\{(.*)\} (.*)$/.exec(line);
  if (!match) return line;
  const labels = match[2]!.split(/,(?=[a-z_]+=")/).filter((l) => keep.includes(l.split('=')[0]!));
  return `${match[1]}{${labels.join(',')},...} ${match[3]}`;
}

async function showStatus(lab: Lab): Promise<void> {
  const node0 = lab.node('node-0');
  const run = await lab.exec(node0.netns, [process.execPath, WEFT_CLI, 'status'], {
    allowFail: true,
  });
  say('\n`weft status` on node-0:');
  say(run.stdout.replace(/^/gm, '  ').trimEnd() || `  ${run.stderr.trim()}`);
}

function describePath(from: LabPod, to: LabPod): string {
  const enrolled = (p: LabPod) => p.annotations['weft.io/dataplane-mode'] === 'ambient';
  if (enrolled(from)) {
    const sameNode = from.node.name === to.node.name;
    if (sameNode) return 'captured outbound, same-node fast path (policy applied in-process)';
    return enrolled(to)
      ? `captured outbound, HBONE tunnel (mTLS) to ${to.node.name}`
      : `captured outbound, plaintext to ${to.node.name} (destination not in the mesh)`;
  }
  return enrolled(to)
    ? 'not captured at source; captured inbound at destination'
    : 'not captured (neither is enrolled)';
}

async function showCluster(lab: Lab): Promise<void> {
  say('\nPods:');
  const rows = [['pod', 'node', 'ip', 'enrolled', 'identity (X.509-SVID minted by its node)']];
  for (const pod of lab.pods) {
    const enrolled = pod.annotations['weft.io/dataplane-mode'] === 'ambient';
    rows.push([
      `${pod.namespace}/${pod.name}`,
      pod.node.name,
      pod.ip,
      enrolled ? 'yes' : 'no',
      enrolled ? `spiffe://cluster.local/ns/${pod.namespace}/sa/${pod.serviceAccount}` : '-',
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
