// config/file-source.ts: the file source. Reads a YAML/JSON file or a directory of them (a
// directory of manifests is a cluster), translates every object, keeps the last good state
// when an edit is invalid, watches for changes (fs.watch, debounced, plus an mtime poll) and
// publishes to a ConfigStore. A reload reads again only the files whose inode, size or times
// changed (YAML parsing dominates the cost of a load: a 10,000-pod cluster takes seconds).
// Errors go to the 'errors' event (or the logger when nobody listens). It must not exit the
// process, create a logger, or touch the kernel or the network.

import { createHash } from 'node:crypto';
import { statSync, watch, type FSWatcher } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, dirname, extname, join } from 'node:path';
import { TypedEmitter } from './emitter.js';
import { ConfigError } from './errors.js';
import type { Logger } from './logger.js';
import {
  keysOf,
  refKey,
  type ClusterDiff,
  type ObjectRef,
  type TranslatedObject,
} from './model.js';
import { parseManifests } from './parse.js';
import { emptyTranslateResult, translateDocument, type TranslateResult } from './translate.js';
import type { ConfigStore } from './store.js';

export const MANIFEST_EXTENSIONS: readonly string[] = ['.yaml', '.yml', '.json'];

export interface LoadResult {
  /** The objects in force: freshly loaded ones plus last good versions kept. */
  readonly objects: readonly TranslatedObject[];
  /** Every problem, in file order then line order. */
  readonly errors: readonly ConfigError[];
  /** Objects whose previous valid version was kept because the new one is invalid/unreadable. */
  readonly kept: readonly ObjectRef[];
  /** Files read, sorted. */
  readonly files: readonly string[];
}

export interface LoadOptions {
  readonly logger?: Logger;
  /** Recorded in each object's origin. */
  readonly sourceId?: string;
}

/**
 * Loads a manifest file or a directory of `*.yaml`, `*.yml`, `*.json` files (sorted by name,
 * not recursive, hidden files skipped) with no previous state: invalid objects are left out.
 */
export async function loadPath(path: string, options: LoadOptions = {}): Promise<LoadResult> {
  const scan = await scanPath(path);
  return loadScanned(scan, undefined, options);
}

export interface LoadReport extends LoadResult {
  /** True for the load done by start(). */
  readonly initial: boolean;
  /** Store generation after publishing. */
  readonly generation: number;
  /** What publishing changed in the store. */
  readonly diff: ClusterDiff;
  /**
   * Files this load read (sorted); the others had not changed since they were last read, and
   * their objects are the previous load's.
   */
  readonly read: readonly string[];
  /** Of those, the files parsed: a file read again with the text it had is not. */
  readonly parsed: readonly string[];
}

export interface FileSourceEvents {
  /** After every load that ran (changes detected, or forced). */
  load: [report: LoadReport];
  /** After a load with problems. Without a listener, the source logs them with logger.warn. */
  errors: [errors: readonly ConfigError[], report: LoadReport];
}

export interface FileSourceOptions {
  /** A manifest file or a directory. */
  readonly path: string;
  readonly store: ConfigStore;
  readonly logger: Logger;
  /** Default `file:<path>`. */
  readonly sourceId?: string;
  /** Quiet period after a watch event before reloading. Default 100 ms. */
  readonly debounceMs?: number;
  /** mtime poll, the fallback for lost watch events. Default 2000 ms; 0 disables. */
  readonly pollIntervalMs?: number;
  /**
   * A file whose ctime is less than this before the moment it was read is read again on the
   * next load even if its stamp did not change. Default DEFAULT_RACY_MS; tests lower it.
   */
  readonly racyMs?: number;
}

/**
 * Loads `path` into the store and keeps it in sync. Last good state: an object that turns
 * invalid keeps its previous valid version (by kind/namespace/name); an object removed from
 * the files is removed; a file that cannot be parsed (or read) keeps every object it last
 * provided; so does a file holding an invalid object that cannot be identified (no kind or no
 * valid name), since there is no telling which earlier object it was.
 *
 * A load triggered by the watch or the poll (or check()) reads again only the files whose
 * inode, size, mtime or ctime changed, plus those changed just before their last read (see
 * DEFAULT_RACY_MS); the other files' objects are the very objects of the previous load. A
 * forced load (start(), reload()) reads every file.
 */
