// test/helpers/kube-api-server.ts: a small Kubernetes API server for tests, over HTTPS with a
// throwaway CA. It serves list (paginated, with resourceVersion), watch (JSON lines: ADDED,
// MODIFIED, DELETED, BOOKMARK, ERROR 410), get, merge-patch, bearer-token authentication,
// per-verb RBAC denials and the discovery documents, and logs every request. Tests drive it
// in-process (KubeApiServer) or, when it runs as a script inside a network namespace, through
// a Unix-socket control endpoint (KubeApiServerControl):
//
//   node dist/test/helpers/kube-api-server.js --listen 198.18.0.250:6443 --state-dir DIR
//
// writes DIR/kubeconfig and DIR/ca.crt, loads DIR/objects/*.{json,yaml} if present, listens
// for control on DIR/control.sock and prints one JSON line {"event":"listening",...} when
// ready. It is test code: everything lives in memory, nothing is persisted, and it must never
// be used outside tests.

import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { randomBytes, randomUUID, webcrypto } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import * as http from 'node:http';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import { isIPv6 } from 'node:net';
import { join, resolve as resolvePath } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseAllDocuments } from 'yaml';

/** One resource the server serves. */
export interface ApiResource {
  /** '' for the core group. */
  readonly group: string;
  readonly version: string;
  readonly plural: string;
  readonly kind: string;
  readonly namespaced: boolean;
}

export const DEFAULT_RESOURCES: readonly ApiResource[] = [
  { group: '', version: 'v1', plural: 'pods', kind: 'Pod', namespaced: true },
  { group: '', version: 'v1', plural: 'namespaces', kind: 'Namespace', namespaced: false },
  { group: '', version: 'v1', plural: 'nodes', kind: 'Node', namespaced: false },
  { group: '', version: 'v1', plural: 'services', kind: 'Service', namespaced: true },
  {
    group: 'discovery.k8s.io',
    version: 'v1',
    plural: 'endpointslices',
    kind: 'EndpointSlice',
    namespaced: true,
  },
  {
    group: 'security.istio.io',
    version: 'v1',
    plural: 'authorizationpolicies',
    kind: 'AuthorizationPolicy',
    namespaced: true,
  },
  {
    group: 'security.istio.io',
    version: 'v1',
    plural: 'peerauthentications',
    kind: 'PeerAuthentication',
    namespaced: true,
  },
];

export interface RequestRecord {
  /** Date.now() when the request arrived. */
  readonly time: number;
  readonly method: string;
  readonly path: string;
  readonly query: Readonly<Record<string, string>>;
  readonly watch: boolean;
  /** The RBAC verb it needed (list, watch, get, patch), or undefined for discovery. */
  readonly verb?: string;
  readonly contentType?: string;
  /** HTTP status answered (a watch answers 200 even when its first event is a 410). */
  status: number;
}

export interface KubeApiServerOptions {
  /** Default 127.0.0.1. */
  readonly host?: string;
  /** Default 0 (any free port). */
  readonly port?: number;
  /** Bearer token clients must present. Default a random one. */
  readonly token?: string;
  /** User named in 403 messages. */
  readonly user?: string;
  readonly resources?: readonly ApiResource[];
}

type Obj = Record<string, unknown>;
type EventType = 'ADDED' | 'MODIFIED' | 'DELETED';

interface HistoryEvent {
  readonly rv: number;
  readonly res: ApiResource;
  readonly type: EventType;
  readonly object: Obj;
}

interface OpenWatch {
  readonly res: ApiResource;
  readonly namespace: string | undefined;
  readonly fieldSelector: Selector;
  readonly labelSelector: Selector;
  readonly bookmarks: boolean;
  readonly response: http.ServerResponse;
  readonly timer: NodeJS.Timeout | undefined;
}

type Selector = readonly { readonly key: string; readonly value: string; readonly neg: boolean }[];

const resKey = (r: { group: string; plural: string }): string => `${r.group}/${r.plural}`;

/** The in-process server. Create with `await KubeApiServer.start()`; always `close()`. */
export class KubeApiServer {
  readonly token: string;
  readonly user: string;
  readonly caPem: string;
  readonly resources: readonly ApiResource[];
  /** Every request, in arrival order. */
  readonly requests: RequestRecord[] = [];

  private readonly server: https.Server;
  private readonly store = new Map<string, Map<string, Obj>>();
  private readonly history: HistoryEvent[] = [];
  private readonly watches = new Set<OpenWatch>();
  private readonly denied = new Set<string>();
  private rv = 1;
  private compactedRv = 0;
  private watchFailure: number | undefined;
  private host = '';
  private port = 0;

