// config/translate.ts: the registry of kinds weft reads and the generic half of translation:
// apiVersion/kind dispatch, Lists, metadata.name/namespace rules, freezing, and turning field
// problems into located ConfigErrors. Per-kind rules live in kinds/. It must not read files,
// keep state between calls, or touch the kernel or the network.

import { ConfigError, formatFieldPath, type FieldPath, type PathSegment } from './errors.js';
import {
  describe,
  DNS1123_LABEL_HINT,
  DNS1123_SUBDOMAIN_HINT,
  FieldReader,
  isDns1123Label,
  isDns1123Subdomain,
  isRecord,
} from './fields.js';
import { authorizationPolicyTranslator } from './kinds/authorization-policy.js';
import { endpointSliceTranslator } from './kinds/endpoint-slice.js';
import { namespaceTranslator } from './kinds/namespace.js';
import { nodeTranslator } from './kinds/node.js';
import { peerAuthenticationTranslator } from './kinds/peer-authentication.js';
import { podTranslator } from './kinds/pod.js';
import { serviceTranslator } from './kinds/service.js';
import type { KindTranslator } from './kinds/translator.js';
import type { Logger } from './logger.js';
import {
  DEFAULT_NAMESPACE,
  isKind,
  type Kind,
  type ObjectRef,
  type Origin,
  type TranslatedObject,
} from './model.js';
import type { ParsedDocument } from './parse.js';

/** One translator per kind. New kinds are added here (and in model.ts). */
export const TRANSLATORS: { readonly [K in Kind]: KindTranslator<K> } = {
  Pod: podTranslator,
  Namespace: namespaceTranslator,
  Node: nodeTranslator,
  Service: serviceTranslator,
  EndpointSlice: endpointSliceTranslator,
  AuthorizationPolicy: authorizationPolicyTranslator,
  PeerAuthentication: peerAuthenticationTranslator,
};

export interface TranslateOptions {
  /** Shown in errors and recorded in each object's origin. */
  readonly file?: string;
  /** Source id recorded in each object's origin. */
  readonly source?: string;
  /** Receives debug notes about skipped kinds. */
  readonly logger?: Logger;
}

export interface TranslateResult {
  readonly objects: TranslatedObject[];
  readonly errors: ConfigError[];
  /** Objects present but invalid: a source may keep their last good version. */
  readonly invalid: ObjectRef[];
  /**
   * True when an invalid object could not be identified (no kind, or a missing or malformed
   * name/namespace): a source cannot tell which earlier object it replaces.
   */
  unidentified: boolean;
  /** Objects skipped because weft does not read their kind. */
  ignored: number;
}

type LineOf = (path: FieldPath) => number | undefined;

interface Context {
  readonly opts: TranslateOptions;
  readonly lineOf: LineOf;
  readonly out: TranslateResult;
}

export function emptyTranslateResult(): TranslateResult {
  return { objects: [], errors: [], invalid: [], unidentified: false, ignored: 0 };
}

/** Translates one parsed YAML document (an object or a List). */
export function translateDocument(
  doc: ParsedDocument,
  opts: TranslateOptions = {},
): TranslateResult {
  const out = emptyTranslateResult();
  visit(doc.value, [], undefined, { opts, lineOf: (p) => doc.lineOf(p), out });
  return out;
}

/** Translates one raw object without source positions (e.g. from the Kubernetes API). */
export function translateRaw(raw: unknown, opts: TranslateOptions = {}): TranslateResult {
  const out = emptyTranslateResult();
  visit(raw, [], undefined, { opts, lineOf: () => undefined, out });
  return out;
}

interface Inherited {
  readonly kind: string;
  readonly apiVersion: unknown;
}