export class FileSource extends TypedEmitter<FileSourceEvents> {
  readonly path: string;
  readonly sourceId: string;
  private readonly store: ConfigStore;
  private readonly logger: Logger;
  private readonly debounceMs: number;
  private readonly pollIntervalMs: number;
  private readonly racyMs: number;

  private lastGood: ReadonlyMap<string, TranslatedObject> | undefined;
  private lastFingerprint: string | undefined;
  /** What each file held at the last load, by path, for files that cannot have changed since. */
  private files: FileCache = new Map();
  private report: LoadReport | undefined;
  private watcher: FSWatcher | undefined;
  private watchedDir: string | undefined;
  private debounceTimer: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private queued: Promise<LoadReport | undefined> | undefined;
  private started = false;
  private stopped = false;

  constructor(options: FileSourceOptions) {
    super((err, event) =>
      options.logger.error({ err, event }, 'config: a file source listener threw'),
    );
    this.path = options.path;
    this.sourceId = options.sourceId ?? `file:${options.path}`;
    this.store = options.store;
    this.logger = options.logger;
    this.debounceMs = options.debounceMs ?? 100;
    this.pollIntervalMs = options.pollIntervalMs ?? 2000;
    this.racyMs = options.racyMs ?? DEFAULT_RACY_MS;
  }

  /** The most recent load, if any. */
  get lastReport(): LoadReport | undefined {
    return this.report;
  }

  /**
   * Loads, publishes and starts watching. Resolves with the first load's report; the caller
   * decides what initial errors mean (`weft node` prints them and exits non-zero).
   */
  async start(): Promise<LoadReport> {
    if (this.started) throw new Error('FileSource.start() called twice');
    this.started = true;
    const report = (await this.enqueue(true))!;
    if (!this.stopped) {
      await this.ensureWatcher();
      if (this.pollIntervalMs > 0) {
        this.pollTimer = setInterval(() => void this.poll(), this.pollIntervalMs);
        this.pollTimer.unref();
      }
    }
    return report;
  }

  /**
   * Reloads now, reading every file again, even if nothing seems to have changed. Undefined
   * once stopped.
   */
  reload(): Promise<LoadReport | undefined> {
    return this.enqueue(true);
  }

  /**
   * Checks for changes now, as the poll does: loads (re-reading only the changed files) when
   * something changed. Undefined when nothing did, or once stopped.
   */
  check(): Promise<LoadReport | undefined> {
    return this.enqueue(false);
  }

  /** Stops watching and polling; waits for a load in progress. Publishes nothing after. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.debounceTimer) clearTimeout(this.debounceTimer);
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.debounceTimer = undefined;
    this.pollTimer = undefined;
    this.closeWatcher();
    await this.chain;
  }

  private async poll(): Promise<void> {
    if (this.stopped) return;
    await this.ensureWatcher();
    await this.enqueue(false);
  }

  /** Runs loads one at a time; a check requested while one is queued joins it. */
  private enqueue(force: boolean): Promise<LoadReport | undefined> {
    if (!force && this.queued) return this.queued;
    const run = this.chain.then(() => {
      if (this.queued === run) this.queued = undefined;
      return this.loadOnce(force);
    });
    this.queued = run;
    this.chain = run.catch((err: unknown) =>
      this.logger.error({ err, path: this.path }, 'config: file source load failed'),
    );
    return run;
  }