  private constructor(
    opts: KubeApiServerOptions,
    tls: { caPem: string; certPem: string; keyPem: string },
  ) {
    this.token = opts.token ?? randomBytes(16).toString('hex');
    this.user = opts.user ?? 'system:serviceaccount:weft-system:weft';
    this.resources = opts.resources ?? DEFAULT_RESOURCES;
    for (const r of this.resources) this.store.set(resKey(r), new Map());
    this.caPem = tls.caPem;
    this.server = https.createServer({ cert: tls.certPem, key: tls.keyPem }, (req, res) => {
      try {
        this.handle(req, res);
      } catch (err) {
        if (!res.headersSent) sendStatus(res, 500, 'InternalError', String(err));
        else res.destroy();
      }
    });
  }

  static async start(opts: KubeApiServerOptions = {}): Promise<KubeApiServer> {
    const host = opts.host ?? '127.0.0.1';
    const tls = await makeCertificates(host);
    const s = new KubeApiServer(opts, tls);
    await new Promise<void>((resolve, reject) => {
      s.server.once('error', reject);
      s.server.listen(opts.port ?? 0, host, () => {
        s.server.off('error', reject);
        resolve();
      });
    });
    const addr = s.server.address() as AddressInfo;
    s.host = host;
    s.port = addr.port;
    return s;
  }

  /** `https://127.0.0.1:PORT` */
  get url(): string {
    return `https://${isIPv6(this.host) ? `[${this.host}]` : this.host}:${this.port}`;
  }

  /** The current (global) resourceVersion. */
  get resourceVersion(): string {
    return String(this.rv);
  }

  get openWatches(): number {
    return this.watches.size;
  }

  /** A kubeconfig (YAML) for this server: its CA, its URL, the bearer token. */
  kubeconfigYaml(): string {
    const ca = Buffer.from(this.caPem).toString('base64');
    return [
      'apiVersion: v1',
      'kind: Config',
      'clusters:',
      '  - name: test',
      '    cluster:',
      `      server: ${this.url}`,
      `      certificate-authority-data: ${ca}`,
      'users:',
      '  - name: weft',
      '    user:',
      `      token: ${this.token}`,
      'contexts:',
      '  - name: test',
      '    context: { cluster: test, user: weft }',
      'current-context: test',
      '',
    ].join('\n');
  }

  /** Writes the kubeconfig to `path` (mode 0600) and returns `path`. */
  async kubeconfig(path: string): Promise<string> {
    await writeFile(path, this.kubeconfigYaml(), { mode: 0o600 });
    return path;
  }

  /** Creates or replaces an object (by kind, namespace, name); returns the stored copy. */
  apply(input: object): Obj {
    const obj = structuredClone(input) as Obj;
    const res = this.resourceOfObject(obj);
    const meta = (isObj(obj['metadata']) ? obj['metadata'] : {}) as Obj;
    obj['metadata'] = meta;
    if (typeof meta['name'] !== 'string' || meta['name'] === '') {
      throw new Error('kube-api-server: apply: metadata.name is required');
    }
    if (res.namespaced) {
      if (typeof meta['namespace'] !== 'string' || meta['namespace'] === '') {
        meta['namespace'] = 'default';
      }
    } else delete meta['namespace'];
    obj['apiVersion'] = res.group === '' ? res.version : `${res.group}/${res.version}`;
    obj['kind'] = res.kind;
    const objects = this.store.get(resKey(res))!;
    const key = objectKey(res, meta);
    const old = objects.get(key);
    const oldMeta = old && isObj(old['metadata']) ? old['metadata'] : undefined;
    meta['uid'] = meta['uid'] ?? oldMeta?.['uid'] ?? randomUUID();
    meta['creationTimestamp'] =
      oldMeta?.['creationTimestamp'] ?? meta['creationTimestamp'] ?? new Date().toISOString();
    meta['resourceVersion'] = String(++this.rv);
    objects.set(key, obj);
    this.record(res, old ? 'MODIFIED' : 'ADDED', obj);
    return structuredClone(obj);
  }

  /** Deletes an object; false when there was none. */
  delete(kind: string, namespace: string | undefined, name: string): boolean {
    const res = this.resourceOfKind(kind);
    const objects = this.store.get(resKey(res))!;
    const key = res.namespaced ? `${namespace ?? 'default'}/${name}` : name;
    const old = objects.get(key);
    if (!old) return false;
    objects.delete(key);
    const gone = structuredClone(old);
    (gone['metadata'] as Obj)['resourceVersion'] = String(++this.rv);
    this.record(res, 'DELETED', gone);
    return true;
  }

