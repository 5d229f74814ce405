// policy/compile.ts: turns one Istio AuthorizationPolicy into the L4 form the node proxy
// evaluates, and matches that form against one connection. policy/ decides allow/deny from a
// connection's facts and the policies; it must not do I/O, hold sockets, or log per connection
// (it returns reasons; callers log).
//
// What the node proxy cannot enforce (DESIGN "Policy and balancing"):
// - L7-only fields (requestPrincipals, hosts, methods, paths, `when` on request.* and any key
//   other than the L4 ones below) and values that do not parse (a CIDR, a port): an ALLOW
//   rule holding one never matches; in a DENY rule the field (or `when` condition) is dropped,
//   which only widens the rule, and a rule with nothing left matches all the L4 traffic the
//   policy covers (fail closed; ztunnel's code ignores such a rule instead). Each such policy
//   comes back as a note for the caller to log once.
// - mTLS-only fields (principals, namespaces, their not* forms, `source.principal`,
//   `source.namespace`) on a plaintext connection: a positive form never matches (Istio). A
//   not* form is compared to the missing value, as Envoy and ztunnel do, in a DENY rule (so
//   `DENY notPrincipals: [a]` denies plaintext), but never matches in an ALLOW rule (so
//   `ALLOW notNamespaces: [foo]` does not let plaintext in: the bypass ISTIO-SECURITY-2021-004
//   warns about). Either way the decision errs towards denial.

import type {
  AuthorizationPolicy,
  PolicyCondition,
  PolicyOperation,
  PolicyRule,
  PolicySource,
} from '../config/mesh-model.js';
import { anyCidrContains, parseCidr, parseIp, type Cidr, type Ip } from './ip.js';

/** Istio's string match: `*` (any non-empty), `x*` (prefix), `*x` (suffix), or exact. */
export interface StringMatcher {
  readonly kind: 'presence' | 'exact' | 'prefix' | 'suffix';
  /** '' for presence. */
  readonly value: string;
}

// Compiled objects always carry every key (undefined when absent), in one order, so that the
// matching code below sees one object shape per type (monomorphic property access).

interface CompiledSource {
  readonly principals: readonly StringMatcher[] | undefined;
  readonly notPrincipals: readonly StringMatcher[] | undefined;
  readonly namespaces: readonly StringMatcher[] | undefined;
  readonly notNamespaces: readonly StringMatcher[] | undefined;
  /** ipBlocks and remoteIpBlocks: both are the peer's address at L4; each must match. */
  readonly ipBlocks: readonly (readonly Cidr[])[];
  readonly notIpBlocks: readonly (readonly Cidr[])[];
}

interface CompiledOperation {
  readonly ports: readonly number[] | undefined;
  readonly notPorts: readonly number[] | undefined;
}

type CompiledCondition =
  | {
      readonly type: 'ip';
      readonly key: 'source.ip' | 'remote.ip' | 'destination.ip';
      readonly values: undefined | readonly Cidr[];
      readonly notValues: undefined | readonly Cidr[];
    }
  | {
      readonly type: 'string';
      readonly key: 'source.principal' | 'source.namespace';
      readonly values: undefined | readonly StringMatcher[];
      readonly notValues: undefined | readonly StringMatcher[];
    }
  | {
      readonly type: 'port';
      readonly key: 'destination.port';
      readonly values: undefined | readonly number[];
      readonly notValues: undefined | readonly number[];
    };

interface CompiledRule {
  /** 0-based index in the policy's spec.rules (for reasons). */
  readonly index: number;
  readonly from: readonly CompiledSource[] | undefined;
  readonly to: readonly CompiledOperation[] | undefined;
  readonly when: readonly CompiledCondition[];
}

export interface CompiledPolicy {
  /** `<namespace>/<name>`. */
  readonly key: string;
  readonly namespace: string;
  readonly action: 'ALLOW' | 'DENY';
  /** matchLabels; undefined (or empty in the spec) selects every workload in scope. */
  readonly selector: Readonly<Record<string, string>> | undefined;
  /** Rules that can match at L4 (ALLOW rules holding L7 fields are left out). */
  readonly rules: readonly CompiledRule[];
  /** Precomputed decision reasons, so evaluation does not build strings. */
  readonly reason: string;
}