  private async loadOnce(force: boolean): Promise<LoadReport | undefined> {
    if (this.stopped) return undefined;
    const scan = await scanPath(this.path); // fingerprint before reading: a later edit re-triggers
    const fingerprint = scan.kind === 'ok' ? scan.fingerprint : `error:${scan.error.message}`;
    if (!force && fingerprint === this.lastFingerprint) return undefined;
    const initial = this.lastGood === undefined;
    // A forced load trusts nothing it read before.
    const files: FileCache = new Map();
    const read: string[] = [];
    const parsed: string[] = [];
    const result = await loadScanned(
      scan,
      this.lastGood,
      { logger: this.logger, sourceId: this.sourceId },
      {
        previous: force ? new Map() : this.files,
        next: files,
        racyMs: this.racyMs,
        read,
        parsed,
      },
    );
    if (this.stopped) return undefined;
    this.files = files;
    this.lastFingerprint = fingerprint;
    this.lastGood = new Map(result.objects.map((o) => [keysOf(o).ref, o]));
    const diff = this.store.replaceFromSource(this.sourceId, result.objects);
    const report: LoadReport = {
      ...result,
      initial,
      generation: this.store.generation,
      diff,
      read,
      parsed,
    };
    this.report = report;
    this.logger.info(
      {
        path: this.path,
        generation: report.generation,
        objects: result.objects.length,
        errors: result.errors.length,
        kept: result.kept.length,
        filesRead: read.length,
        filesParsed: parsed.length,
      },
      initial ? 'config: loaded' : 'config: reloaded',
    );
    this.emit('load', report);
    if (result.errors.length > 0) {
      if (this.listenerCount('errors') > 0) this.emit('errors', result.errors, report);
      else for (const e of result.errors) this.logger.warn({ error: e.toJSON() }, e.toString());
    }
    return report;
  }

  /** Watches the directory (or a file's directory: editors replace files). Best effort. */
  private async ensureWatcher(): Promise<void> {
    if (this.stopped) return;
    let dir: string;
    let onlyName: string | undefined;
    try {
      const st = await stat(this.path);
      dir = st.isDirectory() ? this.path : dirname(this.path);
      onlyName = st.isDirectory() ? undefined : basename(this.path);
    } catch {
      dir = dirname(this.path);
      onlyName = basename(this.path);
    }
    if (this.watcher && this.watchedDir === dir) return;
    this.closeWatcher();
    if (this.stopped) return;
    try {
      const w = watch(dir, { persistent: false }, (_event, filename) => {
        // A file path may be a symlink swapped through its directory (ConfigMap volumes):
        // only skip events that name another manifest-looking file.
        const name = filename?.toString();
        if (onlyName && name && name !== onlyName && isManifestName(name)) return;
        this.scheduleDebounced();
      });
      w.on('error', (err) => {
        this.logger.debug({ err, dir }, 'config: watch failed; relying on polling');
        if (this.watcher === w) this.closeWatcher();
      });
      this.watcher = w;
      this.watchedDir = dir;
    } catch (err) {
      this.logger.debug({ err, dir }, 'config: cannot watch; relying on polling');
    }
  }

  private closeWatcher(): void {
    this.watcher?.close();
    this.watcher = undefined;
    this.watchedDir = undefined;
  }

  private scheduleDebounced(): void {
    if (this.stopped) return;
    if (this.debounceTimer) clearTimeout(this.debounceTimer);
    this.debounceTimer = setTimeout(() => {
      this.debounceTimer = undefined;
      void this.enqueue(false);
    }, this.debounceMs);
    this.debounceTimer.unref();
  }
}

// ---------------------------------------------------------------------------------------

function isManifestName(name: string): boolean {
  return !name.startsWith('.') && MANIFEST_EXTENSIONS.includes(extname(name).toLowerCase());
}

/** A manifest file as the scan saw it: `stamp` changes whenever its content may have. */
interface ScannedFile {
  readonly file: string;
  /** Inode, size, mtime and ctime. */
  readonly stamp: string;
  readonly ctimeMs: number;
}

type Scan =
  | {
      readonly kind: 'ok';
      readonly files: readonly string[];
      readonly scanned: readonly ScannedFile[];
      readonly fingerprint: string;
    }
  | { readonly kind: 'error'; readonly error: ConfigError };

/**
 * What a file held when it was last read, by path. `stamp` is the scan's stamp from before
 * the read, so an edit during the read shows as a new stamp on the next scan.
 */
type FileCache = Map<
  string,
  {
    readonly stamp: string;
    readonly load: FileLoad;
    /**
     * For a racy file (see DEFAULT_RACY_MS), a digest of the text read: it is read again on
     * the next load, and parsed again only if the text differs.
     */
    readonly digest?: string | undefined;
  }