  get(kind: string, namespace: string | undefined, name: string): Obj | undefined {
    const res = this.resourceOfKind(kind);
    const key = res.namespaced ? `${namespace ?? 'default'}/${name}` : name;
    const o = this.store.get(resKey(res))!.get(key);
    return o ? structuredClone(o) : undefined;
  }

  /**
   * Compacts the event history: every resourceVersion handed out so far is too old, so the
   * next watch from one gets a 410 (as an ERROR event, like kube-apiserver), and open watches
   * end with that ERROR event now.
   */
  expireResourceVersions(): void {
    this.rv++;
    this.compactedRv = this.rv;
    this.history.length = 0;
    for (const w of [...this.watches]) {
      writeEvent(w.response, 'ERROR', goneStatus());
      this.endWatch(w);
    }
  }

  /** Closes every open watch (cleanly, or abruptly with `abrupt`); returns how many. */
  dropWatches(opts: { abrupt?: boolean } = {}): number {
    const n = this.watches.size;
    for (const w of [...this.watches]) this.endWatch(w, opts.abrupt === true);
    return n;
  }

  /** Sends a BOOKMARK with a new resourceVersion to every watch that allows bookmarks. */
  bookmark(): string {
    const rv = String(++this.rv);
    for (const w of this.watches) {
      if (!w.bookmarks) continue;
      writeEvent(w.response, 'BOOKMARK', {
        apiVersion: apiVersionOf(w.res),
        kind: w.res.kind,
        metadata: { resourceVersion: rv },
      });
    }
    return rv;
  }

  /** RBAC: refuse `verb` (list, watch, get, patch, or *) on `plural` (or *) with 403. */
  deny(verb: string, plural: string): void {
    this.denied.add(`${verb}:${plural}`);
  }

  allow(verb: string, plural: string): void {
    this.denied.delete(`${verb}:${plural}`);
  }

  /** Answer every watch request with this HTTP status until called with null. */
  failWatches(status: number | null): void {
    this.watchFailure = status ?? undefined;
  }

  clearRequests(): void {
    this.requests.length = 0;
  }

