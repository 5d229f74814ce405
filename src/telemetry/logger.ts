// telemetry/: what operators see of the node proxy — logs now, metrics and admin endpoints as
// they arrive. It observes; it never changes data-path decisions.
//
// logger.ts: the process logger (pino, JSON lines on stdout). Created once by the composition
// root and passed down; nothing here is global.
import { destination, pino, type DestinationStream, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export const LOG_LEVELS: readonly LevelWithSilent[] = [
  'fatal',
  'error',
  'warn',
  'info',
  'debug',
  'trace',
  'silent',
];

/** How long info/debug lines (the access log) may wait to be written with others. */
export const DEFAULT_LOG_BATCH_MS = 50;
/**
 * Largest batch: a write of up to PIPE_BUF bytes to a pipe is atomic, so the worker processes
 * sharing one stdout never interleave inside each other's lines.
 */
const ATOMIC_WRITE_BYTES = 4096;

/**
 * Collects lines and writes them in one syscall at most every `delayMs` (50 ms). One write per
 * closed connection was about 5% of the proxy's CPU per connection. Warnings and errors are
 * written at once (with what is pending before them), and everything is written on exit.
 */
export class BatchedLines implements DestinationStream {
  private pending: string[] = [];
  private pendingBytes = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly out: { write(data: string): unknown },
    private readonly delayMs = DEFAULT_LOG_BATCH_MS,
  ) {}

  write(line: string): void {
    const bytes = Buffer.byteLength(line);
    if (this.pendingBytes + bytes > ATOMIC_WRITE_BYTES) this.flush();
    this.pending.push(line);
    this.pendingBytes += bytes;
    if (this.delayMs <= 0 || !isRoutine(line) || this.pendingBytes >= ATOMIC_WRITE_BYTES) {
      this.flush();
      return;
    }
    this.timer ??= setTimeout(() => this.flush(), this.delayMs).unref();
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.length === 0) return;
    const data = this.pending.join('');
    this.pending = [];
    this.pendingBytes = 0;
    this.out.write(data);
  }
}

/** Lines that may wait: pino writes the level first (see the level formatter below). */
function isRoutine(line: string): boolean {
  return (
    line.startsWith('{"level":"info"') ||
    line.startsWith('{"level":"debug"') ||
    line.startsWith('{"level":"trace"')
  );
}

export function createLogger(
  level: LevelWithSilent,
  component: string,
  batchDelayMs = DEFAULT_LOG_BATCH_MS,
): Logger {
  // sonic-boom in sync mode does the writing: it retries EAGAIN and partial writes.
  const out = new BatchedLines(destination({ dest: 1, sync: true }), batchDelayMs);
  process.once('exit', () => out.flush());
  return pino(
    {
      level,
      base: { component },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    out,
  );
}
