// config/fields.ts: typed, error-collecting access to the fields of one raw Kubernetes
// object, and the shared validators (DNS-1123 names, IP addresses and CIDRs, ports, the
// dataplane-mode annotation). Translators in kinds/ use it; it must not log, keep state across
// objects (beyond strings.ts's table of shared strings), or touch the kernel or the network.
// The strings it returns are strings.ts's own copies, never slices of the raw text.

import { isIP, isIPv4 } from 'node:net';
import type { FieldPath } from './errors.js';
import { ANNOTATION_DATAPLANE_MODE, DATAPLANE_MODES } from './model.js';
import { ownString } from './strings.js';

export type RawObject = Readonly<Record<string, unknown>>;

export interface FieldProblem {
  readonly path: FieldPath;
  readonly message: string;
}

export function isRecord(v: unknown): v is RawObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `a string "x"`, `number 5`, `a list`, `a map`, `null`. */
export function describe(v: unknown): string {
  if (v === null || v === undefined) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a map';
  if (typeof v === 'string') return `a string ${JSON.stringify(v)}`;
  return `${typeof v} ${String(v)}`;
}

/** Reads fields of one object; every problem is recorded with its path, never thrown. */
export class FieldReader {
  readonly problems: FieldProblem[] = [];
  private readonly seen = new Set<string>();

  constructor(readonly root: RawObject) {}

  fail(path: FieldPath, message: string): void {
    const key = `${JSON.stringify(path)}\0${message}`;
    if (this.seen.has(key)) return;
    this.seen.add(key);
    this.problems.push({ path, message });
  }

  /** True when a problem was already recorded on a parent of `path` (e.g. a wrong type). */
  private parentFailed(path: FieldPath): boolean {
    return this.problems.some(
      (p) => p.path.length < path.length && p.path.every((seg, i) => seg === path[i]),
    );
  }

  get ok(): boolean {
    return this.problems.length === 0;
  }

  /** The value at `path`; undefined when absent or null. A non-map parent is reported. */
  get(path: FieldPath): unknown {
    let cur: unknown = this.root;
    for (let i = 0; i < path.length; i++) {
      const seg = path[i]!;
      if (cur === null || cur === undefined) return undefined;
      if (typeof seg === 'number') {
        if (!Array.isArray(cur)) {
          this.fail(path.slice(0, i), `expected a list, got ${describe(cur)}`);
          return undefined;
        }
        cur = cur[seg];
      } else {
        if (!isRecord(cur)) {
          this.fail(path.slice(0, i), `expected a map, got ${describe(cur)}`);
          return undefined;
        }
        cur = Object.prototype.hasOwnProperty.call(cur, seg) ? cur[seg] : undefined;
      }
    }
    return cur === null ? undefined : cur;
  }

  string(path: FieldPath, required?: { required: true; hint?: string }): string | undefined {
    const v = this.get(path);
    if (v === undefined) {
      if (required && !this.parentFailed(path)) {
        this.fail(path, required.hint ? `required ${required.hint}` : 'required');
      }
      return undefined;
    }
    if (typeof v !== 'string') {
      this.fail(path, `expected a string, got ${describe(v)}`);
      return undefined;
    }
    if (required && v === '') {
      this.fail(path, 'must not be empty');
      return undefined;
    }
    return ownString(v);
  }

  boolean(path: FieldPath): boolean | undefined {
    const v = this.get(path);
    if (v === undefined) return undefined;
    if (typeof v !== 'boolean') {
      this.fail(path, `expected true or false, got ${describe(v)}`);
      return undefined;
    }
    return v;
  }

  list(path: FieldPath): readonly unknown[] | undefined {
    const v = this.get(path);
    if (v === undefined) return undefined;
    if (!Array.isArray(v)) {
      this.fail(path, `expected a list, got ${describe(v)}`);
      return undefined;
    }
    return v;
  }

  /** The map at `path`; undefined when absent. Anything else is reported. */
  map(path: FieldPath): RawObject | undefined {
    const v = this.get(path);
    if (v === undefined) return undefined;
    if (!isRecord(v)) {
      this.fail(path, `expected a map, got ${describe(v)}`);
      return undefined;
    }
    return v;
  }