  /** Ends every watch and stops listening. */
  async close(): Promise<void> {
    for (const w of [...this.watches]) this.endWatch(w, true);
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  // ------------------------------------------------------------------------------------

  private resourceOfKind(kind: string): ApiResource {
    const r = this.resources.find((x) => x.kind === kind);
    if (!r) throw new Error(`kube-api-server: no resource serves kind ${kind}`);
    return r;
  }

  private resourceOfObject(obj: Obj): ApiResource {
    const kind = obj['kind'];
    if (typeof kind !== 'string') throw new Error('kube-api-server: apply: kind is required');
    const av = typeof obj['apiVersion'] === 'string' ? obj['apiVersion'] : undefined;
    const group = av === undefined ? undefined : av.includes('/') ? av.split('/')[0] : '';
    const r = this.resources.find(
      (x) => x.kind === kind && (group === undefined || x.group === group),
    );
    if (!r) throw new Error(`kube-api-server: no resource serves ${av ?? '?'} ${kind}`);
    return r;
  }

  private record(res: ApiResource, type: EventType, obj: Obj): void {
    const ev: HistoryEvent = { rv: this.rv, res, type, object: structuredClone(obj) };
    this.history.push(ev);
    if (this.history.length > 10_000) this.history.shift();
    for (const w of this.watches) {
      if (w.res === res && watchMatches(w, obj)) writeEvent(w.response, type, obj);
    }
  }

  private endWatch(w: OpenWatch, abrupt = false): void {
    this.watches.delete(w);
    if (w.timer) clearTimeout(w.timer);
    if (abrupt) w.response.destroy();
    else w.response.end();
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', 'https://x');
    const query = Object.fromEntries(url.searchParams);
    const watch = query['watch'] === 'true' || query['watch'] === '1';
    const method = req.method ?? 'GET';
    const path = url.pathname.replace(/\/+$/, '') || '/';
    const route = this.route(path);
    const verb =
      route?.type === 'collection'
        ? watch
          ? 'watch'
          : method === 'GET'
            ? 'list'
            : method.toLowerCase()
        : route?.type === 'object'
          ? method === 'GET'
            ? 'get'
            : method.toLowerCase()
          : undefined;
    const contentType = req.headers['content-type'];
    const rec: RequestRecord = {
      time: Date.now(),
      method,
      path,
      query,
      watch,
      ...(verb !== undefined && { verb }),
      ...(contentType !== undefined && { contentType }),
      status: 0,
    };
    this.requests.push(rec);
    res.on('finish', () => (rec.status = res.statusCode));
    res.on('close', () => {
      if (rec.status === 0) rec.status = res.statusCode;
    });

    if (req.headers.authorization !== `Bearer ${this.token}`) {
      sendStatus(res, 401, 'Unauthorized', 'Unauthorized');
      return;
    }
    if (route === undefined) {
      const doc = this.discovery(path);
      if (doc !== undefined && method === 'GET') sendJson(res, 200, doc);
      else sendStatus(res, 404, 'NotFound', 'the server could not find the requested resource');
      return;
    }
    const r = route.res;
    if (
      this.denied.has(`${verb}:${r.plural}`) ||
      this.denied.has(`${verb}:*`) ||
      this.denied.has(`*:${r.plural}`) ||
      this.denied.has('*:*')
    ) {
      const scope = route.namespace
        ? `in the namespace "${route.namespace}"`
        : 'at the cluster scope';
      sendStatus(
        res,
        403,
        'Forbidden',
        `${r.plural}${r.group ? `.${r.group}` : ''} is forbidden: User "${this.user}" cannot ${verb} resource "${r.plural}" in API group "${r.group}" ${scope}`,
      );
      return;
    }
    if (route.type === 'collection' && method === 'GET') {
      if (watch) this.serveWatch(route.res, route.namespace, query, res);
      else this.serveList(route.res, route.namespace, query, res);
      return;
    }
    if (route.type === 'object' && method === 'GET') {
      const o = this.store.get(resKey(r))!.get(route.key);
      if (o) sendJson(res, 200, o);
      else sendStatus(res, 404, 'NotFound', `${r.plural} "${route.name}" not found`);
      return;
    }
    if (route.type === 'object' && method === 'PATCH') {
      this.servePatch(route.res, route.key, route.name, req, res);
      return;
    }
    sendStatus(res, 405, 'MethodNotAllowed', `${method} is not supported here`);
  }

  private route(
    path: string,
  ):
    | { type: 'collection'; res: ApiResource; namespace: string | undefined }
    | { type: 'object'; res: ApiResource; namespace: string | undefined; name: string; key: string }
    | undefined {
    const parts = path
      .split('/')
      .filter((p) => p !== '')
      .map(decodeURIComponent);
    let group: string;
    let rest: string[];
    if (parts[0] === 'api' && parts.length >= 3) {
      group = '';
      rest = parts.slice(1);
    } else if (parts[0] === 'apis' && parts.length >= 4) {
      group = parts[1]!;
      rest = parts.slice(2);
    } else return undefined;
    const version = rest[0]!;
    rest = rest.slice(1);
    const find = (plural: string | undefined): ApiResource | undefined =>
      this.resources.find((r) => r.group === group && r.version === version && r.plural === plural);
    let namespace: string | undefined;
    if (rest[0] === 'namespaces' && rest.length >= 3 && find(rest[2])?.namespaced) {
      namespace = rest[1];
      rest = rest.slice(2);
    }
    const res = find(rest[0]);
    if (!res) return undefined;
    if (rest.length === 1) return { type: 'collection', res, namespace };
    if (rest.length === 2) {
      const name = rest[1]!;
      if (res.namespaced && namespace === undefined) return undefined;
      return {
        type: 'object',
        res,
        namespace,
        name,
        key: res.namespaced ? `${namespace}/${name}` : name,
      };
    }
    return undefined;
  }

  private matching(
    res: ApiResource,
    namespace: string | undefined,
    q: Readonly<Record<string, string>>,
  ): Obj[] {
    const fs = parseSelector(q['fieldSelector']);
    const ls = parseSelector(q['labelSelector']);
    const out: Obj[] = [];
    const keys = [...this.store.get(resKey(res))!.keys()].sort();
    for (const k of keys) {
      const o = this.store.get(resKey(res))!.get(k)!;
      if (watchMatches({ namespace, fieldSelector: fs, labelSelector: ls }, o)) out.push(o);
    }
    return out;
  }

  private serveList(
    res: ApiResource,
    namespace: string | undefined,
    q: Readonly<Record<string, string>>,
    response: http.ServerResponse,
  ): void {
    const all = this.matching(res, namespace, q);
    const limit = Number(q['limit'] ?? 0);
    let start = 0;
    if (q['continue']) {
      const c = decodeContinue(q['continue']);
      if (c === undefined || c.rv < this.compactedRv) {
        sendStatus(response, 410, 'Expired', 'The provided continue parameter is too old');
        return;
      }
      start = c.offset;
    }
    const end = limit > 0 ? Math.min(all.length, start + limit) : all.length;
    const items = all.slice(start, end).map((o) => {
      // Like kube-apiserver: list items carry neither apiVersion nor kind.
      const rest = { ...o };
      delete rest['apiVersion'];
      delete rest['kind'];
      return rest;
    });
    const metadata: Obj = { resourceVersion: String(this.rv) };
    if (end < all.length) metadata['continue'] = encodeContinue({ rv: this.rv, offset: end });
    sendJson(response, 200, {
      apiVersion: apiVersionOf(res),
      kind: `${res.kind}List`,
      metadata,
      items,
    });
  }

  private serveWatch(
    res: ApiResource,
    namespace: string | undefined,
    q: Readonly<Record<string, string>>,
    response: http.ServerResponse,
  ): void {
    if (this.watchFailure !== undefined) {
      sendStatus(response, this.watchFailure, 'ServiceUnavailable', 'watches are failing (test)');
      return;
    }
    response.writeHead(200, {
      'Content-Type': 'application/json',
      'Transfer-Encoding': 'chunked',
      'Cache-Control': 'no-cache',
    });
    response.flushHeaders();
    const rvParam = q['resourceVersion'] ?? '';
    const timeoutSeconds = Number(q['timeoutSeconds'] ?? 0);
    const w: OpenWatch = {
      res,
      namespace,
      fieldSelector: parseSelector(q['fieldSelector']),
      labelSelector: parseSelector(q['labelSelector']),
      bookmarks: q['allowWatchBookmarks'] === 'true' || q['allowWatchBookmarks'] === '1',
      response,
      timer:
        timeoutSeconds > 0 ? setTimeout(() => this.endWatch(w), timeoutSeconds * 1000) : undefined,
    };
    if (rvParam === '' || rvParam === '0') {
      // "Any version": the current state as synthetic ADDED events, then changes.
      for (const o of this.matching(res, namespace, q)) writeEvent(response, 'ADDED', o);
    } else {
      const from = Number(rvParam);
      if (!Number.isFinite(from) || from < this.compactedRv) {
        writeEvent(response, 'ERROR', goneStatus(rvParam));
        response.end();
        if (w.timer) clearTimeout(w.timer);
        return;
      }
      for (const ev of this.history) {
        if (ev.rv > from && ev.res === res && watchMatches(w, ev.object)) {
          writeEvent(response, ev.type, ev.object);
        }
      }
    }
    this.watches.add(w);
    response.on('close', () => {
      if (this.watches.delete(w) && w.timer) clearTimeout(w.timer);
    });
  }

  private servePatch(
    res: ApiResource,
    key: string,
    name: string,
    req: http.IncomingMessage,
    response: http.ServerResponse,
  ): void {
    const ct = (req.headers['content-type'] ?? '').split(';')[0]!.trim();
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (
        ct !== 'application/merge-patch+json' &&
        ct !== 'application/strategic-merge-patch+json'
      ) {
        sendStatus(
          response,
          415,
          'UnsupportedMediaType',
          `the body of the request was in an unknown format - accepted media types include: application/merge-patch+json (got ${ct || 'none'})`,
        );
        return;
      }
      const current = this.store.get(resKey(res))!.get(key);
      if (!current) {
        sendStatus(response, 404, 'NotFound', `${res.plural} "${name}" not found`);
        return;
      }
      let patch: unknown;
      try {
        patch = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        sendStatus(response, 400, 'BadRequest', 'the patch is not JSON');
        return;
      }
      const merged = mergePatch(structuredClone(current), patch) as Obj;
      sendJson(response, 200, this.apply(merged));
    });
  }

  private discovery(path: string): unknown {
    const groups = [...new Set(this.resources.filter((r) => r.group !== '').map((r) => r.group))];
    const versionsOf = (g: string): string[] => [
      ...new Set(this.resources.filter((r) => r.group === g).map((r) => r.version)),
    ];
    if (path === '/version') {
      return { major: '1', minor: '31', gitVersion: 'v1.31.0-weft-test', platform: 'linux/amd64' };
    }
    if (path === '/api')
      return { kind: 'APIVersions', versions: versionsOf(''), serverAddressByClientCIDRs: [] };
    const groupDoc = (g: string): Obj => ({
      name: g,
      versions: versionsOf(g).map((v) => ({ groupVersion: `${g}/${v}`, version: v })),
      preferredVersion: { groupVersion: `${g}/${versionsOf(g)[0]}`, version: versionsOf(g)[0] },
    });
    if (path === '/apis') {
      return { kind: 'APIGroupList', apiVersion: 'v1', groups: groups.map(groupDoc) };
    }
    const parts = path.split('/').filter((p) => p !== '');
    if (parts[0] === 'apis' && parts.length === 2 && groups.includes(parts[1]!)) {
      return { kind: 'APIGroup', apiVersion: 'v1', ...groupDoc(parts[1]!) };
    }
    const gv =
      parts[0] === 'api' && parts.length === 2
        ? { group: '', version: parts[1]! }
        : parts[0] === 'apis' && parts.length === 3
          ? { group: parts[1]!, version: parts[2]! }
          : undefined;
    if (!gv) return undefined;
    const rs = this.resources.filter((r) => r.group === gv.group && r.version === gv.version);
    if (rs.length === 0) return undefined;
    return {
      kind: 'APIResourceList',
      apiVersion: 'v1',
      groupVersion: gv.group === '' ? gv.version : `${gv.group}/${gv.version}`,
      resources: rs.map((r) => ({
        name: r.plural,
        singularName: r.kind.toLowerCase(),
        namespaced: r.namespaced,
        kind: r.kind,
        verbs: ['get', 'list', 'watch', 'patch'],
      })),
    };
  }
}

