// policy/ip.ts: IP addresses and CIDR blocks for L4 authorization (ipBlocks, remoteIpBlocks,
// `source.ip` / `destination.ip` conditions). policy/ decides allow/deny from a connection's
// facts and the policies; it must not do I/O, hold sockets, or log per connection (it returns
// reasons; callers log). Pure functions, no dependencies: IPv4 is a uint32, IPv6 a bigint, and
// an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack socket reports) is IPv4.

/** A parsed address. */
export type Ip =
  { readonly family: 4; readonly v4: number } | { readonly family: 6; readonly v6: bigint };

/** A parsed CIDR block; `base` already has its host bits cleared. */
export type Cidr =
  | { readonly family: 4; readonly base: number; readonly mask: number }
  | { readonly family: 6; readonly base: bigint; readonly mask: bigint };

const V6_ALL = (1n << 128n) - 1n;
const V4_MAPPED_PREFIX = 0xffffn << 32n;

/** Parses a dotted quad (no leading zeros, as Go's net.ParseIP); -1 when it is not one. */
export function parseIPv4(s: string): number {
  const n = s.length;
  if (n < 7 || n > 15) return -1;
  let value = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 46 /* . */) {
      if (digits === 0 || dots === 3) return -1;
      value = value * 256 + octet;
      octet = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && octet === 0) return -1; // leading zero
      octet = octet * 10 + (c - 48);
      if (octet > 255) return -1;
      digits++;
    } else {
      return -1;
    }
  }
  if (dots !== 3 || digits === 0) return -1;
  return value * 256 + octet;
}

/** Parses an IPv6 address (with `::`, an embedded dotted quad, a `%zone`); undefined if invalid. */
export function parseIPv6(input: string): bigint | undefined {
  let s = input;
  const zone = s.indexOf('%');
  if (zone !== -1) s = s.slice(0, zone);
  if (s === '') return undefined;
  const halves = s.split('::');
  if (halves.length > 2) return undefined;
  const groups = (part: string): number[] | undefined => {
    if (part === '') return [];
    const out: number[] = [];
    const pieces = part.split(':');
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i]!;
      if (i === pieces.length - 1 && p.includes('.')) {
        const v4 = parseIPv4(p);
        if (v4 < 0) return undefined;
        out.push(Math.floor(v4 / 65536), v4 % 65536);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(p)) return undefined;
        out.push(parseInt(p, 16));
      }
    }
    return out;
  };
  const head = groups(halves[0]!);
  if (head === undefined) return undefined;
  let all: number[];
  if (halves.length === 2) {
    const tail = groups(halves[1]!);
    if (tail === undefined || head.length + tail.length > 7) return undefined;
    all = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  } else {
    if (head.length !== 8) return undefined;
    all = head;
  }
  let v = 0n;
  for (const g of all) v = (v << 16n) | BigInt(g);
  return v;
}

/** Parses an address; an IPv4-mapped IPv6 address becomes IPv4. Undefined when invalid. */
export function parseIp(s: string): Ip | undefined {
  if (!s.includes(':')) {
    const v4 = parseIPv4(s);
    return v4 < 0 ? undefined : { family: 4, v4 };
  }
  const v6 = parseIPv6(s);
  if (v6 === undefined) return undefined;
  if (v6 >> 32n === 0xffffn) return { family: 4, v4: Number(v6 & 0xffffffffn) };
  return { family: 6, v6 };
}

/** Parses `addr/len` or a bare address (a /32 or /128). Host bits are masked off, as Go does. */
export function parseCidr(s: string): Cidr | undefined {
  const slash = s.indexOf('/');
  const addr = slash === -1 ? s : s.slice(0, slash);
  const lenText = slash === -1 ? undefined : s.slice(slash + 1);
  if (lenText !== undefined && !/^(0|[1-9][0-9]{0,2})$/.test(lenText)) return undefined;
  const ip = parseIp(addr);
  if (ip === undefined) return undefined;
  // A dotted quad inside an IPv6 literal keeps IPv6 prefix lengths (`::ffff:10.0.0.0/104`).
  const mapped = ip.family === 4 && addr.includes(':');
  if (ip.family === 4 && !mapped) {
    const len = lenText === undefined ? 32 : Number(lenText);
    if (len > 32) return undefined;
    const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
    return { family: 4, base: (ip.v4 & mask) >>> 0, mask };
  }
  const len = lenText === undefined ? 128 : Number(lenText);
  if (len > 128) return undefined;
  if (mapped && len >= 96) {
    const len4 = len - 96;
    const mask = len4 === 0 ? 0 : (0xffffffff << (32 - len4)) >>> 0;
    return { family: 4, base: ((ip as { v4: number }).v4 & mask) >>> 0, mask };
  }
  const v6 = ip.family === 6 ? ip.v6 : V4_MAPPED_PREFIX | BigInt(ip.v4);
  const mask = len === 0 ? 0n : (V6_ALL << BigInt(128 - len)) & V6_ALL;
  return { family: 6, base: v6 & mask, mask };
}

export function cidrContains(cidr: Cidr, ip: Ip): boolean {
  if (cidr.family === 4) return ip.family === 4 && (ip.v4 & cidr.mask) >>> 0 === cidr.base;
  return ip.family === 6 && (ip.v6 & cidr.mask) === cidr.base;
}

export function anyCidrContains(cidrs: readonly Cidr[], ip: Ip | undefined): boolean {
  if (ip === undefined) return false;
  for (const c of cidrs) if (cidrContains(c, ip)) return true;
  return false;
}