>;

/**
 * A file changed this close to (or after) the moment it was read may change again without
 * its stamp changing (timestamps have a granularity, up to 2 s on some filesystems, and a
 * file server's clock can lag): such a file is read again on the next load instead of being
 * trusted (git's "racily clean" rule). ctime is the time to compare: every change of content
 * sets it to the kernel's clock, and unlike mtime no tool can set it back.
 */
export const DEFAULT_RACY_MS = 3000;

/** Files stat'ed between two yields to the event loop (about half a millisecond). */
const STAT_BATCH = 256;

/** Lists the manifest files under `path` and fingerprints them (inode, size, times). */
async function scanPath(path: string): Promise<Scan> {
  try {
    const st = await stat(path);
    let files: string[];
    if (st.isDirectory()) {
      const names = (await readdir(path)).filter(isManifestName).sort();
      files = names.map((n) => join(path, n));
    } else {
      files = [path];
    }
    const scanned: ScannedFile[] = [];
    for (let i = 0; i < files.length; i++) {
      const f = files[i]!;
      // The poll scans every 2 s: a synchronous stat costs a tenth of a promise's round trip
      // through the thread pool (19,000 files: 30 ms of CPU in stat calls instead of 300),
      // and yielding between batches keeps each stretch of the event loop short.
      if (i > 0 && i % STAT_BATCH === 0) await new Promise((resolve) => setImmediate(resolve));
      try {
        const s = f === path ? st : statSync(f, { throwIfNoEntry: false }); // follows symlinks
        if (s === undefined || !s.isFile()) continue;
        scanned.push({
          file: f,
          stamp: `${s.ino}\0${s.size}\0${s.mtimeMs}\0${s.ctimeMs}`,
          ctimeMs: s.ctimeMs,
        });
      } catch {
        // vanished between readdir and stat: it is simply not there
      }
    }
    return {
      kind: 'ok',
      files: scanned.map((f) => f.file),
      scanned,
      fingerprint: scanned.map((f) => `${f.file}\0${f.stamp}`).join('\n'),
    };
  } catch (err) {
    return {
      kind: 'error',
      error: new ConfigError({ file: path, message: `cannot read: ${errText(err)}` }),
    };
  }
}

type FileLoad =
  | { readonly file: string; readonly status: 'ok'; readonly result: TranslateResult }
  | { readonly file: string; readonly status: 'failed'; readonly errors: readonly ConfigError[] };

/** The file's text; a failed load when it cannot be read; undefined when it vanished. */
async function readText(file: string): Promise<string | FileLoad | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined; // deleted meanwhile
    return {
      file,
      status: 'failed',
      errors: [new ConfigError({ file, message: `cannot read: ${errText(err)}` })],
    };
  }
}

function parseText(file: string, text: string, options: LoadOptions): FileLoad {
  const parsed = parseManifests(text, file);
  if (parsed.errors.length > 0) return { file, status: 'failed', errors: parsed.errors };
  const result = emptyTranslateResult();
  for (const doc of parsed.documents) {
    const r = translateDocument(doc, {
      file,
      ...(options.sourceId !== undefined && { source: options.sourceId }),
      ...(options.logger !== undefined && { logger: options.logger }),
    });
    result.objects.push(...r.objects);
    result.errors.push(...r.errors);
    result.invalid.push(...r.invalid);
    result.unidentified ||= r.unidentified;
    result.ignored += r.ignored;
  }
  return { file, status: 'ok', result };
}

function contentDigest(text: string): string {
  return createHash('sha256').update(text).digest('base64');
}

/**
 * Loads every scanned file. With `cache`, a file whose stamp is the one it had when it was
 * last read is not read again (its earlier result is reused, the very same objects), and
 * `cache.next` receives what may be reused next time.
 */