// ---------------------------------------------------------------------------------------

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function apiVersionOf(r: ApiResource): string {
  return r.group === '' ? r.version : `${r.group}/${r.version}`;
}

function objectKey(res: ApiResource, meta: Obj): string {
  return res.namespaced
    ? `${String(meta['namespace'])}/${String(meta['name'])}`
    : String(meta['name']);
}

function goneStatus(rv?: string): Obj {
  return {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message: rv ? `too old resource version: ${rv}` : 'too old resource version',
    reason: 'Expired',
    code: 410,
  };
}

function writeEvent(res: http.ServerResponse, type: string, object: Obj): void {
  if (!res.writableEnded && !res.destroyed) res.write(`${JSON.stringify({ type, object })}\n`);
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

function sendStatus(res: http.ServerResponse, code: number, reason: string, message: string): void {
  sendJson(res, code, {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message,
    reason,
    code,
  });
}

/** `a=b,c!=d` (field and label selectors, equality only). */
function parseSelector(s: string | undefined): Selector {
  if (!s) return [];
  return s.split(',').map((term) => {
    const m = /^([^!=]+)(==|!=|=)(.*)$/.exec(term.trim());
    if (!m) throw new Error(`kube-api-server: unsupported selector term ${JSON.stringify(term)}`);
    return { key: m[1]!.trim(), value: m[3]!.trim(), neg: m[2] === '!=' };
  });
}

function fieldValue(obj: Obj, path: string): string {
  let cur: unknown = obj;
  for (const seg of path.split('.')) cur = isObj(cur) ? cur[seg] : undefined;
  return cur === undefined || cur === null ? '' : String(cur);
}

function watchMatches(
  w: { namespace: string | undefined; fieldSelector: Selector; labelSelector: Selector },
  obj: Obj,
): boolean {
  if (w.namespace !== undefined && fieldValue(obj, 'metadata.namespace') !== w.namespace)
    return false;
  for (const t of w.fieldSelector) if ((fieldValue(obj, t.key) === t.value) === t.neg) return false;
  const labels =
    isObj(obj['metadata']) && isObj(obj['metadata']['labels']) ? obj['metadata']['labels'] : {};
  for (const t of w.labelSelector)
    if ((String(labels[t.key] ?? '') === t.value) === t.neg) return false;
  return true;
}

/** RFC 7386 JSON merge patch. */
function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObj(patch)) return patch;
  const out: Obj = isObj(target) ? target : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