function visit(raw: unknown, base: PathSegment[], inherited: Inherited | undefined, ctx: Context) {
  const { out, opts } = ctx;
  const report = (path: FieldPath, message: string, ref?: ObjectRef): void => {
    const line = ctx.lineOf([...base, ...path]);
    out.errors.push(
      new ConfigError({
        ...(opts.file !== undefined && { file: opts.file }),
        ...(line !== undefined && { line }),
        ...(ref !== undefined && { ref }),
        field: formatFieldPath(path),
        message,
      }),
    );
  };

  if (raw === null || raw === undefined) return; // empty document
  if (!isRecord(raw)) {
    report([], `expected a Kubernetes object (a map), got ${describe(raw)}`);
    out.unidentified = true;
    return;
  }

  const kind = raw['kind'] ?? inherited?.kind;
  const apiVersion = raw['apiVersion'] ?? inherited?.apiVersion;
  if (typeof kind !== 'string' || kind === '') {
    report(['kind'], kind === undefined ? 'required' : `expected a string, got ${describe(kind)}`);
    out.unidentified = true;
    return;
  }
  const gv = typeof apiVersion === 'string' ? splitApiVersion(apiVersion) : undefined;

  // Lists: `kind: List` (kubectl) holds typed items; `<Kind>List` (the API) holds bare items.
  if (kind === 'List' && (apiVersion === undefined || apiVersion === 'v1')) {
    visitItems(raw, base, undefined, ctx, report);
    return;
  }
  if (kind.endsWith('List') && kind.length > 4) {
    const itemKind = kind.slice(0, -4);
    if (isKind(itemKind) && gv !== undefined && gv.group === TRANSLATORS[itemKind].group) {
      visitItems(raw, base, { kind: itemKind, apiVersion }, ctx, report);
      return;
    }
  }

  if (!isKind(kind) || (gv !== undefined && gv.group !== TRANSLATORS[kind].group)) {
    out.ignored++;
    opts.logger?.debug(
      {
        ...(opts.file !== undefined && { file: opts.file }),
        line: ctx.lineOf(base),
        kind,
        apiVersion,
      },
      'config: skipping an object of a kind weft does not read',
    );
    return;
  }
  translateKnown(TRANSLATORS[kind], raw, apiVersion, base, ctx, report);
}

function visitItems(
  raw: Readonly<Record<string, unknown>>,
  base: PathSegment[],
  inherited: Inherited | undefined,
  ctx: Context,
  report: (path: FieldPath, message: string, ref?: ObjectRef) => void,
): void {
  const items = raw['items'] ?? [];
  if (!Array.isArray(items)) {
    report(['items'], `expected a list, got ${describe(items)}`);
    ctx.out.unidentified = true;
    return;
  }
  items.forEach((item: unknown, i) => visit(item, [...base, 'items', i], inherited, ctx));
}

function translateKnown<K extends Kind>(
  t: KindTranslator<K>,
  raw: Readonly<Record<string, unknown>>,
  apiVersion: unknown,
  base: readonly PathSegment[],
  ctx: Context,
  report: (path: FieldPath, message: string, ref?: ObjectRef) => void,
): void {
  const { out, opts } = ctx;
  const r = new FieldReader(raw);
  let identified = true;

  const rawName = r.string(['metadata', 'name'], { required: true });
  const name = rawName ?? '';
  if (rawName === undefined) identified = false;
  else if (!isDns1123Subdomain(rawName)) {
    identified = false;
    r.fail(['metadata', 'name'], `${JSON.stringify(rawName)} ${DNS1123_SUBDOMAIN_HINT}`);
  }

  let namespace: string | undefined;
  if (t.namespaced) {
    namespace = r.string(['metadata', 'namespace']) || DEFAULT_NAMESPACE;
    if (!isDns1123Label(namespace)) {
      identified = false;
      r.fail(['metadata', 'namespace'], `${JSON.stringify(namespace)} ${DNS1123_LABEL_HINT}`);
    }
  }
  const ref: ObjectRef =
    namespace === undefined ? { kind: t.kind, name } : { kind: t.kind, namespace, name };

  if (typeof apiVersion !== 'string') {
    if (apiVersion === undefined) r.fail(['apiVersion'], `required (${t.kind} is ${expected(t)})`);
    else r.fail(['apiVersion'], `expected a string, got ${describe(apiVersion)}`);
  } else if (!t.versions.includes(splitApiVersion(apiVersion).version)) {
    r.fail(
      ['apiVersion'],
      `${JSON.stringify(apiVersion)} is not supported for ${t.kind} (expected ${expected(t)})`,
    );
  }

  const value = t.translate(r, namespace === undefined ? { name } : { name, namespace });

  for (const p of r.problems) report(p.path, p.message, ref);
  if (!identified) {
    out.unidentified = true;
    return;
  }
  if (!r.ok) {
    out.invalid.push(ref);
    return;
  }
  const line = ctx.lineOf(base);
  const origin: Origin = Object.freeze({
    ...(opts.source !== undefined && { source: opts.source }),
    ...(opts.file !== undefined && { file: opts.file }),
    ...(line !== undefined && { line }),
  });
  // K is one member of the Kind union here; TypeScript cannot relate the generic object to
  // the distributed union, hence the cast.
  out.objects.push(
    Object.freeze({
      kind: t.kind,
      ref: Object.freeze(ref),
      value: Object.freeze(value),
      origin,
    }) as unknown as TranslatedObject,
  );
}

function expected(t: KindTranslator<Kind>): string {
  return t.versions.map((v) => (t.group === '' ? v : `${t.group}/${v}`)).join(' or ');
}

function splitApiVersion(apiVersion: string): { group: string; version: string } {
  const slash = apiVersion.lastIndexOf('/');
  return slash < 0
    ? { group: '', version: apiVersion }
    : { group: apiVersion.slice(0, slash), version: apiVersion.slice(slash + 1) };
}