async function loadScanned(
  scan: Scan,
  previous: ReadonlyMap<string, TranslatedObject> | undefined,
  options: LoadOptions,
  cache?: {
    readonly previous: FileCache;
    readonly next: FileCache;
    readonly racyMs: number;
    /** Receive the files read, and the files parsed. */
    readonly read: string[];
    readonly parsed: string[];
  },
): Promise<LoadResult> {
  if (scan.kind === 'error') {
    // The path itself is unreadable (missing directory, permissions): keep everything.
    const objects = previous ? [...previous.values()] : [];
    return { objects, errors: [scan.error], kept: objects.map((o) => o.ref), files: [] };
  }
  const loads: FileLoad[] = [];
  for (const f of scan.scanned) {
    const cached = cache?.previous.get(f.file);
    if (cached !== undefined && cached.stamp === f.stamp && cached.digest === undefined) {
      loads.push(cached.load);
      cache!.next.set(f.file, cached);
      continue;
    }
    const readAt = Date.now();
    const text = await readText(f.file);
    cache?.read.push(f.file);
    if (text === undefined) continue;
    if (typeof text !== 'string') {
      loads.push(text);
      continue;
    }
    if (cache === undefined) {
      loads.push(parseText(f.file, text, options));
      continue;
    }
    // A racy file was read again: the very same bytes need no parsing.
    const racy = f.ctimeMs > readAt - cache.racyMs;
    const digest = racy || cached?.digest !== undefined ? contentDigest(text) : undefined;
    let l: FileLoad;
    if (cached?.digest !== undefined && cached.digest === digest) l = cached.load;
    else {
      l = parseText(f.file, text, options);
      cache.parsed.push(f.file);
    }
    loads.push(l);
    cache.next.set(
      f.file,
      racy ? { stamp: f.stamp, load: l, digest } : { stamp: f.stamp, load: l },
    );
  }
  return combine(loads, previous, scan.files);
}

function combine(
  loads: readonly FileLoad[],
  previous: ReadonlyMap<string, TranslatedObject> | undefined,
  files: readonly string[],
): LoadResult {
  const next = new Map<string, TranslatedObject>();
  const errors: ConfigError[] = [];
  const kept: ObjectRef[] = [];
  const keep = (key: string): void => {
    const prev = previous?.get(key);
    if (prev !== undefined && !next.has(key)) {
      next.set(key, prev);
      kept.push(prev.ref);
    }
  };

  // Fresh valid objects, in file order; the first definition of an object wins.
  for (const l of loads) {
    if (l.status === 'failed') {
      errors.push(...l.errors);
      continue;
    }
    const dupErrors: ConfigError[] = [];
    for (const obj of l.result.objects) {
      const key = keysOf(obj).ref;
      const first = next.get(key);
      if (first === undefined) {
        next.set(key, obj);
        continue;
      }
      dupErrors.push(
        new ConfigError({
          ...(obj.origin.file !== undefined && { file: obj.origin.file }),
          ...(obj.origin.line !== undefined && { line: obj.origin.line }),
          ref: obj.ref,
          message: `defined twice: first at ${location(first)}, again at ${location(obj)}; using the first`,
        }),
      );
    }
    errors.push(...sortByLine([...l.result.errors, ...dupErrors]));
  }

  // Invalid objects keep their last good version, wherever it came from.
  for (const l of loads) {
    if (l.status === 'ok') for (const ref of l.result.invalid) keep(refKey(ref));
  }
  // Unreadable files, and files with an unidentifiable invalid object, keep what they had.
  for (const l of loads) {
    if (l.status === 'failed' || l.result.unidentified) {
      for (const [key, obj] of previous ?? []) if (obj.origin.file === l.file) keep(key);
    }
  }
  return { objects: [...next.values()], errors, kept, files };
}

function location(obj: TranslatedObject): string {
  const { file, line } = obj.origin;
  if (file === undefined) return 'another source';
  return line === undefined ? file : `${file}:${line}`;
}

function sortByLine(errors: ConfigError[]): ConfigError[] {
  return errors
    .map((e, i) => ({ e, i }))
    .sort((a, b) => (a.e.line ?? 0) - (b.e.line ?? 0) || a.i - b.i)
    .map((x) => x.e);
}

function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string') {
    const text: Record<string, string> = {
      ENOENT: 'no such file or directory',
      EACCES: 'permission denied',
      EISDIR: 'is a directory',
    };
    return text[e.code] ?? e.code;
  }
  return String(err);
}
