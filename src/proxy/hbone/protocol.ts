// The HBONE wire facts both ends share (docs/hbone.md is the prose version): TLS and HTTP/2
// settings, the CONNECT request's headers and how to parse them, the error types callers
// see. No I/O here.
import { isIPv4, isIPv6 } from 'node:net';
import { createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';
import type { Endpoint } from '../flow.js';

export const HBONE_PORT = 15008;
export const HBONE_ALPN = 'h2';

/** TLS 1.3 suites in our order of preference: AES-128-GCM is the cheapest on these machines. */
export const HBONE_CIPHERSUITES =
  'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';

/** HTTP/2 flow-control windows, as ztunnel sets them. */
export const STREAM_WINDOW_BYTES = 4 * 1024 * 1024;
export const CONNECTION_WINDOW_BYTES = 16 * 1024 * 1024;
/**
 * nghttp2's per-session memory cap, in MB (Node's option unit). Node's default of 10 MB is
 * below what a 16 MiB connection window can buffer: the session then dies with
 * ENHANCE_YOUR_CALM under load.
 */
export const SESSION_MEMORY_MB = 64;
/** Headers of a CONNECT are small; refuse header lists above 64 KiB (as ztunnel does). */
export const MAX_HEADER_LIST_BYTES = 64 * 1024;

/** RST_STREAM / GOAWAY codes used here (RFC 9113 section 7). */
export const H2_NO_ERROR = 0x0;
export const H2_REFUSED_STREAM = 0x7;
export const H2_CANCEL = 0x8;
export const H2_CONNECT_ERROR = 0xa;

/** A certificate check's answer: the peer's SPIFFE ID, or why it was refused. */
export type PeerVerdict =
  | { readonly ok: true; readonly identity: string }
  | { readonly ok: false; readonly reason: string };

/** Checks the peer certificate of a finished TLS handshake (chain, SPIFFE rules). */
export type VerifyPeer = (socket: TLSSocket) => PeerVerdict;

/** The subset of pino's logger this folder uses. */
export interface HboneLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

export const silentHboneLogger: HboneLogger = { debug() {}, info() {}, warn() {} };

export interface HboneContextOptions {
  /** PEM certificate chain (leaf first). */
  readonly cert: string | Buffer;
  /** PEM private key. */
  readonly key: string | Buffer;
}

/**
 * A secure context with the HBONE TLS policy: TLS 1.3 only, AES-128-GCM first, and the server
 * honouring our order. Node applies `minVersion`, `ciphers` and `honorCipherOrder` only
 * when a context is created: passed next to a ready `secureContext` to `tls.connect` or
 * `new TLSSocket` they are silently ignored. So build HBONE contexts here (or with the same
 * options). No CA: peers are verified in code against the right trust bundle.
 */
export function createHboneSecureContext(options: HboneContextOptions): SecureContext {
  return createSecureContext({
    cert: options.cert,
    key: options.key,
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    // Node takes TLS 1.3 suites (the TLS_ names) through `ciphers`.
    ciphers: HBONE_CIPHERSUITES,
    honorCipherOrder: true,
  });
}

/** Why a finished handshake is not an HBONE one, or undefined when it is. */
export function handshakeProblem(socket: TLSSocket): string | undefined {
  const protocol = socket.getProtocol();
  if (protocol !== 'TLSv1.3') return `TLS version ${protocol ?? 'unknown'} is not TLSv1.3`;
  if (socket.alpnProtocol !== HBONE_ALPN) {
    return `ALPN ${socket.alpnProtocol || 'none'} is not ${HBONE_ALPN}`;
  }
  return undefined;
}

export function stripMapped(ip: string): string {
  return ip.startsWith('::ffff:') && isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
}

export function formatHostPort(ip: string, port: number): string {
  return isIPv6(ip) ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/**
 * Parses `ip:port` (IPv4) or `[ip6]:port`, the only authorities HBONE accepts; with
 * `portOptional`, also a bare `ip` / `[ip6]` (port 0 then).
 */
export function parseHostPort(text: string, portOptional = false): Endpoint | undefined {
  let host: string;
  let portText: string | undefined;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close < 0) return undefined;
    host = text.slice(1, close);
    const rest = text.slice(close + 1);
    if (rest === '') portText = undefined;
    else if (rest.startsWith(':')) portText = rest.slice(1);
    else return undefined;
    if (!isIPv6(host)) return undefined;
  } else {
    const colon = text.lastIndexOf(':');
    host = colon < 0 ? text : text.slice(0, colon);
    portText = colon < 0 ? undefined : text.slice(colon + 1);
    if (!isIPv4(host)) return undefined;
  }
  if (portText === undefined) return portOptional ? { ip: host, port: 0 } : undefined;
  if (!/^[0-9]{1,5}$/.test(portText)) return undefined;
  const port = Number(portText);
  if (port < 1 || port > 65535) return undefined;
  return { ip: host.toLowerCase(), port };
}

/** `forwarded: for="<ip:port>"`, as ztunnel writes it. */
export function formatForwarded(client: string): string {
  return `for="${client}"`;
}

/**
 * The original client from a `forwarded` header (RFC 7239): the `for=` of the first element,
 * quoted or not, with or without a port (port 0 when absent). Undefined when missing or not an
 * IP (obfuscated identifiers, `unknown`).
 */
export function parseForwardedFor(value: string | string[] | undefined): Endpoint | undefined {
  const header = Array.isArray(value) ? value.join(',') : value;
  if (!header) return undefined;
  const first = header.split(',')[0] ?? '';
  for (const pair of first.split(';')) {
    const eq = pair.indexOf('=');
    if (eq < 0) continue;
    if (pair.slice(0, eq).trim().toLowerCase() !== 'for') continue;
    let v = pair.slice(eq + 1).trim();
    if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1);
    return parseHostPort(v, true);
  }
  return undefined;
}

/** The value of a single-valued header, or undefined (empty counts as absent). */
export function headerValue(value: string | string[] | undefined): string | undefined {
  const v = Array.isArray(value) ? value.join(',') : value;
  return v === undefined || v === '' ? undefined : v;
}

/** A CONNECT that got an answer other than 200. */
export class HboneStatusError extends Error {
  constructor(
    readonly status: number,
    readonly authority: string,
  ) {
    super(`HBONE CONNECT ${authority} answered ${status}`);
    this.name = 'HboneStatusError';
  }
}

export type HboneErrorCode =
  | 'CONNECT' // TCP connect to the peer failed
  | 'TIMEOUT' // TCP+TLS, or the CONNECT answer, took too long
  | 'TLS' // the TLS handshake failed (includes the peer refusing our certificate)
  | 'PROTOCOL' // not TLS 1.3, not ALPN h2
  | 'IDENTITY' // the server's certificate is invalid or not the expected identity
  | 'CLOSED' // the connection or stream went away before the answer
  | 'RESET'; // the stream was reset before the answer

/** Reaching a peer failed before a CONNECT was answered. */
export class HboneTunnelError extends Error {
  /** True when the peer never processed the CONNECT (GOAWAY, REFUSED_STREAM): safe to retry. */
  readonly retryable: boolean;

  constructor(
    readonly code: HboneErrorCode,
    message: string,
    options: { readonly cause?: unknown; readonly retryable?: boolean } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'HboneTunnelError';
    this.retryable = options.retryable ?? false;
  }
}
