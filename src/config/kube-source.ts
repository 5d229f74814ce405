// config/kube-source.ts: the Kubernetes source. For every kind registered in TRANSLATORS it
// lists and then watches the API server (bookmarks on, relist on 410 Gone, reconnect with
// bounded, jittered exponential backoff), translates each object with translateRaw, keeps the
// last good version of an object that turns invalid, and publishes to a ConfigStore (the same
// store and the same events as FileSource), coalescing bursts of events into one update.
// It owns its connections to the API server and a merge-patch of pod annotations; it must
// not exit the process, create a logger, touch the kernel, hard-code the list of kinds, or
// publish a partial state before every kind has been listed once.
//
// Why not client-node's ListWatch/Informer (1.4): it cannot ask for bookmarks, stops for good
// on any error but 410 (no backoff), reconnects in a tight loop when the server closes a watch
// at once, and lists through the typed API, whose deserializer drops fields it does not know.
// So: lists are plain GETs authenticated by KubeConfig (the JSON the server sent, paginated),
// watches are client-node's Watch, and the reflector loop below does the bookkeeping.

import { existsSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import {
  CoreV1Api,
  KubeConfig,
  PatchStrategy,
  setHeaderOptions,
  Watch,
} from '@kubernetes/client-node';
import { TypedEmitter } from './emitter.js';
import type { ConfigError } from './errors.js';
import type { LoadReport } from './file-source.js';
import { isRecord } from './fields.js';
import type { Logger } from './logger.js';
import { isEmptyDiff, KINDS, type Kind, type ObjectRef, type TranslatedObject } from './model.js';
import type { ConfigStore } from './store.js';
import { TRANSLATORS, translateRaw } from './translate.js';

/** Where a pod's service account credentials are mounted. */
const SERVICE_ACCOUNT_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token';

/** The API resource a kind is read from. */
export interface KubeResource {
  readonly kind: Kind;
  /** '' for the core group. */
  readonly group: string;
  readonly version: string;
  /** `v1`, `discovery.k8s.io/v1`. */
  readonly apiVersion: string;
  /** Lowercase plural resource name: `pods`, `endpointslices`. */
  readonly plural: string;
  readonly namespaced: boolean;
  /** Cluster-wide collection path: `/api/v1/pods`, `/apis/discovery.k8s.io/v1/endpointslices`. */
  readonly path: string;
}

export interface KubeResourceOverride {
  /** Default: the translator's first accepted version. */
  readonly version?: string;
  /** Default: Kubernetes' own guess from the kind (`AuthorizationPolicy` -> `authorizationpolicies`). */
  readonly plural?: string;
}

/** Kubernetes' `UnsafeGuessKindToResource`: lowercase, then `s`/`es`/`ies`. */
export function guessPlural(kind: string): string {
  const lower = kind.toLowerCase();
  if (lower === '') return lower;
  if (lower.endsWith('s')) return `${lower}es`;
  if (lower.endsWith('y')) return `${lower.slice(0, -1)}ies`;
  return `${lower}s`;
}

/** The resource of a registered kind, from its translator (group, versions, scope). */
export function kubeResource(kind: Kind, override: KubeResourceOverride = {}): KubeResource {
  const t = TRANSLATORS[kind];
  const version = override.version ?? t.versions[0];
  if (version === undefined) throw new Error(`config: the ${kind} translator accepts no version`);
  const plural = override.plural ?? guessPlural(kind);
  const apiVersion = t.group === '' ? version : `${t.group}/${version}`;
  const path =
    t.group === '' ? `/api/${version}/${plural}` : `/apis/${t.group}/${version}/${plural}`;
  return { kind, group: t.group, version, apiVersion, plural, namespaced: t.namespaced, path };
}

/**
 * The KubeConfig weft uses when none is given: `kubeconfigPath` if set; in a pod (the
 * service account token is mounted and KUBERNETES_SERVICE_HOST is set) the in-cluster
 * config; else `KUBECONFIG` or `~/.kube/config`. Throws a readable error when there is none.
 */
export function loadKubeConfig(kubeconfigPath?: string): KubeConfig {
  const kc = new KubeConfig();
  if (kubeconfigPath !== undefined) {
    kc.loadFromFile(kubeconfigPath);
  } else if (process.env['KUBERNETES_SERVICE_HOST'] && existsSync(SERVICE_ACCOUNT_TOKEN)) {
    kc.loadFromCluster();
  } else if (process.env['KUBECONFIG'] || existsSync(join(homedir(), '.kube', 'config'))) {
    kc.loadFromDefault();
  } else {
    throw new Error(
      'kube: no Kubernetes configuration: not in a pod (KUBERNETES_SERVICE_HOST unset or no ' +
        `service account token at ${SERVICE_ACCOUNT_TOKEN}), KUBECONFIG unset and ~/.kube/config missing`,
    );
  }
  if (!kc.getCurrentCluster()) {
    throw new Error(
      `kube: the kubeconfig${kubeconfigPath ? ` ${kubeconfigPath}` : ''} has no current context/cluster`,
    );
  }
  return kc;
}

/** A failed API call, with the server URL and the cause in the message. */
export class KubeApiError extends Error {
  override readonly name = 'KubeApiError';
  constructor(
    message: string,
    /** API server URL. */
    readonly server: string,
    /** HTTP status; undefined for a network or TLS failure. */
    readonly statusCode: number | undefined,
    /** True when retrying cannot help (RBAC, authentication, TLS, unknown resource). */
    readonly fatal: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface KubeLoadReport extends LoadReport {
  /** Per kind: whether its initial list has completed. */
  readonly synced: Readonly<Record<string, boolean>>;
}

export interface KubeSourceEvents {
  /** After every publish to the store (the initial one, then each coalesced batch of events). */
  load: [report: KubeLoadReport];
  /**
   * When a batch brought new problems (an object that turned invalid, or changed its
   * problems). Without a listener, the source logs them with logger.warn.
   */
  errors: [errors: readonly ConfigError[], report: KubeLoadReport];
}

export interface KubeBackoff {
  /** First retry delay. Default 500 ms. */
  readonly initialMs?: number;
  /** Cap. Default 30 s. */
  readonly maxMs?: number;
}

export interface KubeSourceOptions {
  readonly store: ConfigStore;
  readonly logger: Logger;
  /** Explicit configuration (tests); otherwise loadKubeConfig(kubeconfigPath). */
  readonly kubeConfig?: KubeConfig;
  readonly kubeconfigPath?: string;
  /** Store source id. Default `kube`. */
  readonly sourceId?: string;
  /** Kinds to read. Default: every registered kind (KINDS). */
  readonly kinds?: readonly Kind[];
  /** Per-kind field selector, e.g. `{ Pod: 'spec.nodeName=node-1' }`. Default none. */
  readonly fieldSelectors?: Partial<Record<Kind, string>>;
  /** Per-kind label selector. Default none. */
  readonly labelSelectors?: Partial<Record<Kind, string>>;
  /** Per-kind version / plural overrides. */
  readonly resources?: Partial<Record<Kind, KubeResourceOverride>>;
  /**
   * Kinds whose resource may be absent (404, e.g. Istio CRDs not installed): read as empty
   * and re-checked every backoff.maxMs. Default none: a 404 fails start().
   */
  readonly optionalKinds?: readonly Kind[];
  /** Events are coalesced for this long before one store update. Default 50 ms. */
  readonly debounceMs?: number;
  readonly backoff?: KubeBackoff;
  /** start() gives up on transient failures (network, 5xx, 429) after this. Default 30 s. */
  readonly startTimeoutMs?: number;
  /** Bound on one list page, one patch, and on a watch's response headers. Default 30 s. */
  readonly requestTimeoutMs?: number;
  /** Server-side watch timeout. Default: random in [300, 600) s, like client-go. */
  readonly watchTimeoutSeconds?: number;
  /** Items per list page. Default 500. */
  readonly listPageSize?: number;
  /** A watch that delivered an event or lasted this long resets the backoff. Default 5 s. */
  readonly healthyWatchMs?: number;
}

export interface KubeKindStatus {
  readonly kind: Kind;
  readonly path: string;
  /** The initial list completed (stays true across relists). */
  readonly synced: boolean;
  /** Last resourceVersion seen (list, event or bookmark); '' when a relist is due. */
  readonly resourceVersion: string;
  /** Objects in force for this kind (last good versions included). */
  readonly objects: number;
  readonly lists: number;
  readonly watches: number;
  /** Relists after 410 Gone. */
  readonly relists: number;
  /** Failed lists and watches. */
  readonly failures: number;
  readonly watching: boolean;
  /** Optional kind whose resource the server does not serve. */
  readonly missing: boolean;
  readonly lastError?: string;
}

interface Deferred {
  readonly promise: Promise<void>;
  resolve(): void;
  reject(err: unknown): void;
  settled: boolean;
}

interface KindState {
  readonly res: KubeResource;
  readonly fieldSelector: string | undefined;
  readonly labelSelector: string | undefined;
  readonly optional: boolean;
  readonly firstSync: Deferred;
  /** objectKey -> last good translation. */
  readonly objects: Map<string, TranslatedObject>;
  /** objectKey -> text of its current problems (to report only changes). */
  readonly problems: Map<string, string>;
  synced: boolean;
  missing: boolean;
  resourceVersion: string;
  attempt: number;
  watching: boolean;
  lists: number;
  watches: number;
  relists: number;
  failures: number;
  lastError: string | undefined;
  /** Ends the watch in progress, if any. */
  abortWatch: (() => void) | undefined;
}

type WatchEnd =
  | { readonly how: 'closed' }
  | { readonly how: 'gone' }
  | { readonly how: 'stopped' }
  | { readonly how: 'error'; readonly err: unknown };

/** HTTP statuses worth retrying during start(). */
const TRANSIENT_STATUS = new Set([408, 429, 500, 502, 503, 504]);

/**
 * Feeds a ConfigStore from the Kubernetes API. Last good state: an object whose new version
 * is invalid keeps its previous valid version (reported through 'errors'); a deleted object
 * is removed; pods not yet scheduled or without an IP are left out silently.
 */
export class KubeSource extends TypedEmitter<KubeSourceEvents> {
  readonly sourceId: string;
  /** API server URL. */
  readonly server: string;
  private readonly kc: KubeConfig;
  private readonly store: ConfigStore;
  private readonly logger: Logger;
  private readonly watcher: Watch;
  private readonly states: KindState[];
  private readonly debounceMs: number;
  private readonly backoffInitialMs: number;
  private readonly backoffMaxMs: number;
  private readonly startTimeoutMs: number;
  private readonly requestTimeoutMs: number;
  private readonly watchTimeoutSeconds: number | undefined;
  private readonly listPageSize: number;
  private readonly healthyWatchMs: number;

  private started = false;
  private stopped = false;
  private startedAt = 0;
  private published = false;
  private debounceTimer: NodeJS.Timeout | undefined;
  private batchErrors: ConfigError[] = [];
  private batchKept: ObjectRef[] = [];
  private dirty = false;
  private readonly sleepers = new Set<{ timer: NodeJS.Timeout; wake: () => void }>();
  private readonly requests = new Set<http.ClientRequest>();
  private readonly loops: Promise<void>[] = [];

  constructor(options: KubeSourceOptions) {
    super((err, event) =>
      options.logger.error({ err, event }, 'config: a kube source listener threw'),
    );
    this.kc = options.kubeConfig ?? loadKubeConfig(options.kubeconfigPath);
    const cluster = this.kc.getCurrentCluster();
    if (!cluster) throw new Error('kube: the KubeConfig has no current cluster');
    this.server = cluster.server.replace(/\/+$/, '');
    if (!this.kc.getCurrentUser()) {
      options.logger.warn(
        { server: this.server },
        'kube: the kubeconfig context has no user; @kubernetes/client-node then ignores the cluster CA too',
      );
    }
    this.sourceId = options.sourceId ?? 'kube';
    this.store = options.store;
    this.logger = options.logger;
    this.watcher = new Watch(this.kc);
    this.debounceMs = options.debounceMs ?? 50;
    this.backoffInitialMs = options.backoff?.initialMs ?? 500;
    this.backoffMaxMs = Math.max(this.backoffInitialMs, options.backoff?.maxMs ?? 30_000);
    this.startTimeoutMs = options.startTimeoutMs ?? 30_000;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
    this.watchTimeoutSeconds = options.watchTimeoutSeconds;
    this.listPageSize = options.listPageSize ?? 500;
    this.healthyWatchMs = options.healthyWatchMs ?? 5000;
    const kinds = options.kinds ?? KINDS;
    const optional = new Set<Kind>(options.optionalKinds ?? []);
    this.states = [...new Set(kinds)].map((kind) => ({
      res: kubeResource(kind, options.resources?.[kind]),
      fieldSelector: options.fieldSelectors?.[kind],
      labelSelector: options.labelSelectors?.[kind],
      optional: optional.has(kind),
      firstSync: deferred(),
      objects: new Map(),
      problems: new Map(),
      synced: false,
      missing: false,
      resourceVersion: '',
      attempt: 0,
      watching: false,
      lists: 0,
      watches: 0,
      relists: 0,
      failures: 0,
      lastError: undefined,
      abortWatch: undefined,
    }));
  }

  /**
   * Lists every kind, publishes the result once, then keeps watching. Rejects (after
   * stopping) when a kind cannot be listed: at once for RBAC, authentication, TLS or an
   * unknown resource; after startTimeoutMs of retries for network errors and 5xx.
   */
  async start(): Promise<KubeLoadReport> {
    if (this.started) throw new Error('KubeSource.start() called twice');
    this.started = true;
    this.startedAt = Date.now();
    for (const ks of this.states) this.loops.push(this.run(ks));
    try {
      await Promise.all(this.states.map((ks) => ks.firstSync.promise));
    } catch (err) {
      await this.stop();
      throw err;
    }
    if (this.stopped) throw new Error('KubeSource stopped before its initial list completed');
    this.published = true;
    const report = this.publish(true);
    this.logger.info(
      {
        server: this.server,
        generation: report.generation,
        objects: report.objects.length,
        errors: report.errors.length,
      },
      'config: kube source synced',
    );
    return report;
  }

  /** Stops every watch, list and timer; publishes nothing after. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.debounceTimer) clearTimeout(this.debounceTimer);
    this.debounceTimer = undefined;
    for (const s of this.sleepers) {
      clearTimeout(s.timer);
      s.wake();
    }
    this.sleepers.clear();
    for (const req of this.requests) req.destroy(new Error('kube source stopped'));
    for (const ks of this.states) {
      ks.abortWatch?.();
      settle(ks.firstSync, new Error('KubeSource stopped before its initial list completed'));
    }
    await Promise.allSettled(this.loops);
  }

  /** True once every kind has been listed. */
  get synced(): boolean {
    return this.states.every((ks) => ks.synced);
  }

  /** Per-kind state, for status pages and tests. */
  status(): Readonly<Record<string, KubeKindStatus>> {
    const out: Record<string, KubeKindStatus> = {};
    for (const ks of this.states) {
      out[ks.res.kind] = {
        kind: ks.res.kind,
        path: ks.res.path,
        synced: ks.synced,
        resourceVersion: ks.resourceVersion,
        objects: ks.objects.size,
        lists: ks.lists,
        watches: ks.watches,
        relists: ks.relists,
        failures: ks.failures,
        watching: ks.watching,
        missing: ks.missing,
        ...(ks.lastError !== undefined && { lastError: ks.lastError }),
      };
    }
    return out;
  }

  /**
   * Sets (or with null removes) one annotation of a pod with a JSON merge patch. The change
   * comes back through the watch like any other. Rejects with a KubeApiError.
   */
  async patchPodAnnotation(
    namespace: string,
    name: string,
    key: string,
    value: string | null,
  ): Promise<void> {
    const api = this.kc.makeApiClient(CoreV1Api);
    const body = { metadata: { annotations: { [key]: value } } };
    const what = `patch pod ${namespace}/${name}`;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        api.patchNamespacedPod(
          { name, namespace, body },
          // Without this header client-node 1.4 sends application/json-patch+json.
          setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
        ),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`no answer within ${this.requestTimeoutMs} ms`)),
            this.requestTimeoutMs,
          );
        }),
      ]);
    } catch (err) {
      const apiErr = err as { code?: unknown; body?: unknown };
      if (typeof apiErr.code === 'number') {
        throw this.statusError(
          what,
          'may not patch pods',
          apiErr.code,
          parseBody(apiErr.body),
          'no such pod',
        );
      }
      throw this.networkError(what, err);
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  // --------------------------------------------------------------------------------------
  // The reflector loop: list when no resourceVersion is held, then watch; back off on failure.

  private async run(ks: KindState): Promise<void> {
    while (!this.stopped) {
      if (ks.attempt > 0) {
        let delay = this.backoffDelay(ks.attempt);
        if (!ks.synced) delay = Math.min(delay, this.startDeadline() - Date.now());
        await this.sleep(Math.max(0, delay));
        if (this.stopped) return;
      }
      try {
        if (ks.resourceVersion === '' || ks.missing) {
          await this.list(ks);
          if (this.stopped) return;
          if (ks.missing) {
            await this.sleep(this.backoffMaxMs);
            continue;
          }
        }
        const started = Date.now();
        let events = 0;
        const end = await this.watchOnce(ks, () => events++);
        const healthy = events > 0 || Date.now() - started >= this.healthyWatchMs;
        if (end.how === 'stopped' || this.stopped) return;
        ks.attempt = healthy ? 0 : ks.attempt + 1;
        if (end.how === 'gone') {
          ks.relists++;
          ks.resourceVersion = '';
          this.logger.debug(
            { kind: ks.res.kind, server: this.server },
            'kube: resourceVersion expired (410 Gone); relisting',
          );
        } else if (end.how === 'error') {
          const e = this.toKubeError(`watch ${ks.res.plural}`, ks, end.err);
          ks.failures++;
          ks.lastError = e.message;
          this.logFailure(ks, e);
        }
      } catch (err) {
        const e = this.toKubeError(`list ${ks.res.plural}`, ks, err);
        if (this.stopped) return;
        ks.failures++;
        ks.lastError = e.message;
        if (!ks.synced && (e.fatal || Date.now() >= this.startDeadline())) {
          settle(ks.firstSync, e);
          return;
        }
        ks.attempt++;
        this.logFailure(ks, e);
      }
    }
  }

  private startDeadline(): number {
    return this.startedAt + this.startTimeoutMs;
  }

  /** Exponential from initialMs, capped at maxMs, with "equal jitter" (half fixed, half random). */
  private backoffDelay(attempt: number): number {
    const d = Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** Math.min(attempt - 1, 30));
    return d / 2 + Math.random() * (d / 2);
  }

  private logFailure(ks: KindState, e: KubeApiError): void {
    // The first failure in a row is a warning; the retries after it are debug noise.
    const level = ks.attempt <= 1 ? 'warn' : 'debug';
    this.logger[level](
      { kind: ks.res.kind, server: this.server, attempt: ks.attempt, status: e.statusCode },
      e.message,
    );
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const entry = {
        timer: setTimeout(() => {
          this.sleepers.delete(entry);
          resolve();
        }, ms),
        wake: resolve,
      };
      this.sleepers.add(entry);
    });
  }

  private async list(ks: KindState): Promise<void> {
    const items: unknown[] = [];
    let cont: string | undefined;
    let rv = '';
    for (;;) {
      const q = new URLSearchParams();
      q.set('limit', String(this.listPageSize));
      if (cont !== undefined) q.set('continue', cont);
      if (ks.fieldSelector !== undefined) q.set('fieldSelector', ks.fieldSelector);
      if (ks.labelSelector !== undefined) q.set('labelSelector', ks.labelSelector);
      const r = await this.getJson(ks.res.path, q);
      if (this.stopped) return;
      if (r.status === 410 && cont !== undefined) {
        // The continue token expired between pages: start the list over.
        items.length = 0;
        cont = undefined;
        continue;
      }
      if (r.status === 404 && ks.optional) {
        if (!ks.missing) {
          this.logger.info(
            { kind: ks.res.kind, server: this.server },
            `kube: the API server does not serve ${ks.res.apiVersion} ${ks.res.plural}; reading none`,
          );
        }
        ks.missing = true;
        ks.lists++;
        this.replaceAll(ks, [], '');
        return;
      }
      if (r.status !== 200) {
        throw this.statusError(
          `list ${resourceName(ks.res)}`,
          `may not list ${resourceName(ks.res)}`,
          r.status,
          r.body,
        );
      }
      const body = r.body;
      const pageItems = isRecord(body) ? body['items'] : undefined;
      if (!isRecord(body) || !(Array.isArray(pageItems) || pageItems == null)) {
        throw new KubeApiError(
          `Kubernetes API ${this.server}: cannot list ${ks.res.plural}: the answer is not a list`,
          this.server,
          r.status,
          false,
        );
      }
      if (Array.isArray(pageItems)) items.push(...(pageItems as unknown[]));
      const meta = isRecord(body['metadata']) ? body['metadata'] : {};
      if (typeof meta['resourceVersion'] === 'string') rv = meta['resourceVersion'];
      const next = meta['continue'];
      if (typeof next !== 'string' || next === '') break;
      cont = next;
    }
    if (ks.missing) {
      this.logger.info({ kind: ks.res.kind }, `kube: the API server now serves ${ks.res.plural}`);
    }
    ks.missing = false;
    ks.lists++;
    this.replaceAll(ks, items, rv);
  }

  private watchOnce(ks: KindState, onEvent: () => void): Promise<WatchEnd> {
    return new Promise((resolve) => {
      let finished = false;
      let controller: AbortController | undefined;
      let timer: NodeJS.Timeout | undefined;
      const serverTimeout = this.watchTimeoutSeconds ?? Math.floor(300 + Math.random() * 300);
      // No line at all for this long (bookmarks included) means a dead connection.
      const idleMs = serverTimeout * 1000 + 30_000;
      const finish = (end: WatchEnd): void => {
        if (finished) return;
        finished = true;
        if (timer) clearTimeout(timer);
        ks.watching = false;
        ks.abortWatch = undefined;
        controller?.abort();
        resolve(end);
      };
      const arm = (ms: number, what: string): void => {
        if (timer) clearTimeout(timer);
        timer = setTimeout(() => finish({ how: 'error', err: new Error(what) }), ms);
      };
      ks.abortWatch = () => finish({ how: 'stopped' });
      ks.watches++;
      // Until the response headers arrive, the request timeout applies.
      arm(this.requestTimeoutMs, `no answer within ${this.requestTimeoutMs} ms`);

      const query: Record<string, string | number | boolean> = {
        allowWatchBookmarks: true,
        resourceVersion: ks.resourceVersion,
        timeoutSeconds: serverTimeout,
      };
      if (ks.fieldSelector !== undefined) query['fieldSelector'] = ks.fieldSelector;
      if (ks.labelSelector !== undefined) query['labelSelector'] = ks.labelSelector;

      const onLine = (type: string, obj: unknown): void => {
        if (finished) return;
        arm(idleMs, `watch idle for ${idleMs} ms`);
        // client-node's Watch swallows exceptions thrown here: handle them ourselves.
        try {
          this.onWatchEvent(ks, type, obj, onEvent, finish);
        } catch (err) {
          this.logger.error({ err, kind: ks.res.kind }, 'kube: handling a watch event failed');
        }
      };
      const onDone = (err: unknown): void => {
        if (finished) return;
        if (err && isGone(err)) finish({ how: 'gone' });
        else if (err) finish({ how: 'error', err });
        else finish({ how: 'closed' });
      };
      this.watcher.watch(ks.res.path, query, onLine, onDone).then(
        (c) => {
          controller = c;
          if (finished) c.abort();
          else {
            ks.watching = true;
            arm(idleMs, `watch idle for ${idleMs} ms`);
          }
        },
        (err: unknown) => finish({ how: 'error', err }),
      );
    });
  }

  private onWatchEvent(
    ks: KindState,
    type: string,
    obj: unknown,
    onEvent: () => void,
    finish: (end: WatchEnd) => void,
  ): void {
    if (type === 'ERROR') {
      const status = isRecord(obj) ? obj : {};
      if (status['code'] === 410) finish({ how: 'gone' });
      else {
        const code = typeof status['code'] === 'number' ? status['code'] : undefined;
        finish({
          how: 'error',
          err: this.statusError(
            `watch ${ks.res.plural}`,
            `may not watch ${resourceName(ks.res)}`,
            code ?? 0,
            status,
          ),
        });
      }
      return;
    }
    if (!isRecord(obj)) return;
    const meta = isRecord(obj['metadata']) ? obj['metadata'] : {};
    const rv = typeof meta['resourceVersion'] === 'string' ? meta['resourceVersion'] : undefined;
    switch (type) {
      case 'ADDED':
      case 'MODIFIED':
        this.applyObject(ks, obj);
        break;
      case 'DELETED':
        this.removeObject(ks, obj);
        break;
      case 'BOOKMARK':
        break;
      default:
        this.logger.debug({ kind: ks.res.kind, type }, 'kube: ignoring an unknown watch event');
        return;
    }
    onEvent();
    if (rv !== undefined && rv !== '') ks.resourceVersion = rv;
    if (type !== 'BOOKMARK') this.schedulePublish();
  }

  // --------------------------------------------------------------------------------------
  // Objects: translation, last good versions, problems.

  /** objectKey of a raw API object, or undefined when it has no usable name. */
  private keyOf(ks: KindState, raw: Readonly<Record<string, unknown>>): string | undefined {
    const meta = isRecord(raw['metadata']) ? raw['metadata'] : {};
    const name = meta['name'];
    if (typeof name !== 'string' || name === '') return undefined;
    if (!ks.res.namespaced) return name;
    const ns = meta['namespace'];
    return `${typeof ns === 'string' && ns !== '' ? ns : 'default'}/${name}`;
  }

  /** Translates one object into the kind's map; returns its key (undefined if unnamed). */
  private applyObject(ks: KindState, raw: Readonly<Record<string, unknown>>): string | undefined {
    const key = this.keyOf(ks, raw);
    if (key !== undefined && skipObject(ks.res.kind, raw)) {
      if (ks.objects.delete(key)) this.dirty = true;
      this.clearProblems(ks, key);
      return key;
    }
    // List items come without apiVersion and kind.
    const full = {
      ...raw,
      apiVersion: raw['apiVersion'] ?? ks.res.apiVersion,
      kind: raw['kind'] ?? ks.res.kind,
    };
    const source = `kube:${ks.res.kind}/${key ?? '?'}`;
    const r = translateRaw(full, { source, logger: this.logger });
    const obj = r.objects.find((o) => o.kind === ks.res.kind);
    if (obj !== undefined && r.errors.length === 0) {
      if (key !== undefined) {
        const prev = ks.objects.get(key);
        ks.objects.set(key, obj);
        if (prev === undefined || !sameObject(prev, obj)) this.dirty = true;
        this.clearProblems(ks, key);
      }
      return key;
    }
    if (r.errors.length === 0) {
      // Not something the translator reads (e.g. another group): leave it out.
      this.logger.debug({ kind: ks.res.kind, key }, 'kube: ignoring an object');
      if (key !== undefined && ks.objects.delete(key)) this.dirty = true;
      return key;
    }
    const text = r.errors.map((e) => e.toString()).join('\n');
    const problemKey = key ?? `?${text}`;
    if (ks.problems.get(problemKey) !== text) {
      ks.problems.set(problemKey, text);
      this.batchErrors.push(...r.errors);
      this.dirty = true;
      const kept = key !== undefined ? ks.objects.get(key) : undefined;
      if (kept !== undefined) this.batchKept.push(kept.ref);
    }
    return key;
  }

  private removeObject(ks: KindState, raw: Readonly<Record<string, unknown>>): void {
    const key = this.keyOf(ks, raw);
    if (key === undefined) return;
    if (ks.objects.delete(key)) this.dirty = true;
    this.clearProblems(ks, key);
  }

  private clearProblems(ks: KindState, key: string): void {
    ks.problems.delete(key);
  }

  /** A full list: every object is (re)translated; what the list lacks is gone. */
  private replaceAll(ks: KindState, items: readonly unknown[], rv: string): void {
    const seen = new Set<string>();
    for (const item of items) {
      if (!isRecord(item)) continue;
      const key = this.applyObject(ks, item);
      if (key !== undefined) seen.add(key);
    }
    for (const key of [...ks.objects.keys()]) {
      if (!seen.has(key)) {
        ks.objects.delete(key);
        this.dirty = true;
      }
    }
    for (const key of [...ks.problems.keys()]) if (!seen.has(key)) ks.problems.delete(key);
    ks.resourceVersion = rv;
    if (!ks.synced) {
      ks.synced = true;
      settle(ks.firstSync);
    }
    this.schedulePublish();
  }

  // --------------------------------------------------------------------------------------
  // Publishing.

  private schedulePublish(): void {
    if (!this.published || this.stopped || this.debounceTimer || !this.dirty) return;
    // A fixed window from the first change: a steady stream of events still publishes.
    this.debounceTimer = setTimeout(() => {
      this.debounceTimer = undefined;
      if (!this.stopped) this.publish(false);
    }, this.debounceMs);
    this.debounceTimer.unref();
  }

  private publish(initial: boolean): KubeLoadReport {
    const objects: TranslatedObject[] = [];
    for (const ks of this.states) objects.push(...ks.objects.values());
    const errors = this.batchErrors;
    const kept = this.batchKept;
    this.batchErrors = [];
    this.batchKept = [];
    this.dirty = false;
    const diff = this.store.replaceFromSource(this.sourceId, objects);
    const synced: Record<string, boolean> = {};
    for (const ks of this.states) synced[ks.res.kind] = ks.synced;
    const report: KubeLoadReport = {
      objects,
      errors,
      kept,
      files: [],
      read: [],
      parsed: [],
      initial,
      generation: this.store.generation,
      diff,
      synced,
    };
    if (initial || !isEmptyDiff(diff) || errors.length > 0) {
      if (!initial) {
        this.logger.debug(
          { generation: report.generation, objects: objects.length, errors: errors.length },
          'config: kube source published',
        );
      }
      this.emit('load', report);
    }
    if (errors.length > 0) {
      if (this.listenerCount('errors') > 0) this.emit('errors', errors, report);
      else for (const e of errors) this.logger.warn({ error: e.toJSON() }, e.toString());
    }
    return report;
  }

  // --------------------------------------------------------------------------------------
  // HTTP.

  /** A GET authenticated by the KubeConfig (token, client cert, exec plugin), raw JSON back. */
  private async getJson(
    path: string,
    query: URLSearchParams,
  ): Promise<{ status: number; body: unknown }> {
    const url = new URL(this.server + path);
    url.search = query.toString();
    const opts: https.RequestOptions = {
      method: 'GET',
      headers: { Accept: 'application/json' },
    };
    await this.kc.applyToHTTPSOptions(opts);
    if (this.stopped) throw new Error('kube source stopped');
    return new Promise((resolve, reject) => {
      const mod = url.protocol === 'http:' ? http : https;
      const req = mod.request(url, opts, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          this.requests.delete(req);
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode ?? 0, body: parseBody(text) });
        });
      });
      this.requests.add(req);
      req.setTimeout(this.requestTimeoutMs, () =>
        req.destroy(new Error(`no answer within ${this.requestTimeoutMs} ms`)),
      );
      req.on('error', (err) => {
        this.requests.delete(req);
        reject(err);
      });
      req.end();
    });
  }

  private toKubeError(what: string, ks: KindState, err: unknown): KubeApiError {
    if (err instanceof KubeApiError) return err;
    const status = (err as { statusCode?: unknown }).statusCode;
    if (typeof status === 'number') {
      const verb = what.split(' ')[0] ?? 'read';
      return this.statusError(what, `may not ${verb} ${resourceName(ks.res)}`, status, undefined);
    }
    return this.networkError(what, err);
  }

  private statusError(
    what: string,
    rbac: string,
    status: number,
    body: unknown,
    notFound = 'the API server does not serve this resource (CRD not installed?)',
  ): KubeApiError {
    const serverSays =
      isRecord(body) && typeof body['message'] === 'string' ? body['message'] : undefined;
    const reason = http.STATUS_CODES[status] ?? 'error';
    let cause: string;
    let fatal = !TRANSIENT_STATUS.has(status);
    switch (status) {
      case 401:
        cause = '401 Unauthorized: the token or client certificate was rejected';
        break;
      case 403:
        cause = `403 Forbidden: RBAC: weft's ServiceAccount ${rbac}`;
        break;
      case 404:
        cause = `404 Not Found: ${notFound}`;
        break;
      case 0:
        cause = 'error event without a status code';
        fatal = false;
        break;
      default:
        cause = `${status} ${reason}`;
    }
    const says = serverSays !== undefined ? ` (server: ${serverSays})` : '';
    return new KubeApiError(
      `Kubernetes API ${this.server}: cannot ${what}: ${cause}${says}`,
      this.server,
      status === 0 ? undefined : status,
      fatal,
    );
  }

  private networkError(what: string, err: unknown): KubeApiError {
    const e = err as { code?: unknown; message?: unknown };
    const code = typeof e.code === 'string' ? e.code : undefined;
    const msg = typeof e.message === 'string' ? e.message : String(err);
    const tls = code !== undefined && /CERT|SELF_SIGNED|SSL|TLS|UNABLE_TO_/.test(code);
    const cause = tls
      ? `TLS: ${msg} (check the cluster CA in the kubeconfig and the server name)`
      : code !== undefined && !msg.includes(code)
        ? `${code}: ${msg}`
        : msg;
    return new KubeApiError(
      `Kubernetes API ${this.server}: cannot ${what}: ${cause}`,
      this.server,
      undefined,
      tls,
      { cause: err },
    );
  }
}

