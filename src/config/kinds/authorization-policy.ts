// config/kinds/authorization-policy.ts: translates an Istio AuthorizationPolicy
// (security.istio.io v1 or v1beta1, one schema). Every field of Istio's schema is accepted and
// kept, L7 ones included (policy/ decides what the node proxy can enforce); a field Istio does
// not know is an error, since ignoring a misspelt constraint would widen the rule. The checks
// follow Istio's own validation (istiod's webhook and the CRD schema), plus the principal
// format. Validation and shaping only.

import type { FieldPath } from '../errors.js';
import {
  describe,
  isDns1123Label,
  isDns1123Subdomain,
  isIPOrCidr,
  isPortString,
  isRecord,
  type FieldReader,
} from '../fields.js';
import {
  POLICY_ACTIONS,
  type AuthorizationPolicy,
  type PolicyCondition,
  type PolicyOperation,
  type PolicyRule,
  type PolicySource,
} from '../mesh-model.js';
import { ISTIO_SECURITY_GROUP, ISTIO_SECURITY_VERSIONS, readWorkloadSelector } from './istio.js';
import type { KindTranslator, ObjectMeta } from './translator.js';

const SPEC_FIELDS = ['selector', 'targetRef', 'targetRefs', 'action', 'provider', 'rules'];
const RULE_FIELDS = ['from', 'to', 'when'];
const TARGET_REF_FIELDS = ['group', 'kind', 'name', 'namespace'];
const CONDITION_FIELDS = ['key', 'values', 'notValues'];

type Check = (s: string) => string | undefined;

const ipBlock: Check = (s) =>
  isIPOrCidr(s) ? undefined : `${JSON.stringify(s)} is not an IP address or CIDR block`;

const port: Check = (s) =>
  isPortString(s)
    ? undefined
    : `${JSON.stringify(s)} is not a port (expected a number from 1 to 65535, as a string)`;

const PRINCIPAL = /^[^/\s*]+\/ns\/[^/\s*]+\/sa\/[^/\s*]+$/;
const PRINCIPAL_FORMAT =
  'expected <trust-domain>/ns/<namespace>/sa/<service-account>, optionally with a "*" prefix or suffix';

/** Istio principals: exact, `*`, or one `*` at the start or the end. */
const principal: Check = (s) => {
  const q = JSON.stringify(s);
  if (s === '*') return undefined;
  if (s.startsWith('spiffe://')) return `${q} is not a principal (write it without "spiffe://")`;
  const prefix = s.startsWith('*');
  const suffix = s.endsWith('*');
  const core = s.slice(prefix ? 1 : 0, suffix ? -1 : undefined);
  if ((prefix && suffix) || core.includes('*')) {
    return `${q} is not a principal ("*" is only allowed as the first or the last character)`;
  }
  if (/\s/.test(s)) return `${q} is not a principal (it contains a space)`;
  if (!prefix && !suffix && !PRINCIPAL.test(s))
    return `${q} is not a principal (${PRINCIPAL_FORMAT})`;
  return undefined;
};

/** `<namespace>/<name>` or `<name>`; no wildcard (Istio's rule). */
const serviceAccount: Check = (s) => {
  const slash = s.indexOf('/');
  const ok =
    slash < 0
      ? isDns1123Subdomain(s)
      : isDns1123Label(s.slice(0, slash)) && isDns1123Subdomain(s.slice(slash + 1));
  return ok
    ? undefined
    : `${JSON.stringify(s)} is not a service account (expected <namespace>/<name> or <name>, without wildcards)`;
};

/** Source fields in Istio's order, with the check of their items. */
const SOURCE_FIELDS: ReadonlyArray<readonly [keyof PolicySource, Check | undefined]> = [
  ['principals', principal],
  ['notPrincipals', principal],
  ['requestPrincipals', undefined],
  ['notRequestPrincipals', undefined],
  ['namespaces', undefined],
  ['notNamespaces', undefined],
  ['serviceAccounts', serviceAccount],
  ['notServiceAccounts', serviceAccount],
  ['ipBlocks', ipBlock],
  ['notIpBlocks', ipBlock],
  ['remoteIpBlocks', ipBlock],
  ['notRemoteIpBlocks', ipBlock],
  ['trustDomains', undefined],
  ['notTrustDomains', undefined],
];

const OPERATION_FIELDS: ReadonlyArray<readonly [keyof PolicyOperation, Check | undefined]> = [
  ['hosts', undefined],
  ['notHosts', undefined],
  ['ports', port],
  ['notPorts', port],
  ['methods', undefined],
  ['notMethods', undefined],
  ['paths', undefined],
  ['notPaths', undefined],
];

