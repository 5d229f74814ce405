// The node proxy's HTTP endpoints: admin (localhost only: /config_dump, /logging, /debug/*),
// Prometheus metrics (/metrics and /stats/prometheus) and readiness (/healthz/ready). Each
// listens with SO_REUSEPORT (made through FFI; Node 20's net cannot) so that a successor
// process serves on the same ports during a hand-over. They report; they change nothing but
// the log level.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { KernelError } from '../bpf/errors.js';
import { libc, native } from '../bpf/ffi.js';
import type { Logger } from './logger.js';
import { LOG_LEVELS } from './logger.js';

type Handler = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

export interface HttpEndpoint {
  readonly server: Server;
  close(): Promise<void>;
}

export async function listenReusePort(
  name: string,
  ip: string,
  port: number,
  handler: Handler,
): Promise<HttpEndpoint> {
  const fd = native.listenReuseport(ip, port, 511);
  if (fd < 0) throw new KernelError(`open ${name} endpoint on ${ip}:${port}`, -fd);
  const server = createServer((req, res) => {
    Promise.resolve(handler(req, res)).catch((error: unknown) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`internal error: ${(error as Error).message}\n`);
    });
  });
  server.keepAliveTimeout = 5000;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd }, () => resolve());
    });
  } catch (error) {
    libc.close(fd);
    throw error;
  }
  return {
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(`${JSON.stringify(body, null, 2)}\n`);
}

function text(res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
  res.end(body);
}

/** Each answer may be a promise (with data-plane workers, it gathers theirs). */
export interface AdminProvider {
  configDump(): unknown;
  connections(): unknown;
  pools(): unknown;
  /** What `weft status` shows. */
  status(): unknown;
  /** Told after /logging changed the level (workers follow it). */
  levelChanged?(level: string): void;
}

export function adminHandler(provider: AdminProvider, log: Logger): Handler {
  return async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    switch (url.pathname) {
      case '/':
        return text(
          res,
          200,
          'weft admin: /config_dump /logging /debug/connections /debug/pools /debug/status\n',
        );
      case '/config_dump':
        return json(res, 200, await provider.configDump());
      case '/debug/connections':
        return json(res, 200, await provider.connections());
      case '/debug/pools':
        return json(res, 200, await provider.pools());
      case '/debug/status':
        return json(res, 200, await provider.status());
      case '/logging': {
        const level = url.searchParams.get('level');
        if (req.method === 'POST' || level) {
          if (!level || !(LOG_LEVELS as readonly string[]).includes(level)) {
            return text(res, 400, `level must be one of ${LOG_LEVELS.join(', ')}\n`);
          }
          const previous = log.level;
          log.level = level;
          provider.levelChanged?.(level);
          log.info({ previous, level }, 'log level changed');
        }
        return json(res, 200, { level: log.level });
      }
      default:
        return text(res, 404, 'not found\n');
    }
  };
}

/** A prom-client Registry, or the control plane's sum over its workers' registries. */
export interface MetricsSource {
  readonly contentType: string;
  metrics(): Promise<string>;
}

export function metricsHandler(registry: MetricsSource): Handler {
  return async (req, res) => {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname;
    if (path !== '/metrics' && path !== '/stats/prometheus') return text(res, 404, 'not found\n');
    res.writeHead(200, { 'content-type': registry.contentType });
    res.end(await registry.metrics());
  };
}

export interface Readiness {
  /** Undefined when ready, else what is still missing (or "draining"). */
  notReadyReason(): string | undefined;
}

export function readinessHandler(readiness: Readiness): Handler {
  return (req, res) => {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname;
    if (path !== '/healthz/ready') return text(res, 404, 'not found\n');
    const reason = readiness.notReadyReason();
    return reason === undefined
      ? text(res, 200, 'ready\n')
      : text(res, 503, `not ready: ${reason}\n`);
  };
}
