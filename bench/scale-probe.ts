// bench/scale-probe.ts: a small HTTP poller that bench/scale.ts runs inside a lab node's network
// namespace (where the node proxy's 127.0.0.1 endpoints are). One JSON line per event on
// stdout, wall-clock times in ms (performance.timeOrigin + now(), comparable across processes
// of one machine). Every loop is bounded by its timeout.
//
//   ready <url> <timeoutMs>                    polls every 10 ms until <url> answers 200
//   generation <metricsUrl> <above> <timeoutMs> prints "started", then polls every 20 ms until
//                                              weft_config_generation > <above> (a scrape
//                                              costs the proxy a few ms: not more often)
//   dump <adminUrl> <timeoutMs>                fetches /config_dump and /debug/status once and
//                                              prints their sizes, fetch times, the certificates
//                                              and the local pods (not the whole dump)

const POLL_MS = 10;
const METRICS_POLL_MS = 20;

function now(): number {
  return performance.timeOrigin + performance.now();
}

function emit(event: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

async function get(url: string): Promise<{ status: number; text: string }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  return { status: res.status, text: await res.text() };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function ready(url: string, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer';
  while (Date.now() < deadline) {
    try {
      const r = await get(url);
      if (r.status === 200) {
        emit({ event: 'ready', at: now() });
        return 0;
      }
      last = `${r.status} ${r.text.trim()}`;
    } catch (error) {
      last = (error as Error).message;
    }
    await sleep(POLL_MS);
  }
  emit({ event: 'timeout', last });
  return 1;
}

function generationOf(metrics: string): number | undefined {
  const m = /^weft_config_generation(?:\{\})? (\d+)/m.exec(metrics);
  return m ? Number(m[1]) : undefined;
}

async function generation(url: string, above: number, timeoutMs: number): Promise<number> {
  emit({ event: 'started', at: now() });
  const deadline = Date.now() + timeoutMs;
  let last: number | undefined;
  while (Date.now() < deadline) {
    try {
      const r = await get(url);
      last = generationOf(r.text);
      if (last !== undefined && last > above) {
        emit({ event: 'generation', value: last, at: now() });
        return 0;
      }
    } catch {
      // the proxy may be busy applying: try again
    }
    await sleep(METRICS_POLL_MS);
  }
  emit({ event: 'timeout', last });
  return 1;
}

interface DumpShape {
  certificates?: { spiffeId: string; state: string }[];
  workloads?: unknown[];
}

interface StatusShape {
  pods?: { pod: string; ip: string; enrolled: boolean; identity?: string }[];
}

async function dump(admin: string, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const t0 = now();
      const d = await get(`${admin}/config_dump`);
      const t1 = now();
      const s = await get(`${admin}/debug/status`);
      const t2 = now();
      const parsed = JSON.parse(d.text) as DumpShape;
      const status = JSON.parse(s.text) as StatusShape;
      emit({
        event: 'dump',
        configDumpBytes: d.text.length,
        configDumpMs: t1 - t0,
        statusBytes: s.text.length,
        statusMs: t2 - t1,
        workloads: parsed.workloads?.length,
        certificates: (parsed.certificates ?? []).map((c) => ({ id: c.spiffeId, state: c.state })),
        pods: status.pods ?? [],
      });
      return 0;
    } catch (error) {
      if (Date.now() >= deadline) {
        emit({ event: 'timeout', last: (error as Error).message });
        return 1;
      }
      await sleep(100);
    }
  }
}

async function main(argv: string[]): Promise<number> {
  const [mode, url, a, b] = argv;
  if (mode === 'ready' && url && a) return ready(url, Number(a));
  if (mode === 'generation' && url && a && b) return generation(url, Number(a), Number(b));
  if (mode === 'dump' && url && a) return dump(url, Number(a));
  process.stderr.write('usage: scale-probe ready|generation|dump <url> ...\n');
  return 2;
}

process.exitCode = await main(process.argv.slice(2));