/** What compile() could not enforce as written, for the caller to log once. */
export interface CompileNotes {
  /** L7 fields: DENY rules widened, ALLOW rules that never match. */
  readonly partial: string[];
  /** Values that do not parse or conditions without values; handled like L7 fields. */
  readonly invalid: string[];
}

/** A peer identity as rules see it. */
export interface Peer {
  /** Istio principal: the SPIFFE ID without `spiffe://`. */
  readonly principal: string;
  /** Namespace from the principal; '' for an ID without Istio's `/ns/<ns>/sa/<sa>` shape. */
  readonly namespace: string;
}

export function parsePeer(identity: string): Peer {
  const principal = identity.startsWith('spiffe://') ? identity.slice(9) : identity;
  return { principal, namespace: istioNamespace(principal) };
}

/** The facts of one connection that rules match against; built once per evaluation. */
export class MatchContext {
  /** Undefined for plaintext. */
  readonly principal: string | undefined;
  readonly namespace: string | undefined;
  private dstIpParsed = false;
  private dstIpValue: Ip | undefined;

  constructor(
    peer: Peer | undefined,
    readonly sourceIp: Ip,
    readonly port: number,
    private readonly dstIpText: string,
  ) {
    this.principal = peer?.principal;
    this.namespace = peer?.namespace;
  }

  get destinationIp(): Ip | undefined {
    if (!this.dstIpParsed) {
      this.dstIpValue = parseIp(this.dstIpText);
      this.dstIpParsed = true;
    }
    return this.dstIpValue;
  }
}

/** `<td>/ns/<ns>/sa/<sa>` -> `<ns>`; '' when the principal does not have Istio's shape. */
export function istioNamespace(principal: string): string {
  const a = principal.indexOf('/ns/');
  if (a === -1) return '';
  const start = a + 4;
  const b = principal.indexOf('/sa/', start);
  if (b <= start || principal.indexOf('/', start) !== b) return '';
  const sa = principal.slice(b + 4);
  if (sa === '' || sa.includes('/') || principal.slice(0, a).includes('/')) return '';
  return principal.slice(start, b);
}

export function parseStringMatcher(v: string): StringMatcher {
  if (v === '*') return { kind: 'presence', value: '' };
  if (v.startsWith('*')) return { kind: 'suffix', value: v.slice(1) };
  if (v.endsWith('*')) return { kind: 'prefix', value: v.slice(0, -1) };
  return { kind: 'exact', value: v };
}

function stringMatches(m: StringMatcher, s: string): boolean {
  switch (m.kind) {
    case 'presence':
      return s !== '';
    case 'exact':
      return s === m.value;
    case 'prefix':
      return s.startsWith(m.value);
    case 'suffix':
      return s.endsWith(m.value);
  }
}

function anyString(ms: readonly StringMatcher[], s: string): boolean {
  for (const m of ms) if (stringMatches(m, s)) return true;
  return false;
}

/**
 * A principal pattern whose trust domain is `cluster.local` names the local trust domain
 * (Istio's trust-domain handling); patterns starting with `*` are left alone.
 */
function principalMatcher(v: string, trustDomain: string): StringMatcher {
  const local = 'cluster.local/';
  const text =
    trustDomain !== 'cluster.local' && v.startsWith(local)
      ? `${trustDomain}/${v.slice(local.length)}`
      : v;
  return parseStringMatcher(text);
}

function parsePort(v: string): number | undefined {
  if (!/^[0-9]{1,5}$/.test(v)) return undefined;
  const n = Number(v);
  return n <= 65535 ? n : undefined;
}

/** Each parser returns undefined for a value it rejects. */
function parseAll<T>(
  values: readonly string[],
  parse: (v: string) => T | undefined,
): T[] | undefined {
  const out: T[] = [];
  for (const v of values) {
    const p = parse(v);
    if (p === undefined) return undefined;
    out.push(p);
  }
  return out;
}

const SOURCE_L4_FIELDS = new Set([
  'principals',
  'notPrincipals',
  'namespaces',
  'notNamespaces',
  'ipBlocks',
  'notIpBlocks',
  'remoteIpBlocks',
  'notRemoteIpBlocks',
]);
const OPERATION_L4_FIELDS = new Set(['ports', 'notPorts']);
const L4_CONDITION_KEYS = new Set([
  'source.ip',
  'remote.ip',
  'destination.ip',
  'source.principal',
  'source.namespace',
  'destination.port',
]);

function present(list: readonly string[] | undefined): list is readonly string[] {
  return list !== undefined && list.length > 0;
}