/** `when` keys Istio accepts, with the check of their values. */
const CONDITION_KEYS: ReadonlyMap<string, Check | undefined> = new Map([
  ['source.ip', ipBlock],
  ['remote.ip', ipBlock],
  ['source.namespace', undefined],
  ['source.principal', undefined],
  ['source.serviceAccount', undefined],
  ['request.auth.principal', undefined],
  ['request.auth.audiences', undefined],
  ['request.auth.presenter', undefined],
  ['destination.ip', ipBlock],
  ['destination.port', port],
  ['connection.sni', undefined],
]);
/** Keys written `<prefix>[<name>]`. */
const CONDITION_MAP_KEYS =
  /^(request\.headers|request\.auth\.claims|experimental\.envoy\.filters\.[^[\]]+)\[.+\]$/;

export const authorizationPolicyTranslator: KindTranslator<'AuthorizationPolicy'> = {
  kind: 'AuthorizationPolicy',
  group: ISTIO_SECURITY_GROUP,
  versions: ISTIO_SECURITY_VERSIONS,
  namespaced: true,
  translate(r: FieldReader, meta: ObjectMeta): AuthorizationPolicy {
    const namespace = meta.namespace!;
    r.stringMap(['metadata', 'labels']);
    r.stringMap(['metadata', 'annotations']);
    r.map(['spec']);
    r.onlyFields(['spec'], SPEC_FIELDS);

    const selector = readWorkloadSelector(r, ['spec', 'selector']);
    const targetRefs: string[] = [];
    const single = readTargetRef(r, ['spec', 'targetRef']);
    if (single !== undefined) targetRefs.push(single);
    const refList = r.list(['spec', 'targetRefs']);
    refList?.forEach((_, i) => {
      const ref = readTargetRef(r, ['spec', 'targetRefs', i]);
      if (ref !== undefined) targetRefs.push(ref);
    });
    const hasSelector = r.get(['spec', 'selector']) !== undefined;
    const hasRefs = refList !== undefined && refList.length > 0;
    if (r.get(['spec', 'targetRef']) !== undefined && (hasSelector || hasRefs)) {
      r.fail(['spec', 'targetRef'], 'only one of selector, targetRef and targetRefs may be set');
    } else if (hasRefs && hasSelector) {
      r.fail(['spec', 'targetRefs'], 'only one of selector, targetRef and targetRefs may be set');
    }

    const action = r.oneOf(['spec', 'action'], POLICY_ACTIONS, 'an action') ?? 'ALLOW';
    const rulesList = r.list(['spec', 'rules']);
    if (r.map(['spec', 'provider']) !== undefined) {
      r.onlyFields(['spec', 'provider'], ['name']);
      const provider = r.string(['spec', 'provider', 'name']);
      if (action !== 'CUSTOM') {
        r.fail(['spec', 'provider'], `only allowed with action CUSTOM (the action is ${action})`);
      } else if (provider === undefined || provider === '') {
        r.fail(['spec', 'provider', 'name'], 'required for action CUSTOM');
      }
    } else if (action === 'CUSTOM' && rulesList !== undefined) {
      r.fail(['spec', 'provider'], 'required for action CUSTOM');
    }

    const rules: PolicyRule[] = [];
    rulesList?.forEach((entry, i) => {
      const rule = readRule(r, ['spec', 'rules', i], entry, namespace);
      if (rule !== undefined) rules.push(rule);
    });

    return {
      name: meta.name,
      namespace,
      ...(selector !== undefined && { selector }),
      targetRefs: Object.freeze(targetRefs),
      action,
      rules: Object.freeze(rules),
    };
  },
};

/** A PolicyTargetReference as `Kind/name`. */
function readTargetRef(r: FieldReader, path: FieldPath): string | undefined {
  if (r.map(path) === undefined) return undefined;
  r.onlyFields(path, TARGET_REF_FIELDS);
  r.string([...path, 'group']);
  const kind = r.string([...path, 'kind'], { required: true });
  const name = r.string([...path, 'name'], { required: true });
  const namespace = r.string([...path, 'namespace']);
  if (namespace !== undefined && namespace !== '') {
    r.fail(
      [...path, 'namespace'],
      'must not be set (Istio does not support cross-namespace references)',
    );
  }
  return kind !== undefined && name !== undefined ? `${kind}/${name}` : undefined;
}

function readRule(
  r: FieldReader,
  at: FieldPath,
  entry: unknown,
  namespace: string,
): PolicyRule | undefined {
  if (!isRecord(entry)) {
    r.fail(at, `expected a map (a rule; {} matches everything), got ${describe(entry)}`);
    return undefined;
  }
  r.onlyFields(at, RULE_FIELDS);
  const from = readClauses(r, [...at, 'from'], 'source', (p) => readSource(r, p, namespace));
  const to = readClauses(r, [...at, 'to'], 'operation', (p) => readOperation(r, p));
  const whenList = r.list([...at, 'when']);
  const when: PolicyCondition[] = [];
  whenList?.forEach((_, i) => {
    const c = readCondition(r, [...at, 'when', i]);
    if (c !== undefined) when.push(c);
  });
  return Object.freeze({
    ...(from !== undefined && { from }),
    ...(to !== undefined && { to }),
    ...(whenList !== undefined && whenList.length > 0 && { when: Object.freeze(when) }),
  });
}

