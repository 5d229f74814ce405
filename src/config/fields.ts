// config/fields.ts: typed, error-collecting access to the fields of one raw Kubernetes
// object, and the shared validators (DNS-1123 names, IP addresses, the dataplane-mode
// annotation). Translators in kinds/ use it; it must not log, keep state across objects, or
// touch the kernel or the network.

import { isIP, isIPv4 } from 'node:net';
import type { FieldPath } from './errors.js';
import { ANNOTATION_DATAPLANE_MODE, DATAPLANE_MODES } from './model.js';

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
    return v;
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
      out[k] = val;
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
