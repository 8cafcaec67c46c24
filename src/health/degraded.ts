import type { FastifyBaseLogger } from 'fastify';

/**
 * A warning logged at most once per `intervalMs` per message: during a database outage every
 * request is served in a degraded mode, and one line per request would flood the log.
 */
export function throttledWarn(log: () => FastifyBaseLogger, intervalMs = 10_000): (message: string, err?: unknown) => void {
  const last = new Map<string, number>();
  return (message, err) => {
    const now = Date.now();
    if ((last.get(message) ?? -Infinity) + intervalMs > now) return;
    last.set(message, now);
    log().warn({ err }, message);
  };
}