  integer(path: FieldPath): number | undefined {
    const v = this.get(path);
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isInteger(v)) {
      this.fail(path, `expected an integer, got ${describe(v)}`);
      return undefined;
    }
    return v;
  }

  /** A port number, 1-65535. */
  port(path: FieldPath, required?: { required: true }): number | undefined {
    const v = this.get(path);
    if (v === undefined) {
      if (required && !this.parentFailed(path)) this.fail(path, 'required');
      return undefined;
    }
    if (typeof v !== 'number' || !Number.isInteger(v)) {
      this.fail(path, `expected a port number, got ${describe(v)}`);
      return undefined;
    }
    if (!isPortNumber(v)) {
      this.fail(path, `${v} ${PORT_RANGE_HINT}`);
      return undefined;
    }
    return v;
  }

  /** A string among `allowed`; `what` names it in the message (`an action`). */
  oneOf<T extends string>(path: FieldPath, allowed: readonly T[], what: string): T | undefined {
    const v = this.string(path);
    if (v === undefined) return undefined;
    if (!(allowed as readonly string[]).includes(v)) {
      this.fail(path, `${JSON.stringify(v)} is not ${what} (expected ${alternatives(allowed)})`);
      return undefined;
    }
    return v as T;
  }

  /**
   * A list of strings; undefined when absent. Each item is checked by `check` (which returns a
   * message for a bad item); empty strings are refused. Frozen.
   */
  stringList(
    path: FieldPath,
    check?: (item: string) => string | undefined,
  ): readonly string[] | undefined {
    const list = this.list(path);
    if (list === undefined) return undefined;
    const out: string[] = [];
    list.forEach((item, i) => {
      const at = [...path, i];
      if (typeof item !== 'string') {
        const quote = typeof item === 'number' || typeof item === 'boolean' ? ' (quote it)' : '';
        this.fail(at, `expected a string, got ${describe(item)}${quote}`);
        return;
      }
      const problem = item === '' ? 'must not be empty' : check?.(item);
      if (problem !== undefined) this.fail(at, problem);
      else out.push(ownString(item));
    });
    return Object.freeze(out);
  }

  /** Reports every key of the map at `path` that is not in `known` (a schema's fields). */
  onlyFields(path: FieldPath, known: readonly string[]): void {
    const v = this.get(path);
    if (!isRecord(v)) return;
    for (const key of Object.keys(v)) {
      if (known.includes(key)) continue;
      const guess = closest(key, known);
      this.fail(
        [...path, key],
        guess !== undefined
          ? `unknown field (did you mean "${guess}"?)`
          : `unknown field (expected ${alternatives(known)})`,
      );
    }
  }

  /** A string -> string map (labels, annotations); {} when absent. Frozen. */
  stringMap(path: FieldPath): Readonly<Record<string, string>> {
    const v = this.get(path);
    const out: Record<string, string> = {};
    if (v === undefined) return Object.freeze(out);
    if (!isRecord(v)) {
      this.fail(path, `expected a map of strings, got ${describe(v)}`);
      return Object.freeze(out);
    }
    for (const [k, val] of Object.entries(v)) {
      if (typeof val !== 'string') {
        this.fail([...path, k], `value must be a string, got ${describe(val)} (quote it)`);
        continue;
      }
      out[k] = ownString(val);
    }
    return Object.freeze(out);
  }
}

const LABEL = '[a-z0-9]([-a-z0-9]*[a-z0-9])?';
const DNS1123_LABEL = new RegExp(`^${LABEL}$`);
const DNS1123_SUBDOMAIN = new RegExp(`^${LABEL}(\\.${LABEL})*$`);

/** Namespace names: lowercase alphanumerics and '-', at most 63 characters. */
export function isDns1123Label(s: string): boolean {
  return s.length <= 63 && DNS1123_LABEL.test(s);
}

/** Pod, Node, ServiceAccount names: DNS-1123 labels joined by '.', at most 253 characters. */
export function isDns1123Subdomain(s: string): boolean {
  return s.length <= 253 && DNS1123_SUBDOMAIN.test(s);
}