function encodeContinue(c: { rv: number; offset: number }): string {
  return Buffer.from(JSON.stringify(c)).toString('base64url');
}

function decodeContinue(s: string): { rv: number; offset: number } | undefined {
  try {
    const c = JSON.parse(Buffer.from(s, 'base64url').toString('utf8')) as unknown;
    if (isObj(c) && typeof c['rv'] === 'number' && typeof c['offset'] === 'number') {
      return { rv: c['rv'], offset: c['offset'] };
    }
  } catch {
    // fall through
  }
  return undefined;
}

// --- certificates ------------------------------------------------------------------------

const EC_P256 = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

function pem(der: ArrayBuffer, label: string): string {
  const b64 = Buffer.from(der)
    .toString('base64')
    .replace(/(.{64})/g, '$1\n')
    .trimEnd();
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** A throwaway CA and a server certificate for `host` (plus localhost and 127.0.0.1). */
async function makeCertificates(
  host: string,
): Promise<{ caPem: string; certPem: string; keyPem: string }> {
  const crypto = webcrypto as unknown as webcrypto.Crypto;
  const now = Date.now();
  const notBefore = new Date(now - 60_000);
  const notAfter = new Date(now + 24 * 3600_000);
  const caKeys = (await crypto.subtle.generateKey(EC_P256, false, [
    'sign',
    'verify',
  ])) as webcrypto.CryptoKeyPair;
  const ca = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: randomBytes(8)
        .toString('hex')
        .replace(/^[89a-f]/, '1'),
      name: 'CN=kube-api-server test CA',
      notBefore,
      notAfter,
      keys: caKeys,
      signingAlgorithm: EC_P256,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
          true,
        ),
        await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey, false, crypto),
      ],
    },
    crypto,
  );
  const keys = (await crypto.subtle.generateKey(EC_P256, true, [
    'sign',
    'verify',
  ])) as webcrypto.CryptoKeyPair;
  const sans: x509.JsonGeneralName[] = [
    { type: 'dns', value: 'localhost' },
    { type: 'dns', value: 'kubernetes.default.svc' },
    { type: 'ip', value: '127.0.0.1' },
  ];
  if (host !== '127.0.0.1' && host !== 'localhost' && host !== '0.0.0.0' && host !== '::') {
    sans.push({ type: /^[0-9.:a-fA-F]+$/.test(host) ? 'ip' : 'dns', value: host });
  }
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: randomBytes(8)
        .toString('hex')
        .replace(/^[89a-f]/, '1'),
      subject: 'CN=kube-apiserver',
      issuer: ca.subject,
      notBefore,
      notAfter,
      publicKey: keys.publicKey,
      signingKey: caKeys.privateKey,
      signingAlgorithm: EC_P256,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
        new x509.SubjectAlternativeNameExtension(sans, false),
        await x509.AuthorityKeyIdentifierExtension.create(caKeys.publicKey, false, crypto),
      ],
    },
    crypto,
  );
  return {
    caPem: ca.toString('pem') + '\n',
    certPem: cert.toString('pem') + '\n',
    keyPem: pem(await crypto.subtle.exportKey('pkcs8', keys.privateKey), 'PRIVATE KEY'),
  };
}