/** Collects what one rule holds that L4 cannot enforce as written. */
class RuleProblems {
  readonly l7: string[] = [];
  readonly invalid: string[] = [];
}

function compileSource(
  src: PolicySource,
  where: string,
  trustDomain: string,
  problems: RuleProblems,
): CompiledSource {
  const record = src as unknown as Record<string, unknown>;
  for (const field of Object.keys(record)) {
    const v = record[field];
    if (SOURCE_L4_FIELDS.has(field) || v === undefined) continue;
    if (Array.isArray(v) && v.length === 0) continue;
    problems.l7.push(`${where}.${field}`);
  }
  const strings = (
    field: 'principals' | 'notPrincipals' | 'namespaces' | 'notNamespaces',
  ): StringMatcher[] | undefined => {
    const list = src[field];
    if (!present(list)) return undefined;
    return field === 'principals' || field === 'notPrincipals'
      ? list.map((v) => principalMatcher(v, trustDomain))
      : list.map(parseStringMatcher);
  };
  const cidrs = (
    field: 'ipBlocks' | 'notIpBlocks' | 'remoteIpBlocks' | 'notRemoteIpBlocks',
  ): Cidr[] | undefined => {
    const list = src[field];
    if (!present(list)) return undefined;
    const parsed = parseAll(list, parseCidr);
    if (parsed === undefined) {
      const bad = list.filter((v) => parseCidr(v) === undefined);
      problems.invalid.push(`${where}.${field} ${bad.map((b) => JSON.stringify(b)).join(', ')}`);
    }
    return parsed;
  };
  const ipBlocks: Cidr[][] = [];
  const notIpBlocks: Cidr[][] = [];
  for (const f of ['ipBlocks', 'remoteIpBlocks'] as const) {
    const c = cidrs(f);
    if (c !== undefined) ipBlocks.push(c);
  }
  for (const f of ['notIpBlocks', 'notRemoteIpBlocks'] as const) {
    const c = cidrs(f);
    if (c !== undefined) notIpBlocks.push(c);
  }
  return {
    principals: strings('principals'),
    notPrincipals: strings('notPrincipals'),
    namespaces: strings('namespaces'),
    notNamespaces: strings('notNamespaces'),
    ipBlocks,
    notIpBlocks,
  };
}

function compileOperation(
  op: PolicyOperation,
  where: string,
  problems: RuleProblems,
): CompiledOperation {
  const record = op as unknown as Record<string, unknown>;
  for (const field of Object.keys(record)) {
    const v = record[field];
    if (OPERATION_L4_FIELDS.has(field) || v === undefined) continue;
    if (Array.isArray(v) && v.length === 0) continue;
    problems.l7.push(`${where}.${field}`);
  }
  const out: { ports: number[] | undefined; notPorts: number[] | undefined } = {
    ports: undefined,
    notPorts: undefined,
  };
  for (const field of ['ports', 'notPorts'] as const) {
    const list = op[field];
    if (!present(list)) continue;
    const parsed = parseAll(list, parsePort);
    if (parsed === undefined) {
      const bad = list.filter((v) => parsePort(v) === undefined);
      problems.invalid.push(`${where}.${field} ${bad.map((b) => JSON.stringify(b)).join(', ')}`);
    } else {
      out[field] = parsed;
    }
  }
  return out;
}

