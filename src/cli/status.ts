// `weft status`: what a person on a node wants to see, read from the node proxy's admin
// endpoint (127.0.0.1:15000): enrolled pods with identity and certificate expiry, services,
// live connections and bytes, drops. A terminal table, or --json for scripts.
import { CliError } from './options.js';

export interface StatusDump {
  node: string;
  generation: number;
  pods: {
    pod: string;
    ip: string;
    enrolled: boolean;
    identity?: string;
    certificateExpires?: string;
    counters?: Record<string, number>;
  }[];
  services: {
    service: string;
    vips: string[];
    ports: string[];
    endpoints: number;
    ready: number;
  }[];
  connections: {
    id: number;
    direction: string;
    path: string;
    src: string;
    dst: string;
    ageMs: number;
    bytesSent: number;
    bytesReceived: number;
  }[];
}

async function get(admin: string, path: string): Promise<unknown> {
  let response: Response;
  try {
    response = await fetch(`${admin}${path}`, { signal: AbortSignal.timeout(3000) });
  } catch (error) {
    throw new CliError(
      `cannot reach the node proxy's admin endpoint at ${admin} (${(error as Error).message}): is \`weft node\` running on this node (and in this network namespace)?`,
    );
  }
  if (!response.ok) throw new CliError(`${admin}${path} answered ${response.status}`);
  return response.json();
}

export async function fetchStatus(admin: string): Promise<StatusDump> {
  return (await get(admin, '/debug/status')) as StatusDump;
}

function table(rows: string[][]): string {
  if (rows.length === 1) return '  (none)\n';
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return (
    rows
      .map(
        (r) =>
          '  ' +
          r
            .map((c, i) => (c ?? '').padEnd(widths[i]!))
            .join('  ')
            .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

function until(iso: string | undefined): string {
  if (!iso) return '-';
  const ms = Date.parse(iso) - Date.now();
  if (ms <= 0) return 'EXPIRED';
  const h = Math.floor(ms / 3_600_000);
  const m = Math.floor((ms % 3_600_000) / 60_000);
  return h > 0 ? `${h}h${m}m` : `${m}m${Math.floor((ms % 60_000) / 1000)}s`;
}

export function renderStatus(s: StatusDump): string {
  const drops = (c?: Record<string, number>) =>
    c
      ? String(
          (c.droppedNoListener ?? 0) +
            (c.droppedSpoofed ?? 0) +
            (c.droppedStray ?? 0) +
            (c.droppedIpv6 ?? 0) +
            (c.droppedFragment ?? 0) +
            (c.droppedCut ?? 0),
        )
      : '0';
  let out = `node ${s.node}  (config generation ${s.generation})\n\nPods on this node:\n`;
  out += table([
    ['pod', 'ip', 'enrolled', 'identity', 'cert expires in', 'captured out/in', 'direct', 'drops'],
    ...s.pods.map((p) => [
      p.pod,
      p.ip,
      p.enrolled ? 'yes' : 'no',
      p.identity ?? '-',
      until(p.certificateExpires),
      `${p.counters?.capturedOutbound ?? 0}/${(p.counters?.capturedInbound ?? 0) + (p.counters?.capturedHbone ?? 0)}`,
      String(p.counters?.direct ?? 0),
      drops(p.counters),
    ]),
  ]);
  out += '\nServices:\n';
  out += table([
    ['service', 'vips', 'ports', 'endpoints (ready)'],
    ...s.services.map((v) => [
      v.service,
      v.vips.join(','),
      v.ports.join(','),
      `${v.endpoints} (${v.ready})`,
    ]),
  ]);
  out += `\nLive connections: ${s.connections.length}\n`;
  out += table([
    ['id', 'direction', 'path', 'from', 'to', 'age', 'sent', 'received'],
    ...s.connections.map((c) => [
      String(c.id),
      c.direction,
      c.path,
      c.src,
      c.dst,
      `${(c.ageMs / 1000).toFixed(1)}s`,
      String(c.bytesSent),
      String(c.bytesReceived),
    ]),
  ]);
  return out;
}
