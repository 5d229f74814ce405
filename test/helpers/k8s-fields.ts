// test/helpers/k8s-fields.ts: the check `kubectl apply` makes with strict field validation
// (the default since Kubernetes 1.27) and kubernetes-models' JSON schemas do not: every field
// of an object must be one the API type declares. The field lists are @kubernetes/client-node's
// generated models (attributeTypeMap), one per OpenAPI definition.

import * as k8s from '@kubernetes/client-node';

interface Attribute {
  readonly name: string;
  readonly baseName: string;
  readonly type: string;
}

type ModelClass = { getAttributeTypeMap(): Attribute[] };

function model(type: string): ModelClass | undefined {
  const m = (k8s as unknown as Record<string, unknown>)[type];
  return typeof m === 'function' && 'getAttributeTypeMap' in m ? (m as ModelClass) : undefined;
}

/** The client-node model of an API type: `apps/v1` `DaemonSet` -> `V1DaemonSet`. */
export function modelName(apiVersion: string, kind: string): string {
  const version = apiVersion.split('/').pop()!;
  return `${version.charAt(0).toUpperCase()}${version.slice(1)}${kind}`;
}

/**
 * JSON-pointer-ish paths of every field `value` has that type `type` does not declare, and of
 * values whose JSON type is wrong for a scalar field. Throws when `type` has no model.
 */
export function unknownFields(value: unknown, type: string, path = ''): string[] {
  if (value === null || value === undefined) return [];
  const array = /^Array<(.+)>$/.exec(type);
  if (array) {
    if (!Array.isArray(value)) return [`${path}: expected a list`];
    return value.flatMap((v, i) => unknownFields(v, array[1]!, `${path}/${i}`));
  }
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (map) {
    if (typeof value !== 'object' || Array.isArray(value)) return [`${path}: expected a map`];
    return Object.entries(value).flatMap(([k, v]) => unknownFields(v, map[1]!, `${path}/${k}`));
  }
  switch (type) {
    case 'string':
      return typeof value === 'string' ? [] : [`${path}: expected a string`];
    case 'number':
      return typeof value === 'number' ? [] : [`${path}: expected a number`];
    case 'boolean':
      return typeof value === 'boolean' ? [] : [`${path}: expected a boolean`];
    case 'IntOrString':
      return typeof value === 'string' || typeof value === 'number'
        ? []
        : [`${path}: expected an int or a string`];
    case 'Date':
    case 'any':
    case 'object':
      return [];
  }
  const m = model(type);
  if (!m) throw new Error(`k8s-fields: no client-node model ${type} (at ${path || '/'})`);
  if (typeof value !== 'object' || Array.isArray(value)) return [`${path}: expected an object`];
  const attributes = new Map(m.getAttributeTypeMap().map((a) => [a.baseName, a.type]));
  const out: string[] = [];
  for (const [key, v] of Object.entries(value)) {
    const t = attributes.get(key);
    if (t === undefined) out.push(`${path}/${key}: unknown field of ${type}`);
    else out.push(...unknownFields(v, t, `${path}/${key}`));
  }
  return out;
}
