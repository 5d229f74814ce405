// lab/proc.ts: runs commands for the namespace lab: bounded one-shot commands (runCommand) and
// tracked long-running children (LabProcess). It signals only the children it spawned, by their
// PID, and only while they are alive (never by name, never a process group it did not create).

import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { createWriteStream, type WriteStream } from 'node:fs';
import { createInterface } from 'node:readline';

export interface RunOptions {
  /** Kill (SIGKILL, by PID) and reject after this long. Default 10 s. */
  timeoutMs?: number;
  /** Written to the command's stdin, which is then closed. */
  input?: string;
  /** Resolve even when the command exits non-zero (the code is in the result). */
  allowFail?: boolean;
  env?: NodeJS.ProcessEnv;
  /** Text to name the command in errors (default: the argv). */
  label?: string;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
}

const MAX_CAPTURE = 32 * 1024 * 1024;

function quote(argv: string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
}

/** Runs argv to completion with a bounded time; rejects with command, code and stderr on failure. */
export function runCommand(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const label = opts.label ?? quote(argv);
  return new Promise<RunResult>((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = spawn(argv[0]!, argv.slice(1), {
        stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
        env: opts.env ?? process.env,
      });
    } catch (err) {
      reject(new Error(`${label}: cannot start: ${(err as Error).message}`));
      return;
    }
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let settled = false;
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      if (stdout.length < MAX_CAPTURE) stdout += d;
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < MAX_CAPTURE) stderr += d;
    });
    if (opts.input !== undefined) {
      child.stdin!.on('error', () => {}); // EPIPE when the command does not read stdin
      child.stdin!.end(opts.input);
    }
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(new Error(`${label}: cannot start: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const err = stderr.trim();
      if (timedOut) {
        reject(new Error(`${label}: timed out after ${timeoutMs} ms${err ? `: ${err}` : ''}`));
        return;
      }
      const rc = code ?? 128 + (signal ? signalNumber(signal) : 0);
      if (rc !== 0 && !opts.allowFail) {
        reject(
          new Error(
            `${label}: exited with ${code !== null ? `code ${code}` : `signal ${signal}`}${err ? `: ${err}` : ''}`,
          ),
        );
        return;
      }
      resolve({ stdout, stderr, code: rc });
    });
  });
}

function signalNumber(sig: NodeJS.Signals): number {
  const n: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };
  return n[sig] ?? 0;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  /** Append the child's stdout and stderr (prefixed `[err] `) to this file. */
  logFile?: string;
  /** Name used in error messages. */
  label?: string;
}

/** Every live LabProcess of this (worker) process, so an abrupt exit can still SIGKILL them. */
const live = new Set<LabProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const p of live) p.killNow();
  });
}

/**
 * A tracked child process. Emits 'line' (stdout line) and 'stderr' (stderr line). Its stdout lines
 * are kept in `lines` (bounded), stderr text in `stderr`.
 */
export class LabProcess extends EventEmitter {
  readonly pid: number;
  readonly argv: readonly string[];
  readonly label: string;
  /** stdout lines so far (at most 100 000 kept). */
  readonly lines: string[] = [];
  /** Resolves when the child has exited (never rejects). */
  readonly exited: Promise<ExitInfo>;
  private stderrText = '';
  private exit: ExitInfo | null = null;
  private readonly child: ChildProcess;
  private log: WriteStream | null = null;

  constructor(argv: string[], opts: SpawnOptions = {}) {
    super();
    this.argv = argv;
    this.label = opts.label ?? quote(argv);
    this.child = spawn(argv[0]!, argv.slice(1), {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: opts.env ?? process.env,
    });
    if (this.child.pid === undefined) {
      // spawn failed synchronously-detectably (e.g. ENOENT); 'error' follows.
      this.pid = -1;
    } else {
      this.pid = this.child.pid;
    }
    if (opts.logFile) {
      this.log = createWriteStream(opts.logFile, { flags: 'a' });
      this.log.on('error', () => {
        this.log = null;
      });
    }
    const out = createInterface({ input: this.child.stdout!, crlfDelay: Infinity });
    out.on('line', (line) => {
      if (this.lines.length < 100_000) this.lines.push(line);
      this.log?.write(line + '\n');
      this.emit('line', line);
    });
    const err = createInterface({ input: this.child.stderr!, crlfDelay: Infinity });
    err.on('line', (line) => {
      if (this.stderrText.length < MAX_CAPTURE) this.stderrText += line + '\n';
      this.log?.write('[err] ' + line + '\n');
      this.emit('stderr', line);
    });
    // 'close' waits for stdio to drain, so every line has been emitted when `exited` resolves.
    this.exited = new Promise<ExitInfo>((resolve) => {
      const done = (info: ExitInfo) => {
        if (this.exit) return;
        this.exit = info;
        live.delete(this);
        this.log?.end();
        this.log = null;
        resolve(info);
        this.emit('exit', info);
      };
      this.child.on('close', (code, signal) => done({ code, signal }));
      this.child.on('error', (e) => {
        if (this.stderrText.length < MAX_CAPTURE) this.stderrText += `spawn error: ${e.message}\n`;
        if (this.child.pid === undefined) done({ code: null, signal: null });
      });
    });
    if (this.pid > 0) {
      installExitHook();
      live.add(this);
    }
  }

  /** stdout so far, as text. */
  get stdout(): string {
    return this.lines.join('\n') + (this.lines.length ? '\n' : '');
  }
  get stderr(): string {
    return this.stderrText;
  }
  /** Exit status, or null while running. */
  get exitInfo(): ExitInfo | null {
    return this.exit;
  }
  get running(): boolean {
    return this.exit === null && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Sends a signal to the child's PID if it is still running. Returns whether it was sent. */
  signal(sig: NodeJS.Signals): boolean {
    if (!this.running || this.pid <= 0) return false;
    return this.child.kill(sig);
  }

  /** Synchronous SIGKILL by PID (for exit hooks). */
  killNow(): void {
    this.signal('SIGKILL');
  }

  /**
   * Stops the child: `signal` (default SIGTERM), then SIGKILL after `graceMs` (default 2000), then
   * gives up waiting after a further 5 s (the exit info is then null-filled).
   */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 2000): Promise<ExitInfo> {
    if (this.exit) return this.exit;
    this.signal(signal);
    if (await waitFor(this.exited, graceMs)) return this.exit!;
    this.signal('SIGKILL');
    if (await waitFor(this.exited, 5000)) return this.exit!;
    return { code: null, signal: null };
  }

  /**
   * Resolves with the first stdout line (already seen or future) that satisfies `pred`. Rejects on
   * timeout or when the child exits first, quoting its stderr.
   */
  waitForLine(pred: (line: string) => boolean, timeoutMs = 10_000): Promise<string> {
    const found = this.lines.find(pred);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise<string>((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        this.off('line', onLine);
        this.off('exit', onExit);
      };
      const onLine = (line: string) => {
        if (pred(line)) {
          cleanup();
          resolve(line);
        }
      };
      const onExit = (info: ExitInfo) => {
        cleanup();
        reject(
          new Error(
            `${this.label}: exited (code ${info.code}, signal ${info.signal}) before the awaited line; stderr: ${this.stderrText.trim()}`,
          ),
        );
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new Error(
            `${this.label}: awaited line not seen within ${timeoutMs} ms; stderr: ${this.stderrText.trim()}`,
          ),
        );
      }, timeoutMs);
      this.on('line', onLine);
      this.on('exit', onExit);
      if (this.exit) onExit(this.exit);
    });
  }
}

/** Waits for `p` at most `ms`; true when it settled in time. */
export function waitFor(p: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    p.then(
      () => {
        clearTimeout(timer);
        resolve(true);
      },
      () => {
        clearTimeout(timer);
        resolve(true);
      },
    );
  });
}
