// Parsing and checking `weft node` flags into a typed NodeOptions. Flag errors are CliError
// with a message naming the flag and the bad value; nothing here touches the system.
import type { AttachMode } from '../bpf/attach.js';

export class CliError extends Error {
  override name = 'CliError';
}

export interface NodeOptions {
  readonly config: string;
  readonly nodeName: string;
  readonly bpffs: string;
  readonly uplinks: readonly string[] | undefined;
  readonly attachMode: AttachMode | 'auto';
  readonly fwmark: number;
  readonly fwmarkMask: number;
  readonly routeTable: number;
  readonly rulePriority: number;
  readonly listenAddress: string;
  readonly outboundPort: number;
  readonly inboundPort: number;
  readonly hbonePort: number;
  readonly connectTimeoutMs: number;
  readonly drainGraceMs: number;
  readonly interfaceScanMs: number;
  readonly logLevel: string;
  /** How long routine log lines (the access log) may wait to be written together; 0: at once. */
  readonly logBatchMs: number;
  readonly cleanup: boolean;
  /** Directory with Istio's cacerts files; without it cross-node mesh traffic is refused. */
  readonly ca: string | undefined;
  readonly trustDomain: string;
  readonly rootNamespace: string;
  readonly certTtlMs: number;
  readonly adminPort: number;
  readonly metricsPort: number;
  readonly readinessPort: number;
  /** Most Istio TCP metric label sets kept before folding into `other`. */
  readonly seriesBudget: number;
  /** Access log: off, or the fraction of clean connections logged (refusals always are). */
  readonly accessLog: boolean;
  readonly accessLogSample: number;
  /** Let allowed same-node connections through in BPF after their first (the direct path). */
  readonly directSameNode: boolean;
  /**
   * Data-plane worker processes. 1: this process relays connections itself. More: it stays
   * the control plane and forks that many workers, each with its own listener slots.
   */
  readonly workers: number;
}

/** Defaults clear of kube-proxy (0x4000, 0x8000), Calico (0xffff0000) and Cilium (0x0f00). */
export const DEFAULT_FWMARK = 0x1000;
export const DEFAULT_FWMARK_MASK = 0x1000;
export const DEFAULT_ROUTE_TABLE = 150;
export const DEFAULT_RULE_PRIORITY = 150;

export function parseNumber(flag: string, value: unknown, min: number, max: number): number {
  const text = String(value);
  const n = /^0x[0-9a-f]+$/i.test(text) ? parseInt(text, 16) : Number(text);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new CliError(`--${flag}: "${text}" is not a whole number from ${min} to ${max}`);
  }
  return n;
}

/** "25s", "500ms", "2m", or plain seconds. */
export function parseDuration(flag: string, value: unknown): number {
  const text = String(value).trim();
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text);
  if (!match)
    throw new CliError(`--${flag}: "${text}" is not a duration (e.g. 500ms, 25s, 2m, 24h)`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[
    (match[2] ?? 's') as 'ms' | 's' | 'm' | 'h'
  ];
  return Math.round(Number(match[1]) * unit);
}

export function parseIpv4(flag: string, value: unknown): string {
  const text = String(value);
  const parts = text.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) {
    throw new CliError(`--${flag}: "${text}" is not an IPv4 address`);
  }
  return text;
}

export function parseAttachMode(value: unknown): AttachMode | 'auto' {
  if (value === 'auto' || value === 'tcx' || value === 'tc') return value;
  throw new CliError(`--attach-mode: "${String(value)}" must be auto, tcx or tc`);
}

export function parseUplinks(value: unknown): string[] | undefined {
  if (value === undefined || value === '') return undefined;
  const names = String(value)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const name of names) {
    if (name.length > 15 || /[\s/]/.test(name)) {
      throw new CliError(`--uplink: "${name}" is not an interface name`);
    }
  }
  return names;
}

export function parseTrustDomain(value: unknown): string {
  const text = String(value ?? '');
  if (!/^[a-z0-9._-]+$/.test(text) || text.length > 255) {
    throw new CliError(
      `--trust-domain: "${text}" is not a trust domain (lowercase letters, digits, . _ -)`,
    );
  }
  return text;
}

export function parseFraction(flag: string, value: unknown): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0 || n > 1) {
    throw new CliError(`--${flag}: "${String(value)}" is not a fraction from 0 to 1`);
  }
  return n;
}

/** `--workers`: a count from 1 to `max`, or `auto` (one per CPU, at most `max`). */
export function parseWorkers(value: unknown, cpus: number, max: number): number {
  if (value === 'auto') return Math.max(1, Math.min(cpus, max));
  return parseNumber('workers', value, 1, max);
}