// ---------------------------------------------------------------------------------------

/** Pods not scheduled yet, or without an IP yet (and not hostNetwork): nothing to route to. */
function skipObject(kind: string, raw: Readonly<Record<string, unknown>>): boolean {
  if (kind !== 'Pod') return false;
  const spec = isRecord(raw['spec']) ? raw['spec'] : {};
  const status = isRecord(raw['status']) ? raw['status'] : {};
  const nodeName = spec['nodeName'];
  if (nodeName === undefined || nodeName === null || nodeName === '') return true;
  const ip = status['podIP'];
  const hostNetwork = spec['hostNetwork'] === true;
  return !hostNetwork && (ip === undefined || ip === null || ip === '');
}

function sameObject(a: TranslatedObject, b: TranslatedObject): boolean {
  return isDeepStrictEqual(a.value, b.value) && a.origin.source === b.origin.source;
}

function resourceName(res: KubeResource): string {
  return res.group === '' ? res.plural : `${res.plural}.${res.group}`;
}

function isGone(err: unknown): boolean {
  const e = err as { statusCode?: unknown; code?: unknown };
  return e.statusCode === 410 || e.code === 410;
}

function parseBody(body: unknown): unknown {
  if (typeof body !== 'string') return body;
  try {
    return JSON.parse(body);
  } catch {
    return body;
  }
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {}); // observed through start(); never an unhandled rejection
  return { promise, resolve, reject, settled: false };
}

function settle(d: Deferred, err?: unknown): void {
  if (d.settled) return;
  d.settled = true;
  if (err === undefined) d.resolve();
  else d.reject(err);
}