// --- remote control (script mode) ---------------------------------------------------------

/** Drives a server started as a script, through DIR/control.sock (works across netns). */
export class KubeApiServerControl {
  constructor(readonly socketPath: string) {}

  apply(obj: object): Promise<Obj> {
    return this.call('POST', '/apply', obj) as Promise<Obj>;
  }
  async delete(kind: string, namespace: string | undefined, name: string): Promise<boolean> {
    return (await this.call('POST', '/delete', { kind, namespace, name })) as boolean;
  }
  async expireResourceVersions(): Promise<void> {
    await this.call('POST', '/expire');
  }
  async dropWatches(opts: { abrupt?: boolean } = {}): Promise<number> {
    return (await this.call('POST', '/drop-watches', opts)) as number;
  }
  async bookmark(): Promise<string> {
    return (await this.call('POST', '/bookmark')) as string;
  }
  async deny(verb: string, plural: string): Promise<void> {
    await this.call('POST', '/deny', { verb, plural });
  }
  async allow(verb: string, plural: string): Promise<void> {
    await this.call('POST', '/allow', { verb, plural });
  }
  async failWatches(status: number | null): Promise<void> {
    await this.call('POST', '/fail-watches', { status });
  }
  async requests(): Promise<RequestRecord[]> {
    return (await this.call('GET', '/requests')) as RequestRecord[];
  }
  async clearRequests(): Promise<void> {
    await this.call('DELETE', '/requests');
  }
  async state(): Promise<{ url: string; resourceVersion: string; openWatches: number }> {
    return (await this.call('GET', '/state')) as {
      url: string;
      resourceVersion: string;
      openWatches: number;
    };
  }

  private call(method: string, path: string, body?: unknown): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          socketPath: this.socketPath,
          method,
          path,
          headers: { 'Content-Type': 'application/json' },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            if (res.statusCode !== 200)
              reject(new Error(`kube-api-server control ${path}: ${text}`));
            else resolve(text === '' ? undefined : JSON.parse(text));
          });
          res.on('error', reject);
        },
      );
      req.setTimeout(10_000, () =>
        req.destroy(new Error(`kube-api-server control ${path}: timeout`)),
      );
      req.on('error', reject);
      req.end(body === undefined ? undefined : JSON.stringify(body));
    });
  }
}