function compileCondition(
  c: PolicyCondition,
  where: string,
  trustDomain: string,
  problems: RuleProblems,
): CompiledCondition | undefined {
  if (!L4_CONDITION_KEYS.has(c.key)) {
    problems.l7.push(`${where} ${c.key}`);
    return undefined;
  }
  const values = present(c.values) ? c.values : undefined;
  const notValues = present(c.notValues) ? c.notValues : undefined;
  if (values === undefined && notValues === undefined) {
    problems.invalid.push(`${where} ${c.key} has neither values nor notValues`);
    return undefined;
  }
  const parse = <T>(
    parser: (v: string) => T | undefined,
  ): { values: T[] | undefined; notValues: T[] | undefined } | undefined => {
    const out: { values: T[] | undefined; notValues: T[] | undefined } = {
      values: undefined,
      notValues: undefined,
    };
    for (const [field, list] of [
      ['values', values],
      ['notValues', notValues],
    ] as const) {
      if (list === undefined) continue;
      const parsed = parseAll(list, parser);
      if (parsed === undefined) {
        const bad = list.filter((v) => parser(v) === undefined);
        problems.invalid.push(
          `${where} ${c.key} ${field} ${bad.map((b) => JSON.stringify(b)).join(', ')}`,
        );
        return undefined;
      }
      out[field] = parsed;
    }
    return out;
  };
  switch (c.key) {
    case 'source.ip':
    case 'remote.ip':
    case 'destination.ip': {
      const p = parse(parseCidr);
      return p && { type: 'ip', key: c.key, values: p.values, notValues: p.notValues };
    }
    case 'destination.port': {
      const p = parse(parsePort);
      return p && { type: 'port', key: c.key, values: p.values, notValues: p.notValues };
    }
    case 'source.principal': {
      const p = parse((v) => principalMatcher(v, trustDomain));
      return p && { type: 'string', key: c.key, values: p.values, notValues: p.notValues };
    }
    default: {
      const p = parse(parseStringMatcher);
      return (
        p && {
          type: 'string',
          key: 'source.namespace',
          values: p.values,
          notValues: p.notValues,
        }
      );
    }
  }
}

function sourceIsEmpty(s: CompiledSource): boolean {
  return (
    s.principals === undefined &&
    s.notPrincipals === undefined &&
    s.namespaces === undefined &&
    s.notNamespaces === undefined &&
    s.ipBlocks.length === 0 &&
    s.notIpBlocks.length === 0
  );
}

function compileRule(
  rule: PolicyRule,
  index: number,
  trustDomain: string,
  problems: RuleProblems,
): CompiledRule {
  const out: {
    index: number;
    from: CompiledSource[] | undefined;
    to: CompiledOperation[] | undefined;
    when: CompiledCondition[];
  } = { index, from: undefined, to: undefined, when: [] };
  const record = rule as unknown as Record<string, unknown>;
  for (const field of Object.keys(record)) {
    if (field !== 'from' && field !== 'to' && field !== 'when' && record[field] !== undefined)
      problems.l7.push(field);
  }
  if (rule.from !== undefined && rule.from.length > 0)
    out.from = rule.from.map((s, i) => compileSource(s, `from[${i}]`, trustDomain, problems));
  if (rule.to !== undefined && rule.to.length > 0)
    out.to = rule.to.map((o, i) => compileOperation(o, `to[${i}]`, problems));
  for (const [i, c] of (rule.when ?? []).entries()) {
    const compiled = compileCondition(c, `when[${i}]`, trustDomain, problems);
    if (compiled !== undefined) out.when.push(compiled);
  }
  return out;
}

/** True when the rule has no constraint left (after dropping what L4 cannot enforce). */
function matchesEverything(r: CompiledRule): boolean {
  const fromAll = r.from === undefined || r.from.some(sourceIsEmpty);
  const toAll =
    r.to === undefined || r.to.some((o) => o.ports === undefined && o.notPorts === undefined);
  return fromAll && toAll && r.when.length === 0;
}

/**
 * Compiles an ALLOW or DENY policy (the caller filters out AUDIT, CUSTOM and targetRefs).
 * Never throws: what cannot be enforced as written is described in `notes`.
 */
export function compilePolicy(
  policy: AuthorizationPolicy,
  trustDomain: string,
  notes: CompileNotes,
): CompiledPolicy {
  const action = policy.action === 'DENY' ? 'DENY' : 'ALLOW';
  const key = `${policy.namespace}/${policy.name}`;
  const rules: CompiledRule[] = [];
  for (const [i, rule] of policy.rules.entries()) {
    const problems = new RuleProblems();
    // Fields that cannot be enforced are left out of the compiled form (compileSource and
    // friends skip them), which is exactly "drop the field" for DENY.
    const compiled = compileRule(rule, i, trustDomain, problems);
    const trouble = problems.l7.length + problems.invalid.length > 0;
    if (action === 'ALLOW' && trouble) {
      if (problems.l7.length > 0)
        notes.partial.push(
          `ALLOW rules[${i}] never matches at the node proxy: ${problems.l7.join(', ')} ${
            problems.l7.length === 1 ? 'needs' : 'need'
          } L7 (a waypoint)`,
        );
      if (problems.invalid.length > 0)
        notes.invalid.push(
          `ALLOW rules[${i}] never matches: invalid ${problems.invalid.join('; ')}`,
        );
      continue;
    }
    if (trouble) {
      const outcome = matchesEverything(compiled)
        ? 'nothing remains at L4, so it denies all traffic to the workloads the policy selects (fail closed)'
        : 'it is enforced on its L4 remainder';
      if (problems.l7.length > 0)
        notes.partial.push(
          `DENY rules[${i}]: ${problems.l7.join(', ')} not enforceable at L4; ${outcome}`,
        );
      if (problems.invalid.length > 0)
        notes.invalid.push(
          `DENY rules[${i}]: dropped invalid ${problems.invalid.join('; ')}; ${outcome}`,
        );
    }
    rules.push(compiled);
  }
  const selector =
    policy.selector !== undefined && Object.keys(policy.selector).length > 0
      ? policy.selector
      : undefined;
  return {
    key,
    namespace: policy.namespace,
    action,
    selector,
    rules,
    reason: action === 'DENY' ? `denied by DENY policy ${key}` : `allowed by ALLOW policy ${key}`,
  };
}

