// One JSON line per closed connection, the access log operators grep first: who talked to
// whom, through which path, how many bytes, and why a connection was refused.
import type { Logger } from './logger.js';
import type { Workload } from '../config/model.js';
import { formatEndpoint, type Flow, type FlowObserver, type FlowOutcome } from '../proxy/flow.js';

function workloadName(w: Workload | undefined): string | undefined {
  return w && `${w.namespace}/${w.name}`;
}

export interface AccessLogOptions {
  /** Fraction of successful connections logged (0..1); refusals and errors are always logged. */
  readonly sampleRate: number;
  readonly random?: () => number;
}

export class AccessLog implements FlowObserver {
  constructor(
    private readonly log: Logger,
    private readonly options: AccessLogOptions = { sampleRate: 1 },
  ) {}

  opened(): void {}

  closed(flow: Flow, outcome: FlowOutcome): void {
    const clean = outcome.kind === 'relayed' && !outcome.error && !outcome.flag;
    if (
      clean &&
      this.options.sampleRate < 1 &&
      (this.options.random ?? Math.random)() >= this.options.sampleRate
    ) {
      return;
    }
    this.log.info(
      {
        event: 'connection',
        id: flow.id,
        direction: flow.direction,
        path: flow.path,
        datapath: flow.direct ? 'bpf' : undefined,
        src: formatEndpoint(flow.client),
        dst: formatEndpoint(flow.target),
        srcWorkload: workloadName(flow.sourceWorkload),
        dstWorkload: workloadName(flow.destinationWorkload),
        durationMs:
          (outcome.kind === 'relayed' ? (outcome.endedAt ?? Date.now()) : Date.now()) -
          flow.startedAt,
        srcIdentity: flow.sourceIdentity,
        dstIdentity: flow.destinationIdentity,
        service: flow.service && `${flow.service.namespace}/${flow.service.name}`,
        upstream: flow.upstream && formatEndpoint(flow.upstream),
        security: flow.security,
        responseFlags: outcome.flag ?? '-',
        policy: outcome.kind === 'refused' || outcome.flag ? outcome.policy : undefined,
        ...(outcome.kind === 'relayed'
          ? { bytesSent: outcome.sent, bytesReceived: outcome.received, error: outcome.error }
          : { refused: outcome.reason }),
      },
      'connection closed',
    );
  }
}
