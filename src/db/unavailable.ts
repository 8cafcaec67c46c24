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
 * Errors the server itself reported carry a SQLSTATE and pass through. Connection failures
 * (no SQLSTATE, or class 08 connection exception / 57 operator intervention) become
 * DatabaseUnavailableError, keeping the original as cause.
 */
export function translateDbError(err: unknown): unknown {
  const state = sqlState(err);
  if (state !== undefined && /^[0-9A-Z]{5}$/.test(state) && !state.startsWith('08') && !state.startsWith('57')) {
    return err;
  }
  return new DatabaseUnavailableError('database unavailable', { cause: err });
}