// ---- matching (the hot path: no allocation beyond the context) ----

/**
 * An mTLS-only field. `value` is undefined for plaintext: a positive list never matches; a
 * negative list matches in a DENY rule (compared to the missing value) and not in an ALLOW rule.
 */
function mtlsField(
  pos: readonly StringMatcher[] | undefined,
  neg: readonly StringMatcher[] | undefined,
  value: string | undefined,
  deny: boolean,
): boolean {
  if (value === undefined) {
    if (pos !== undefined) return false;
    return neg === undefined || deny;
  }
  if (pos !== undefined && !anyString(pos, value)) return false;
  return neg === undefined || !anyString(neg, value);
}

function sourceMatches(s: CompiledSource, ctx: MatchContext, deny: boolean): boolean {
  if (s.principals !== undefined || s.notPrincipals !== undefined) {
    if (!mtlsField(s.principals, s.notPrincipals, ctx.principal, deny)) return false;
  }
  if (s.namespaces !== undefined || s.notNamespaces !== undefined) {
    if (!mtlsField(s.namespaces, s.notNamespaces, ctx.namespace, deny)) return false;
  }
  for (const blocks of s.ipBlocks) if (!anyCidrContains(blocks, ctx.sourceIp)) return false;
  for (const blocks of s.notIpBlocks) if (anyCidrContains(blocks, ctx.sourceIp)) return false;
  return true;
}

function operationMatches(o: CompiledOperation, port: number): boolean {
  if (o.ports !== undefined && !o.ports.includes(port)) return false;
  return o.notPorts === undefined || !o.notPorts.includes(port);
}

function conditionMatches(c: CompiledCondition, ctx: MatchContext, deny: boolean): boolean {
  switch (c.type) {
    case 'port':
      if (c.values !== undefined && !c.values.includes(ctx.port)) return false;
      return c.notValues === undefined || !c.notValues.includes(ctx.port);
    case 'ip': {
      const ip = c.key === 'destination.ip' ? ctx.destinationIp : ctx.sourceIp;
      if (ip === undefined) return c.values === undefined && deny; // unknown: err to denial
      if (c.values !== undefined && !anyCidrContains(c.values, ip)) return false;
      return c.notValues === undefined || !anyCidrContains(c.notValues, ip);
    }
    case 'string':
      return mtlsField(
        c.values,
        c.notValues,
        c.key === 'source.principal' ? ctx.principal : ctx.namespace,
        deny,
      );
  }
}

function ruleMatches(r: CompiledRule, ctx: MatchContext, deny: boolean): boolean {
  if (r.from !== undefined) {
    let any = false;
    for (const s of r.from) {
      if (sourceMatches(s, ctx, deny)) {
        any = true;
        break;
      }
    }
    if (!any) return false;
  }
  if (r.to !== undefined) {
    let any = false;
    for (const o of r.to) {
      if (operationMatches(o, ctx.port)) {
        any = true;
        break;
      }
    }
    if (!any) return false;
  }
  for (const c of r.when) if (!conditionMatches(c, ctx, deny)) return false;
  return true;
}

/** The index (in spec.rules) of the first rule that matches, or -1. */
export function matchPolicy(p: CompiledPolicy, ctx: MatchContext): number {
  const deny = p.action === 'DENY';
  for (const r of p.rules) if (ruleMatches(r, ctx, deny)) return r.index;
  return -1;
}