/** Serves the control API of `server` on a Unix socket. */
export async function serveControl(
  server: KubeApiServer,
  socketPath: string,
): Promise<http.Server> {
  await rm(socketPath, { force: true });
  const ctl = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const reply = (v: unknown): void => sendJson(res, 200, v ?? null);
      try {
        const text = Buffer.concat(chunks).toString('utf8');
        const body = (text === '' ? {} : JSON.parse(text)) as Obj;
        const key = `${req.method} ${req.url}`;
        switch (key) {
          case 'POST /apply':
            reply(applyAll(server, body));
            return;
          case 'POST /delete':
            reply(
              server.delete(
                String(body['kind']),
                body['namespace'] as string | undefined,
                String(body['name']),
              ),
            );
            return;
          case 'POST /expire':
            server.expireResourceVersions();
            reply(true);
            return;
          case 'POST /drop-watches':
            reply(server.dropWatches({ abrupt: body['abrupt'] === true }));
            return;
          case 'POST /bookmark':
            reply(server.bookmark());
            return;
          case 'POST /deny':
            server.deny(String(body['verb']), String(body['plural']));
            reply(true);
            return;
          case 'POST /allow':
            server.allow(String(body['verb']), String(body['plural']));
            reply(true);
            return;
          case 'POST /fail-watches':
            server.failWatches(typeof body['status'] === 'number' ? body['status'] : null);
            reply(true);
            return;
          case 'GET /requests':
            reply(server.requests);
            return;
          case 'DELETE /requests':
            server.clearRequests();
            reply(true);
            return;
          case 'GET /state':
            reply({
              url: server.url,
              resourceVersion: server.resourceVersion,
              openWatches: server.openWatches,
            });
            return;
          default:
            sendJson(res, 404, { error: `unknown control call ${key}` });
        }
      } catch (err) {
        sendJson(res, 400, { error: String(err) });
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    ctl.once('error', reject);
    ctl.listen(socketPath, () => resolve());
  });
  return ctl;
}

/** Applies an object, a `List`/`<Kind>List` or an array; returns the stored copies. */
export function applyAll(server: KubeApiServer, input: unknown): Obj[] {
  if (Array.isArray(input)) return input.flatMap((o) => applyAll(server, o));
  if (!isObj(input)) return [];
  if (
    Array.isArray(input['items']) &&
    typeof input['kind'] === 'string' &&
    input['kind'].endsWith('List')
  ) {
    return input['items'].flatMap((o) => applyAll(server, o));
  }
  return [server.apply(input)];
}

async function loadObjectsDir(server: KubeApiServer, dir: string): Promise<number> {
  if (!existsSync(dir)) return 0;
  let n = 0;
  for (const f of (await readdir(dir)).sort()) {
    if (!/\.(json|ya?ml)$/.test(f)) continue;
    const text = await readFile(join(dir, f), 'utf8');
    for (const doc of parseAllDocuments(text)) {
      if (doc.errors.length > 0) throw new Error(`${f}: ${doc.errors[0]!.message}`);
      n += applyAll(server, doc.toJS()).length;
    }
  }
  return n;
}

async function main(argv: readonly string[]): Promise<void> {
  let listen = '127.0.0.1:0';
  let stateDir: string | undefined;
  let token: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    if (a === '--listen' && v) listen = v;
    else if (a === '--state-dir' && v) stateDir = v;
    else if (a === '--token' && v) token = v;
    else
      throw new Error(
        `usage: kube-api-server --listen ip:port --state-dir DIR [--token T] (bad: ${a})`,
      );
    i++;
  }
  if (!stateDir) throw new Error('kube-api-server: --state-dir is required');
  stateDir = resolvePath(stateDir);
  const colon = listen.lastIndexOf(':');
  const host = listen.slice(0, colon).replace(/^\[|\]$/g, '');
  const port = Number(listen.slice(colon + 1));
  await mkdir(stateDir, { recursive: true });
  const server = await KubeApiServer.start({ host, port, ...(token !== undefined && { token }) });
  const objects = await loadObjectsDir(server, join(stateDir, 'objects'));
  const kubeconfig = await server.kubeconfig(join(stateDir, 'kubeconfig'));
  await writeFile(join(stateDir, 'ca.crt'), server.caPem);
  const control = join(stateDir, 'control.sock');
  const ctl = await serveControl(server, control);
  const shutdown = (): void => {
    ctl.close();
    void server.close().then(() => process.exit(0));
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  process.stdout.write(
    `${JSON.stringify({ event: 'listening', url: server.url, kubeconfig, control, objects })}\n`,
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolvePath(process.argv[1])).href) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`kube-api-server: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