export const DNS1123_LABEL_HINT =
  'is not a valid DNS-1123 label (lowercase letters, digits and "-", starting and ending with a letter or digit, at most 63 characters)';
export const DNS1123_SUBDOMAIN_HINT =
  'is not a valid DNS-1123 subdomain (lowercase letters, digits, "-" and ".", starting and ending with a letter or digit, at most 253 characters)';

/** Strict dotted-quad IPv4 (no leading zeros, no spaces). */
export function isIPv4Address(s: string): boolean {
  return isIPv4(s);
}

export function isIPAddress(s: string): boolean {
  return isIP(s) !== 0;
}

/** Reports an unknown `weft.io/dataplane-mode` value (Pod and Namespace). */
export function checkDataplaneMode(
  r: FieldReader,
  annotations: Readonly<Record<string, string>>,
): void {
  const mode = annotations[ANNOTATION_DATAPLANE_MODE];
  if (mode === undefined) return;
  if (!(DATAPLANE_MODES as readonly string[]).includes(mode)) {
    r.fail(
      ['metadata', 'annotations', ANNOTATION_DATAPLANE_MODE],
      `${JSON.stringify(mode)} is not a dataplane mode (expected ${DATAPLANE_MODES.join(' or ')})`,
    );
  }
}

/** `a or b`, `one of a, b, c`. */
export function alternatives(values: readonly string[]): string {
  if (values.length <= 2) return values.join(' or ');
  return `one of ${values.join(', ')}`;
}

/** The known name a mistyped field most likely meant (case, a letter or two off). */
function closest(key: string, known: readonly string[]): string | undefined {
  const lower = key.toLowerCase();
  let best: string | undefined;
  let bestDistance = Math.max(1, Math.floor(key.length / 4)) + 1; // a letter per 4, at least 1
  for (const k of known) {
    const d = k.toLowerCase() === lower ? 0 : editDistance(lower, k.toLowerCase(), bestDistance);
    if (d < bestDistance) {
      best = k;
      bestDistance = d;
    }
  }
  return best;
}

/** Levenshtein distance, or `limit` when it is at least `limit`. */
function editDistance(a: string, b: string, limit: number): number {
  if (Math.abs(a.length - b.length) >= limit) return limit;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    let rowMin = i;
    for (let j = 1; j <= b.length; j++) {
      const v = Math.min(
        prev[j]! + 1,
        cur[j - 1]! + 1,
        prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
      cur.push(v);
      rowMin = Math.min(rowMin, v);
    }
    if (rowMin >= limit) return limit;
    prev = cur;
  }
  return Math.min(prev[b.length]!, limit);
}

export const PORT_RANGE_HINT = 'is not a valid port number (expected 1-65535)';

export function isPortNumber(n: number): boolean {
  return Number.isInteger(n) && n >= 1 && n <= 65535;
}

/** A port written as a string of digits, 1-65535 (Istio policy ports). */
export function isPortString(s: string): boolean {
  return /^[0-9]{1,5}$/.test(s) && isPortNumber(Number(s));
}

/** An IPv4 or IPv6 address, or a CIDR block of either (`10.0.0.0/8`, `fd00::/8`). */
export function isIPOrCidr(s: string): boolean {
  const slash = s.indexOf('/');
  if (slash < 0) return isIP(s) !== 0;
  const family = isIP(s.slice(0, slash));
  const bits = s.slice(slash + 1);
  if (family === 0 || !/^[0-9]{1,3}$/.test(bits)) return false;
  return Number(bits) <= (family === 4 ? 32 : 128);
}

const IANA_SVC_NAME = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

/** A named port (IANA_SVC_NAME): at most 15 characters, a-z 0-9 '-', a letter, no '--'. */
export function isPortName(s: string): boolean {
  return s.length <= 15 && IANA_SVC_NAME.test(s) && /[a-z]/.test(s) && !s.includes('--');
}

export const PORT_NAME_HINT =
  'is not a valid port name (at most 15 lowercase letters, digits and "-", with at least one letter)';
