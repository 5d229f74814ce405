// HTTP/2 PING keepalive for both ends of an HBONE connection: a peer that stops answering
// (a dead node, a black-holed path) is found within interval + timeout, not at TCP's pace.
import type { Http2Session } from 'node:http2';
import { H2_CANCEL } from './protocol.js';

/**
 * Sends a PING every interval; no answer within the timeout destroys the session. Returns the
 * stop function. Used by both ends.
 */
export function keepAlive(
  session: Http2Session,
  timing: { readonly pingIntervalMs: number; readonly pingTimeoutMs: number },
  onTimeout: () => void,
): () => void {
  let deadline: NodeJS.Timeout | undefined;
  const interval = setInterval(() => {
    if (session.destroyed || session.closed || deadline) return;
    deadline = setTimeout(() => {
      onTimeout();
      session.destroy(new Error('HBONE ping timeout'), H2_CANCEL);
    }, timing.pingTimeoutMs);
    try {
      session.ping((error) => {
        clearTimeout(deadline);
        deadline = undefined;
        if (error) session.destroy();
      });
    } catch {
      clearTimeout(deadline);
      deadline = undefined;
    }
  }, timing.pingIntervalMs);
  interval.unref();
  return () => {
    clearInterval(interval);
    clearTimeout(deadline);
  };
}
