// test/helpers/rbac.ts: what RBAC sees of an API request (verb, API group, resource) and what a
// ClusterRole grants, as comparable `verb group/resource` strings. Pure.

export interface ApiAccess {
  readonly verb: string;
  /** '' for the core group. */
  readonly group: string;
  /** Plural resource, with `/subresource` when there is one. */
  readonly resource: string;
}

export const accessKey = (a: ApiAccess): string =>
  `${a.verb} ${a.group === '' ? 'core' : a.group}/${a.resource}`;

/**
 * The RBAC attributes of a request, like kube-apiserver's RequestInfoFactory: undefined for
 * non-resource URLs (discovery: /api, /apis, /version, /apis/<group>[/<version>]).
 */
export function accessOf(req: {
  readonly method: string;
  readonly path: string;
  readonly query?: Readonly<Record<string, string>>;
}): ApiAccess | undefined {
  const parts = req.path.split('/').filter((p) => p !== '');
  let group: string;
  let rest: string[];
  if (parts[0] === 'api' && parts.length >= 3) {
    group = '';
    rest = parts.slice(2);
  } else if (parts[0] === 'apis' && parts.length >= 4) {
    group = parts[1]!;
    rest = parts.slice(3);
  } else return undefined;
  // /namespaces/<ns>/<resource>... is namespaced; /namespaces and /namespaces/<name> are the
  // Namespace resource itself.
  if (rest[0] === 'namespaces' && rest.length >= 3) rest = rest.slice(2);
  const [resource, name, sub] = rest;
  if (resource === undefined) return undefined;
  const watch = req.query?.['watch'] === 'true' || req.query?.['watch'] === '1';
  const method = req.method.toUpperCase();
  let verb: string;
  switch (method) {
    case 'GET':
    case 'HEAD':
      verb = watch ? 'watch' : name === undefined ? 'list' : 'get';
      break;
    case 'POST':
      verb = 'create';
      break;
    case 'PUT':
      verb = 'update';
      break;
    case 'PATCH':
      verb = 'patch';
      break;
    case 'DELETE':
      verb = name === undefined ? 'deletecollection' : 'delete';
      break;
    default:
      verb = method.toLowerCase();
  }
  return { verb, group, resource: sub === undefined ? resource : `${resource}/${sub}` };
}

interface PolicyRule {
  apiGroups?: string[];
  resources?: string[];
  verbs?: string[];
  resourceNames?: string[];
  nonResourceURLs?: string[];
}

/**
 * Every (verb, group, resource) a ClusterRole's rules grant, as accessKey strings. Wildcards
 * stay `*` (so they never equal a concrete use); resourceNames restrictions are kept in the
 * key (`... [name,name]`) so they cannot pass for a full grant.
 */
export function grantsOf(clusterRole: { rules?: unknown }): string[] {
  const out = new Set<string>();
  for (const r of (clusterRole.rules as PolicyRule[] | undefined) ?? []) {
    if (r.nonResourceURLs?.length) {
      for (const v of r.verbs ?? []) for (const u of r.nonResourceURLs) out.add(`${v} url:${u}`);
      continue;
    }
    const names = r.resourceNames?.length ? ` [${[...r.resourceNames].sort().join(',')}]` : '';
    for (const g of r.apiGroups ?? []) {
      for (const res of r.resources ?? []) {
        for (const v of r.verbs ?? [])
          out.add(`${accessKey({ verb: v, group: g, resource: res })}${names}`);
      }
    }
  }
  return [...out].sort();
}
