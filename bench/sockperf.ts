// bench/sockperf.ts: the command lines bench/crossnode.ts gives Debian's `sockperf` (3.7) and
// a parser for its report. TCP only, 64-byte messages, round-trip times (--full-rtt; sockperf
// otherwise halves them).

export const SOCKPERF_MSG_SIZE = 64;

export type SockperfMode = 'ping-pong' | 'under-load';

export interface SockperfResult {
  mode: SockperfMode;
  /** Replies sockperf measured in its valid window (after its own warm-up). */
  observations: number;
  /** Round-trip time percentiles over the valid window, µs. */
  p50Us: number;
  p99Us: number;
  meanUs: number;
  /** Valid window length, s, and replies received in it. */
  validSeconds: number;
  validReceived: number;
  /** Replies per second in the valid window (the round-trip rate for ping-pong). */
  perSecond: number;
  /** The whole run, warm-up included: what the proxies' CPU time over the run pays for. */
  totalSeconds: number;
  totalReceived: number;
  totalSent: number;
}

/** `sockperf server` argv for a pod (listens on every address of the pod). */
export function sockperfServerArgv(port: number): string[] {
  return ['sockperf', 'server', '--tcp', '-i', '0.0.0.0', '-p', String(port)];
}

/**
 * Client argv. ping-pong: one connection, the next message leaves when the reply to the last
 * one is back (`--mps max`, sockperf's default). under-load: `mps` messages per second on one
 * connection, the server replying to every 100th (sockperf's default --reply-every).
 */
export function sockperfClientArgv(
  mode: SockperfMode,
  host: string,
  port: number,
  seconds: number,
  mps?: number,
): string[] {
  return [
    'sockperf',
    mode,
    '--tcp',
    '-i',
    host,
    '-p',
    String(port),
    '-t',
    String(seconds),
    '-m',
    String(SOCKPERF_MSG_SIZE),
    '--full-rtt',
    ...(mps !== undefined ? ['--mps', String(mps)] : []),
  ];
}

function num(re: RegExp, text: string, what: string): number {
  const m = re.exec(text);
  if (!m) throw new Error(`sockperf report has no ${what}`);
  return Number(m[1]);
}

/** Parses sockperf's report (stdout and stderr together); throws when a figure is missing. */
export function parseSockperf(mode: SockperfMode, output: string): SockperfResult {
  // eslint-disable-next-line no-control-regex -- sockperf colours some lines with ANSI escapes
  const text = output.replace(/\x1b\[[0-9;]*m/g, '');
  const total =
    /\[Total Run\] RunTime=([\d.]+) sec;.*?SentMessages=(\d+); ReceivedMessages=(\d+)/.exec(text);
  const valid =
    /\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)/.exec(
      text,
    );
  if (!total || !valid) throw new Error('sockperf report has no run summary');
  const validSeconds = Number(valid[1]);
  const validReceived = Number(valid[3]);
  return {
    mode,
    observations: num(/Total (\d+) observations/, text, 'observation count'),
    p50Us: num(/percentile 50\.000 =\s*([\d.]+)/, text, 'p50'),
    p99Us: num(/percentile 99\.000 =\s*([\d.]+)/, text, 'p99'),
    meanUs: num(/avg-rtt=([\d.]+)/, text, 'mean'),
    validSeconds,
    validReceived,
    perSecond: validSeconds > 0 ? validReceived / validSeconds : NaN,
    totalSeconds: Number(total[1]),
    totalSent: Number(total[2]),
    totalReceived: Number(total[3]),
  };
}
