// telemetry/: what operators see of the node proxy — logs now, metrics and admin endpoints as
// they arrive. It observes; it never changes data-path decisions.
//
// logger.ts: the process logger (pino, JSON lines on stdout). Created once by the composition
// root and passed down; nothing here is global.
import { pino, type Logger, type LevelWithSilent } from 'pino';

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

export function createLogger(level: LevelWithSilent, component: string): Logger {
  return pino({
    level,
    base: { component },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  });
}
