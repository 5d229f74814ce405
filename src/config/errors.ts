// config/errors.ts: ConfigError, the located, human-readable report of an invalid object or
// an unreadable file. It is a value that sources collect and callers print, not an exception;
// this module must not log or decide what happens on error.

import { formatRef, type ObjectRef } from './model.js';

/** One segment of a field path: an object key or an array index. */
export type PathSegment = string | number;
export type FieldPath = readonly PathSegment[];

const IDENT = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

/** JSON-path-like rendering: `status.podIPs[0].ip`, `metadata.annotations["weft.io/x"]`. */
export function formatFieldPath(path: FieldPath): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (IDENT.test(seg)) out += out === '' ? seg : `.${seg}`;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out;
}

export interface ConfigErrorInit {
  file?: string;
  /** 1-based. */
  line?: number;
  ref?: ObjectRef;
  field?: string;
  message: string;
}

export class ConfigError {
  readonly file?: string;
  readonly line?: number;
  readonly ref?: ObjectRef;
  readonly field?: string;
  readonly message: string;

  constructor(init: ConfigErrorInit) {
    if (init.file !== undefined) this.file = init.file;
    if (init.line !== undefined) this.line = init.line;
    if (init.ref !== undefined) this.ref = init.ref;
    if (init.field !== undefined && init.field !== '') this.field = init.field;
    this.message = init.message;
  }

  /** `pods.yaml:14: Pod default/web: status.podIP: "10.0.0.300" is not an IPv4 address` */
  toString(): string {
    const parts: string[] = [];
    if (this.file !== undefined) {
      parts.push(this.line !== undefined ? `${this.file}:${this.line}` : this.file);
    }
    if (this.ref !== undefined) parts.push(formatRef(this.ref));
    if (this.field !== undefined) parts.push(this.field);
    parts.push(this.message);
    return parts.join(': ');
  }

  toJSON(): ConfigErrorInit & { text: string } {
    return {
      ...(this.file !== undefined && { file: this.file }),
      ...(this.line !== undefined && { line: this.line }),
      ...(this.ref !== undefined && { ref: this.ref }),
      ...(this.field !== undefined && { field: this.field }),
      message: this.message,
      text: this.toString(),
    };
  }
}
