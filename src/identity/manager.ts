// identity/manager.ts: CertificateManager, the node proxy's wallet of workload certificates:
// exactly one SVID per identity that has a pod on this node (the caller says which with
// setWanted), minted on demand, renewed at half life, retried with bounded exponential
// backoff, and served as TLS secure contexts. Keys stay in memory. It must not decide which
// pods are local (the caller does), open sockets, or keep state outside the instance.

import { EventEmitter } from 'node:events';
import { createSecureContext, type SecureContext, type SecureContextOptions } from 'node:tls';
import type { Issuer } from './ca.js';
import { mintSvid, type Svid } from './svid.js';
import { DEFAULT_TRUST_DOMAIN, spiffeIdFor, toSpiffeId, type SpiffeId } from './spiffe.js';
import { TrustBundles } from './trust.js';

export const DEFAULT_CERT_TTL_MS = 24 * 60 * 60 * 1000;
export const DEFAULT_BACKOFF = { initialMs: 1000, maxMs: 60_000 } as const;
/** Renewal is never scheduled sooner than this after a successful mint. */
const MIN_RENEW_DELAY_MS = 100;

/** One identity a local pod needs; a config Workload fits as is. */
export interface WorkloadIdentity {
  readonly namespace: string;
  readonly serviceAccount: string;
}

/** Time and timers, injectable for tests. Timers must not keep the process alive. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms).unref(),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** The logger shape identity/ accepts (a subset of pino's). */
export interface IdentityLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export type MintFn = (spiffeId: SpiffeId, ttlMs: number, now: Date) => Promise<Svid>;

export interface CertificateManagerOptions {
  /** Signs the certificates (unless `mint` is given). */
  issuer?: Issuer;
  /** Replaces mintSvid(issuer, ...): for tests, and for a future CA service client. */
  mint?: MintFn;
  /** Our own trust domain; default cluster.local. */
  trustDomain?: string;
  /** Source of the `ca` of every secure context (our own trust domain's bundle only). Default: the issuer's roots. */
  bundles?: TrustBundles;
  /** Certificate lifetime; default 24 h. */
  ttlMs?: number;
  /** Retry delays after a failed mint: initialMs, doubled per failure, capped at maxMs. */
  backoff?: { initialMs?: number; maxMs?: number };
  clock?: Clock;
  logger?: IdentityLogger;
  /** Extra secure context options (ciphers, sigalgs...); key, cert, ca and minVersion are ours. */
  secureContextOptions?: SecureContextOptions;
}

export interface CurrentCertificate {
  readonly svid: Svid;
  /** key + chain of the SVID, ca = our trust domain's roots, TLS 1.3 only. */
  readonly secureContext: SecureContext;
}

/** What /config_dump may show: never keys. */
export interface CertificateInfo {
  readonly spiffeId: string;
  readonly state: 'ready' | 'pending' | 'retrying' | 'expired';
  readonly serial?: string;
  readonly notBefore?: string;
  readonly notAfter?: string;
  readonly renewAt?: string;
  readonly failures: number;
  readonly lastError?: string;
  readonly retryAt?: string;
}

export interface RotatedEvent {
  readonly spiffeId: string;
  readonly serial: string;
  readonly notAfter: Date;
  /** Undefined for the first certificate of an identity. */
  readonly previousSerial?: string;
}

export interface MintFailedEvent {
  readonly spiffeId: string;
  readonly error: Error;
  /** Consecutive failures so far, this one included. */
  readonly failures: number;
  readonly retryInMs: number;
}

export type CertificateManagerEvents = {
  rotated: [RotatedEvent];
  mintFailed: [MintFailedEvent];
  dropped: [{ readonly spiffeId: string }];
};

interface Entry {
  readonly id: SpiffeId;
  current?: CurrentCertificate & { readonly renewAt: number };
  timer?: unknown;
  inflight: boolean;
  failures: number;
  lastError?: string;
  retryAt?: number;
}

export class CertificateManager extends EventEmitter<CertificateManagerEvents> {
  readonly trustDomain: string;
  readonly ttlMs: number;
  readonly #mint: MintFn;
  readonly #ca: string;
  readonly #clock: Clock;
  readonly #backoff: { initialMs: number; maxMs: number };
  readonly #logger: IdentityLogger | undefined;
  readonly #extra: SecureContextOptions;
  readonly #entries = new Map<string, Entry>();
  #closed = false;

