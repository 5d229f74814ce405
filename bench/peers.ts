// bench/peers.ts: the peers bench/crossnode.ts compares weft with: Debian's HAProxy and
// stunnel4 doing the node-to-node job. One process in the node-0 namespace, one in the node-1
// namespace; the client pod connects explicitly to the node-0 process (<node-0 IP>:<port>),
// which opens mutually authenticated TLS 1.3 to the node-1 process, which verifies the client
// certificate and forwards plaintext to the server pod. Both ends verify the peer's certificate
// against a throwaway CA made here with `openssl` (ECDSA P-256).
//
// Processes are started through Lab.spawn (tracked, signalled only by their own PID); config
// files and keys live in a temporary directory the caller removes.

import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Lab, LabNode, LabProcess } from '../src/lab/cluster.js';
import { runCommand } from '../src/lab/proc.js';
import { exeName, hardNofile } from './procfs.js';
import type { ProbeResult } from './tlsprobe.js';
import type { ConnectRateResult } from './pingpong.js';

export type PeerKind = 'haproxy' | 'stunnel';

/** TLS 1.3 suites, in weft's HBONE order (src/proxy/hbone/protocol.ts: AES-128-GCM first). */
export const PEER_CIPHERSUITES =
  'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';

/**
 * File descriptors the peer processes (and the tools holding many connections) may open: up to
 * 65536, within the hard limit this process has (root here lacks CAP_SYS_RESOURCE).
 */
export function peerNofile(): number {
  return Math.min(65536, hardNofile());
}

const TLSPROBE = fileURLToPath(new URL('./tlsprobe.js', import.meta.url));
const PINGPONG = fileURLToPath(new URL('./pingpong.js', import.meta.url));

export interface CertFiles {
  crt: string;
  key: string;
  /** Certificate then key, one file (HAProxy's `crt`). */
  pem: string;
}

export interface Pki {
  dir: string;
  ca: string;
  node0: CertFiles;
  node1: CertFiles;
  /** Signed by another CA but naming node-1: what a verifying peer must refuse. */
  rogue: CertFiles;
}

async function openssl(args: string[]): Promise<void> {
  await runCommand(['openssl', ...args], { timeoutMs: 20_000 });
}

