import { sqlState } from './database.js';

/** The database could not be reached or went away mid-query; the request may be retried later. */
export class DatabaseUnavailableError extends Error {
  readonly code = 'DB_ERR_UNAVAILABLE';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DatabaseUnavailableError';
  }
}

/**
 * SQLSTATE classes that mean "not now" rather than "wrong request": 08 connection exception,
 * 53 insufficient resources (too many connections, disk full), 57 operator intervention
 * (shutdown, cannot connect now), 58 system error.
 */
const TRANSIENT_CLASSES = new Set(['08', '53', '57', '58']);

/**
 * Errors the server itself reported (a severity and a SQLSTATE) pass through. Connection failures
 * (no SQLSTATE) and transient classes become DatabaseUnavailableError, keeping the original as cause.
 */
export function translateDbError(err: unknown): unknown {
  const state = sqlState(err);
  // Only the server's own errors carry a severity; Node's socket errors (EPIPE...) have codes too.
  const fromServer = typeof (err as { severity?: unknown } | undefined)?.severity === 'string';
  if (fromServer && state !== undefined && !TRANSIENT_CLASSES.has(state.slice(0, 2))) return err;
  return new DatabaseUnavailableError('database unavailable', { cause: err });
}
