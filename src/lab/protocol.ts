// lab/protocol.ts: the JSON lines podapp prints (its whole output contract) and their parsers.
// Types and pure parsing only; it must not import anything beyond node: builtins, since podapp
// (which runs inside pod namespaces) imports it.

/** Printed once by `podapp serve` when every port is bound. */
export interface ListeningEvent {
  event: 'listening';
  ports: number[];
  mode: 'echo' | 'sink';
}

export interface AcceptedEvent {
  event: 'accepted';
  local: string;
  remote: string;
}

export interface ClosedEvent {
  event: 'closed';
  local: string;
  remote: string;
  bytesIn: number;
  bytesOut: number;
  sha256In: string;
  /** Socket error seen before the close (e.g. ECONNRESET), else null. */
  error: string | null;
}

export type ServeEvent = ListeningEvent | AcceptedEvent | ClosedEvent;

/** One line per connection printed by `podapp connect`. */
export interface ConnectResult {
  ok: boolean;
  /** Local address of the connection, `ip:port` ('' when it never connected). */
  local: string;
  remote: string;
  bytesSent: number;
  bytesReceived: number;
  /** Received bytes equal the sent bytes (length and sha256). */
  match: boolean;
  sha256Sent: string;
  error: string | null;
  ms: number;
}

function parseJsonLine(line: string): unknown {
  const t = line.trim();
  if (!t.startsWith('{')) return undefined;
  try {
    return JSON.parse(t);
  } catch {
    return undefined;
  }
}

/** Parses one `podapp serve` stdout line; undefined for anything else. */
export function parseServeEvent(line: string): ServeEvent | undefined {
  const v = parseJsonLine(line) as { event?: unknown } | undefined;
  if (!v || typeof v !== 'object') return undefined;
  if (v.event === 'listening' || v.event === 'accepted' || v.event === 'closed') {
    return v as ServeEvent;
  }
  return undefined;
}

/** Parses one `podapp connect` stdout line; undefined for anything else. */
export function parseConnectResult(line: string): ConnectResult | undefined {
  const v = parseJsonLine(line) as Partial<ConnectResult> | undefined;
  if (!v || typeof v !== 'object' || typeof v.ok !== 'boolean') return undefined;
  return v as ConnectResult;
}

/** Splits `ip:port` (IPv4, or `[v6]:port`). */
export function splitHostPort(addr: string): { host: string; port: number } {
  const i = addr.lastIndexOf(':');
  let host = addr.slice(0, i);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return { host, port: Number(addr.slice(i + 1)) };
}