  constructor(opts: CertificateManagerOptions) {
    super();
    this.trustDomain = opts.trustDomain ?? DEFAULT_TRUST_DOMAIN;
    this.ttlMs = opts.ttlMs ?? DEFAULT_CERT_TTL_MS;
    if (!(Number.isFinite(this.ttlMs) && this.ttlMs > 0))
      throw new RangeError(`ttlMs must be a positive number, got ${this.ttlMs}`);
    const issuer = opts.issuer;
    if (opts.mint !== undefined) this.#mint = opts.mint;
    else if (issuer !== undefined)
      this.#mint = (spiffeId, ttlMs, now) => mintSvid(issuer, { spiffeId, ttlMs, now });
    else throw new TypeError('CertificateManager needs an issuer or a mint function');
    const bundles =
      opts.bundles ??
      (issuer !== undefined ? new TrustBundles([[this.trustDomain, issuer.roots]]) : undefined);
    const ca = bundles?.pem(this.trustDomain);
    if (ca === undefined)
      throw new Error(`no trust bundle for our own trust domain ${this.trustDomain}`);
    this.#ca = ca;
    this.#clock = opts.clock ?? systemClock;
    this.#backoff = {
      initialMs: opts.backoff?.initialMs ?? DEFAULT_BACKOFF.initialMs,
      maxMs: opts.backoff?.maxMs ?? DEFAULT_BACKOFF.maxMs,
    };
    this.#logger = opts.logger;
    this.#extra = opts.secureContextOptions ?? {};
  }

  /**
   * The identities of the pods on this node. Mints the missing ones (asynchronously) and
   * drops the certificates of identities no longer listed.
   */
  setWanted(ids: Iterable<WorkloadIdentity>): void {
    if (this.#closed) throw new Error('CertificateManager is closed');
    const wanted = new Map<string, SpiffeId>();
    for (const w of ids) {
      try {
        const id = spiffeIdFor(this.trustDomain, w.namespace, w.serviceAccount);
        wanted.set(id.uri, id);
      } catch (err) {
        this.#logger?.warn(
          { namespace: w.namespace, serviceAccount: w.serviceAccount, err: (err as Error).message },
          'no certificate for an invalid identity',
        );
      }
    }
    for (const [uri, entry] of this.#entries) {
      if (wanted.has(uri)) continue;
      this.#drop(uri, entry);
    }
    for (const [uri, id] of wanted) {
      if (this.#entries.has(uri)) continue;
      const entry: Entry = { id, inflight: false, failures: 0 };
      this.#entries.set(uri, entry);
      this.#logger?.debug({ spiffeId: uri }, 'identity wanted');
      this.#issue(entry);
    }
  }

  /** The valid certificate of `spiffeId` and its secure context; undefined if none (yet). */
  current(spiffeId: SpiffeId | string): CurrentCertificate | undefined {
    const uri = typeof spiffeId === 'string' ? spiffeId : spiffeId.uri;
    const cur = this.#entries.get(uri)?.current;
    if (cur === undefined || this.#clock.now() >= cur.svid.notAfter.getTime()) return undefined;
    return { svid: cur.svid, secureContext: cur.secureContext };
  }

  /**
   * Resolves with the current certificate of a wanted identity once there is one; rejects
   * when the identity is not wanted, gets dropped, the manager closes, or `timeoutMs` passes.
   */
  ready(spiffeId: SpiffeId | string, timeoutMs?: number): Promise<CurrentCertificate> {
    const uri = toSpiffeId(spiffeId).uri;
    const now = this.current(uri);
    if (now !== undefined) return Promise.resolve(now);
    if (!this.#entries.has(uri))
      return Promise.reject(new Error(`${uri} is not an identity of this node`));
    return new Promise((resolve, reject) => {
      let timer: unknown;
      const cleanup = (): void => {
        this.off('rotated', onRotated);
        this.off('dropped', onDropped);
        if (timer !== undefined) this.#clock.clearTimeout(timer);
      };
      const onRotated = (e: RotatedEvent): void => {
        const cur = e.spiffeId === uri ? this.current(uri) : undefined;
        if (cur === undefined) return;
        cleanup();
        resolve(cur);
      };
      const onDropped = (e: { spiffeId: string }): void => {
        if (e.spiffeId !== uri) return;
        cleanup();
        reject(new Error(`${uri} was dropped (no longer wanted, or the manager closed)`));
      };
      this.on('rotated', onRotated);
      this.on('dropped', onDropped);
      if (timeoutMs !== undefined)
        timer = this.#clock.setTimeout(() => {
          cleanup();
          const e = this.#entries.get(uri);
          reject(
            new Error(
              `no certificate for ${uri} after ${timeoutMs} ms${e?.lastError !== undefined ? `: ${e.lastError}` : ''}`,
            ),
          );
        }, timeoutMs);
    });
  }

  /** Every wanted identity and its certificate's public facts, sorted by SPIFFE ID. */
  list(): CertificateInfo[] {
    const now = this.#clock.now();
    const iso = (ms: number | undefined): string | undefined =>
      ms === undefined ? undefined : new Date(ms).toISOString();
    return [...this.#entries.values()]
      .sort((a, b) => (a.id.uri < b.id.uri ? -1 : a.id.uri > b.id.uri ? 1 : 0))
      .map((e): CertificateInfo => {
        const s = e.current?.svid;
        const state =
          s === undefined
            ? e.failures > 0
              ? 'retrying'
              : 'pending'
            : now >= s.notAfter.getTime()
              ? 'expired'
              : 'ready';
        return {
          spiffeId: e.id.uri,
          state,
          serial: s?.serial,
          notBefore: s?.notBefore.toISOString(),
          notAfter: s?.notAfter.toISOString(),
          renewAt: iso(e.current?.renewAt),
          failures: e.failures,
          lastError: e.lastError,
          retryAt: iso(e.retryAt),
        };
      });
  }

  /** Stops every timer and forgets every certificate. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const [uri, entry] of this.#entries) this.#drop(uri, entry);
  }

  #drop(uri: string, entry: Entry): void {
    if (entry.timer !== undefined) this.#clock.clearTimeout(entry.timer);
    entry.timer = undefined;
    this.#entries.delete(uri);
    this.#logger?.debug({ spiffeId: uri }, 'identity dropped');
    this.emit('dropped', { spiffeId: uri });
  }

  #live(entry: Entry): boolean {
    return !this.#closed && this.#entries.get(entry.id.uri) === entry;
  }

  #schedule(entry: Entry, delayMs: number): void {
    if (entry.timer !== undefined) this.#clock.clearTimeout(entry.timer);
    entry.timer = this.#clock.setTimeout(() => {
      entry.timer = undefined;
      this.#issue(entry);
    }, delayMs);
  }

  #issue(entry: Entry): void {
    if (entry.inflight || !this.#live(entry)) return;
    entry.inflight = true;
    const startedAt = this.#clock.now();
    this.#mint(entry.id, this.ttlMs, new Date(startedAt)).then(
      (svid) => {
        entry.inflight = false;
        if (!this.#live(entry)) return;
        let secureContext: SecureContext;
        try {
          secureContext = createSecureContext({
            ...this.#extra,
            key: svid.keyPem,
            cert: svid.chainPem,
            ca: this.#ca,
            minVersion: 'TLSv1.3',
          });
        } catch (err) {
          this.#failed(entry, err);
          return;
        }
        const previousSerial = entry.current?.svid.serial;
        const notAfter = svid.notAfter.getTime();
        const renewAt = startedAt + Math.max(MIN_RENEW_DELAY_MS, (notAfter - startedAt) / 2);
        entry.current = { svid, secureContext, renewAt };
        entry.failures = 0;
        entry.lastError = undefined;
        entry.retryAt = undefined;
        this.#schedule(entry, Math.max(MIN_RENEW_DELAY_MS, renewAt - this.#clock.now()));
        this.#logger?.info(
          {
            spiffeId: entry.id.uri,
            serial: svid.serial,
            notAfter: svid.notAfter.toISOString(),
            previousSerial,
          },
          previousSerial === undefined ? 'certificate issued' : 'certificate rotated',
        );
        this.emit('rotated', {
          spiffeId: entry.id.uri,
          serial: svid.serial,
          notAfter: svid.notAfter,
          previousSerial,
        });
      },
      (err: unknown) => {
        entry.inflight = false;
        if (!this.#live(entry)) return;
        this.#failed(entry, err);
      },
    );
  }

  #failed(entry: Entry, err: unknown): void {
    const error = err instanceof Error ? err : new Error(String(err));
    entry.failures++;
    entry.lastError = error.message;
    const retryInMs = Math.min(
      this.#backoff.maxMs,
      this.#backoff.initialMs * 2 ** Math.min(entry.failures - 1, 30),
    );
    entry.retryAt = this.#clock.now() + retryInMs;
    this.#schedule(entry, retryInMs);
    this.#logger?.warn(
      { spiffeId: entry.id.uri, err: error.message, failures: entry.failures, retryInMs },
      'certificate minting failed; will retry',
    );
    this.emit('mintFailed', {
      spiffeId: entry.id.uri,
      error,
      failures: entry.failures,
      retryInMs,
    });
  }
}