/** `from: [{source: ...}]` or `to: [{operation: ...}]`: a non-empty list of wrappers. */
function readClauses<T>(
  r: FieldReader,
  path: FieldPath,
  inner: string,
  read: (path: FieldPath) => T | undefined,
): readonly T[] | undefined {
  const list = r.list(path);
  if (list === undefined) return undefined;
  const what = inner === 'source' ? 'any source' : 'any operation';
  if (list.length === 0) r.fail(path, `must not be empty (leave it out to match ${what})`);
  const out: T[] = [];
  list.forEach((entry, i) => {
    const at = [...path, i];
    if (!isRecord(entry)) {
      r.fail(at, `expected a map with "${inner}", got ${describe(entry)}`);
      return;
    }
    r.onlyFields(at, [inner]);
    if (r.map([...at, inner]) === undefined) {
      if (r.get([...at, inner]) === undefined) r.fail([...at, inner], 'required');
      return;
    }
    const v = read([...at, inner]);
    if (v !== undefined) out.push(v);
  });
  return Object.freeze(out);
}

function readSource(r: FieldReader, path: FieldPath, namespace: string): PolicySource {
  r.onlyFields(
    path,
    SOURCE_FIELDS.map(([f]) => f),
  );
  const out: Record<string, readonly string[]> = {};
  for (const [field, check] of SOURCE_FIELDS) {
    const list = r.stringList([...path, field], check);
    if (list !== undefined && list.length > 0) out[field] = list;
  }
  for (const field of ['serviceAccounts', 'notServiceAccounts'] as const) {
    const list = out[field];
    if (list === undefined) continue;
    out[field] = Object.freeze(list.map((s) => (s.includes('/') ? s : `${namespace}/${s}`)));
    if (out['principals'] || out['notPrincipals'] || out['namespaces'] || out['notNamespaces']) {
      r.fail([...path, field], 'cannot be set together with principals or namespaces');
    }
  }
  if (allUnset(r.get(path), SOURCE_FIELDS)) {
    r.fail(path, 'must set at least one field (leave "from" out to match any source)');
  }
  return Object.freeze(out) as PolicySource;
}

function readOperation(r: FieldReader, path: FieldPath): PolicyOperation {
  r.onlyFields(
    path,
    OPERATION_FIELDS.map(([f]) => f),
  );
  const out: Record<string, readonly string[]> = {};
  for (const [field, check] of OPERATION_FIELDS) {
    const list = r.stringList([...path, field], check);
    if (list !== undefined && list.length > 0) out[field] = list;
  }
  if (allUnset(r.get(path), OPERATION_FIELDS)) {
    r.fail(path, 'must set at least one field (leave "to" out to match any operation)');
  }
  return Object.freeze(out) as PolicyOperation;
}

function readCondition(r: FieldReader, path: FieldPath): PolicyCondition | undefined {
  const entry = r.get(path);
  if (!isRecord(entry)) {
    r.fail(path, `expected a map with "key" and "values", got ${describe(entry)}`);
    return undefined;
  }
  r.onlyFields(path, CONDITION_FIELDS);
  const key = r.string([...path, 'key'], { required: true });
  let check: Check | undefined;
  if (key !== undefined) {
    if (CONDITION_KEYS.has(key)) check = CONDITION_KEYS.get(key);
    else if (!CONDITION_MAP_KEYS.test(key)) {
      r.fail(
        [...path, 'key'],
        `${JSON.stringify(key)} is not an attribute Istio knows (such as source.ip, source.namespace, source.principal, destination.port, request.headers[<name>])`,
      );
    }
  }
  const values = r.stringList([...path, 'values'], check);
  const notValues = r.stringList([...path, 'notValues'], check);
  if (isUnset(entry['values']) && isUnset(entry['notValues'])) {
    r.fail(path, 'at least one of values and notValues is required');
  }
  if (key === undefined) return undefined;
  return Object.freeze({
    key,
    ...(values !== undefined && values.length > 0 && { values }),
    ...(notValues !== undefined && notValues.length > 0 && { notValues }),
  });
}

/** Absent, null or an empty list (a value of another type is "set", and reported elsewhere). */
function isUnset(v: unknown): boolean {
  return v === undefined || v === null || (Array.isArray(v) && v.length === 0);
}

function allUnset(raw: unknown, fields: ReadonlyArray<readonly [string, unknown]>): boolean {
  return isRecord(raw) && fields.every(([f]) => isUnset(raw[f]));
}