async function makeCa(
  dir: string,
  name: string,
  cn: string,
): Promise<{ crt: string; key: string }> {
  const crt = join(dir, `${name}.pem`);
  const key = join(dir, `${name}.key`);
  await openssl([
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    key,
    '-out',
    crt,
    '-days',
    '2',
    '-subj',
    `/CN=${cn}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  return { crt, key };
}

async function makeLeaf(
  dir: string,
  name: string,
  ca: { crt: string; key: string },
  cn: string,
  ip: string,
  serial: number,
): Promise<CertFiles> {
  const key = join(dir, `${name}.key`);
  const csr = join(dir, `${name}.csr`);
  const crt = join(dir, `${name}.crt`);
  const ext = join(dir, `${name}.ext`);
  await openssl([
    'req',
    '-new',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    key,
    '-out',
    csr,
    '-subj',
    `/CN=${cn}`,
  ]);
  await writeFile(
    ext,
    'basicConstraints=critical,CA:FALSE\n' +
      'keyUsage=critical,digitalSignature\n' +
      'extendedKeyUsage=serverAuth,clientAuth\n' +
      `subjectAltName=DNS:${cn},IP:${ip}\n`,
  );
  await openssl([
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    ca.crt,
    '-CAkey',
    ca.key,
    '-set_serial',
    String(serial),
    '-days',
    '2',
    '-out',
    crt,
    '-extfile',
    ext,
  ]);
  const pem = join(dir, `${name}.pem`);
  await runCommand(['sh', '-c', 'cat "$1" "$2" > "$3"', 'sh', crt, key, pem]);
  return { crt, key, pem };
}

/** A CA and one certificate per node (CN and DNS SAN = node name, IP SAN = node IP). */
export async function makePki(dir: string, node0: LabNode, node1: LabNode): Promise<Pki> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const ca = await makeCa(dir, 'ca', 'weft bench peer CA');
  const rogueCa = await makeCa(dir, 'rogue-ca', 'weft bench rogue CA');
  return {
    dir,
    ca: ca.crt,
    node0: await makeLeaf(dir, 'node-0', ca, node0.name, node0.ip, 2),
    node1: await makeLeaf(dir, 'node-1', ca, node1.name, node1.ip, 3),
    rogue: await makeLeaf(dir, 'rogue', rogueCa, node1.name, node1.ip, 4),
  };
}

/** One tunnelled destination: node-0 IP:frontPort -> TLS node-1 IP:tunnelPort -> server. */
export interface PeerRoute {
  frontPort: number;
  tunnelPort: number;
  serverIp: string;
  serverPort: number;
}

export interface PeerPlan {
  node0: LabNode;
  node1: LabNode;
  routes: readonly PeerRoute[];
  /**
   * A route whose node-1 end is NOT a peer process but a TLS server with a certificate from
   * another CA (tlsprobe server): the node-0 process must refuse it.
   */
  rogue: { frontPort: number; tunnelPort: number };
}

function haproxyConfig(end: 0 | 1, plan: PeerPlan, pki: Pki): string {
  const g = [
    '# weft bench: HAProxy, node-to-node mTLS tunnel (generated; see docs/benchmarks.md)',
    'global',
    '  nbthread 1',
    '  maxconn 4000',
    `  ssl-default-bind-ciphersuites ${PEER_CIPHERSUITES}`,
    '  ssl-default-bind-options ssl-min-ver TLSv1.3',
    `  ssl-default-server-ciphersuites ${PEER_CIPHERSUITES}`,
    '  ssl-default-server-options ssl-min-ver TLSv1.3',
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    '  timeout client 300s',
    '  timeout server 300s',
    '',
  ];
  const out = [...g];
  const serverTls = (name: string, ip: string, port: number) =>
    `  server ${name} ${ip}:${port} ssl crt ${pki.node0.pem} ca-file ${pki.ca} ` +
    `verify required verifyhost ${plan.node1.name}`;
  if (end === 0) {
    for (const r of [...plan.routes, plan.rogue]) {
      out.push(
        `frontend in_${r.frontPort}`,
        `  bind ${plan.node0.ip}:${r.frontPort}`,
        `  default_backend tunnel_${r.frontPort}`,
        `backend tunnel_${r.frontPort}`,
        serverTls(plan.node1.name, plan.node1.ip, r.tunnelPort),
        '',
      );
    }
  } else {
    for (const r of plan.routes) {
      out.push(
        `frontend tunnel_${r.tunnelPort}`,
        `  bind ${plan.node1.ip}:${r.tunnelPort} ssl crt ${pki.node1.pem} ca-file ${pki.ca} verify required`,
        `  default_backend pod_${r.tunnelPort}`,
        `backend pod_${r.tunnelPort}`,
        `  server pod ${r.serverIp}:${r.serverPort}`,
        '',
      );
    }
  }
  return out.join('\n');
}

function stunnelConfig(end: 0 | 1, plan: PeerPlan, pki: Pki): string {
  const out = [
    '; weft bench: stunnel4, node-to-node mTLS tunnel (generated; see docs/benchmarks.md)',
    'foreground = yes',
    'pid =',
    'syslog = no',
    'debug = warning',
    '',
  ];
  const common = (cert: CertFiles) => [
    `cert = ${cert.crt}`,
    `key = ${cert.key}`,
    `CAfile = ${pki.ca}`,
    'verifyChain = yes',
    'sslVersionMin = TLSv1.3',
    `ciphersuites = ${PEER_CIPHERSUITES}`,
    'socket = l:TCP_NODELAY=1',
    'socket = r:TCP_NODELAY=1',
  ];
  if (end === 0) {
    for (const r of [...plan.routes, plan.rogue]) {
      out.push(
        `[in_${r.frontPort}]`,
        'client = yes',
        `accept = ${plan.node0.ip}:${r.frontPort}`,
        `connect = ${plan.node1.ip}:${r.tunnelPort}`,
        `checkHost = ${plan.node1.name}`,
        ...common(pki.node0),
        '',
      );
    }
  } else {
    for (const r of plan.routes) {
      out.push(
        `[tunnel_${r.tunnelPort}]`,
        `accept = ${plan.node1.ip}:${r.tunnelPort}`,
        `connect = ${r.serverIp}:${r.serverPort}`,
        'requireCert = yes',
        // Our suite order wins whatever the client offers first (HAProxy and weft do the same).
        'options = CIPHER_SERVER_PREFERENCE',
        ...common(pki.node1),
        '',
      );
    }
  }
  return out.join('\n');
}

/** Polls `ss` in a namespace until every port listens (bounded: 100 x 50 ms). */
export async function waitListening(lab: Lab, netns: string, ports: number[]): Promise<void> {
  let missing = ports;
  for (let i = 0; i < 100; i++) {
    const r = await lab.exec(netns, ['ss', '-Hltn'], { allowFail: true, timeoutMs: 5000 });
    missing = ports.filter((p) => !new RegExp(`:${p}\\s`).test(r.stdout));
    if (missing.length === 0) return;
    await new Promise((res) => setTimeout(res, 50));
  }
  throw new Error(`${netns}: nothing listens on port(s) ${missing.join(', ')} after 5 s`);
}

/** A running pair of peer processes (node-0 end first). */
export class PeerPair {
  private constructor(
    readonly kind: PeerKind,
    readonly processes: readonly [LabProcess, LabProcess],
  ) {}

  get pids(): [number, number] {
    return [this.processes[0].pid, this.processes[1].pid];
  }

  /** Writes both configs, starts both processes and waits until they listen (bounded). */
  static async start(lab: Lab, kind: PeerKind, plan: PeerPlan, pki: Pki): Promise<PeerPair> {
    const procs: LabProcess[] = [];
    try {
      for (const end of [1, 0] as const) {
        const node = end === 0 ? plan.node0 : plan.node1;
        const file = join(pki.dir, `${kind}-${node.name}.cfg`);
        const text =
          kind === 'haproxy' ? haproxyConfig(end, plan, pki) : stunnelConfig(end, plan, pki);
        await writeFile(file, text + '\n');
        const argv = kind === 'haproxy' ? ['haproxy', '-db', '-f', file] : ['stunnel4', file];
        // prlimit and `ip netns exec` both exec, so the PID is the peer's own.
        procs[end] = lab.spawn(node.netns, ['prlimit', `--nofile=${peerNofile()}`, ...argv]);
        const ports =
          end === 0
            ? [...plan.routes.map((r) => r.frontPort), plan.rogue.frontPort]
            : plan.routes.map((r) => r.tunnelPort);
        try {
          await waitListening(lab, node.netns, ports);
        } catch (e) {
          const p = procs[end];
          throw new Error(
            `${kind} on ${node.name}: ${(e as Error).message}; ${p.running ? 'running' : 'exited'}; ` +
              `stderr: ${p.stderr.trim()}`,
          );
        }
        const exe = exeName(procs[end].pid);
        const want = kind === 'haproxy' ? 'haproxy' : 'stunnel4';
        if (exe !== want) throw new Error(`pid ${procs[end].pid} runs ${exe}, not ${want}`);
      }
    } catch (e) {
      await Promise.all(procs.filter(Boolean).map((p) => p.stop('SIGTERM', 2000)));
      throw e;
    }
    return new PeerPair(kind, [procs[0]!, procs[1]!]);
  }

  async stop(): Promise<void> {
    await Promise.all(this.processes.map((p) => p.stop('SIGTERM', 2000)));
  }

  /** Throws if either process has exited. */
  assertRunning(): void {
    for (const p of this.processes) {
      if (!p.running) {
        throw new Error(`${this.kind} pid ${p.pid} exited: ${p.stderr.trim().slice(-2000)}`);
      }
    }
  }
}

export interface TunnelVerification {
  /** node-0 cert: TLS 1.3, the expected cipher, node-1's certificate, bytes echoed. */
  validClient: ProbeResult;
  /** No client certificate: the node-1 end must not relay. */
  noClientCert: ProbeResult;
  /** A client certificate from another CA: refused. */
  foreignClientCert: ProbeResult;
  /** Valid certificate, but at most TLS 1.2: refused. */
  tls12: ProbeResult;
  /** Client pod -> node-0 end -> a node-1 server with a foreign-CA certificate: refused. */
  foreignServer: { ok: boolean; error?: string };
  /** Client pod -> node-0 end -> node-1 end -> echo server: works. */
  throughPath: { ok: boolean; count: number; error?: string };
}

function lastJson<T>(text: string): T | undefined {
  for (const l of text.trim().split('\n').reverse()) {
    if (!l.startsWith('{')) continue;
    try {
      return JSON.parse(l) as T;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

/**
 * Proves the pair does what the benchmark claims, on the echo route: TLS 1.3 only, client
 * certificates required and checked against the CA on node-1, the server's certificate checked
 * on node-0, and plaintext relayed end to end. Throws (with the evidence) otherwise.
 */
export async function verifyTunnel(
  lab: Lab,
  pair: PeerPair,
  plan: PeerPlan,
  pki: Pki,
  clientPod: string,
  echoPort: number,
): Promise<TunnelVerification> {
  const route = plan.routes.find((r) => r.serverPort === echoPort);
  if (!route) throw new Error(`no peer route for the echo port ${echoPort}`);
  const probe = async (extra: string[]): Promise<ProbeResult> => {
    const r = await lab.exec(
      plan.node0.netns,
      [
        process.execPath,
        TLSPROBE,
        'client',
        '--host',
        plan.node1.ip,
        '--port',
        String(route.tunnelPort),
        '--ca',
        pki.ca,
        '--timeout-ms',
        '5000',
        ...extra,
      ],
      { allowFail: true, timeoutMs: 15_000 },
    );
    const res = lastJson<ProbeResult>(r.stdout);
    if (!res) throw new Error(`tlsprobe: no result (code ${r.code}): ${r.stderr.trim()}`);
    return res;
  };
  const connect = async (port: number, count: number) => {
    const r = await lab.exec(
      clientPod,
      [
        process.execPath,
        PINGPONG,
        'connect',
        '--host',
        plan.node0.ip,
        '--port',
        String(port),
        '--count',
        String(count),
        '--timeout-ms',
        '8000',
      ],
      { allowFail: true, timeoutMs: 20_000 },
    );
    const res = lastJson<ConnectRateResult>(r.stdout);
    return {
      ok: res?.ok === true,
      count: res?.count ?? 0,
      ...(res?.error ? { error: res.error } : res ? {} : { error: r.stderr.trim() }),
    };
  };
  const valid = ['--cert', pki.node0.crt, '--key', pki.node0.key];
  const rogueServer = lab.spawn(plan.node1.netns, [
    process.execPath,
    TLSPROBE,
    'server',
    '--host',
    plan.node1.ip,
    '--port',
    String(plan.rogue.tunnelPort),
    '--cert',
    pki.rogue.crt,
    '--key',
    pki.rogue.key,
  ]);
  let foreignServer: { ok: boolean; error?: string };
  try {
    await rogueServer.waitForLine((l) => l.includes('"listening"'), 10_000);
    foreignServer = await connect(plan.rogue.frontPort, 1);
  } finally {
    await rogueServer.stop('SIGTERM', 1000);
  }
  const v: TunnelVerification = {
    validClient: await probe(valid),
    noClientCert: await probe([]),
    foreignClientCert: await probe(['--cert', pki.rogue.crt, '--key', pki.rogue.key]),
    tls12: await probe([...valid, '--max-version', 'TLSv1.2']),
    foreignServer,
    throughPath: await connect(route.frontPort, 3),
  };
  const problems: string[] = [];
  const ok = v.validClient;
  if (!ok.echoed || ok.protocol !== 'TLSv1.3' || ok.peerSubject !== `CN=${plan.node1.name}`) {
    problems.push('a valid client did not get TLS 1.3 to node-1 with its echo');
  }
  if (ok.cipher !== 'TLS_AES_128_GCM_SHA256') {
    problems.push(`cipher ${ok.cipher}, expected TLS_AES_128_GCM_SHA256`);
  }
  if (v.noClientCert.echoed) problems.push('relayed for a client without a certificate');
  if (v.foreignClientCert.echoed) problems.push('relayed for a client certificate of another CA');
  if (v.tls12.echoed || v.tls12.handshake) problems.push('accepted TLS 1.2');
  if (v.foreignServer.ok) problems.push('node-0 end relayed to a server of another CA');
  if (!v.throughPath.ok) problems.push(`no echo through the path: ${v.throughPath.error}`);
  if (problems.length) {
    throw new Error(`${pair.kind} tunnel: ${problems.join('; ')}: ${JSON.stringify(v)}`);
  }
  return v;
}
