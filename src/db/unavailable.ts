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
 * 53 insufficient resources (too many connections, disk full, out of memory), 57 operator
 * intervention (57014 statement timeout or cancel, 57P01 admin shutdown, 57P02 crash shutdown,
 * 57P03 cannot connect now, 57P05 idle session timeout), 58 system error (I/O error).
 */
const TRANSIENT_CLASSES = new Set(['08', '53', '57', '58']);

/**
 * Single states outside those classes that are just as transient: 55P03 lock_timeout (a peer
 * holds the lock longer than DATABASE_LOCK_TIMEOUT_MS), 25P03 idle_in_transaction_session_timeout
 * (the server ended our session), 40001 serialization failure and 40P01 deadlock (retrying works).
 */
const TRANSIENT_STATES = new Set(['55P03', '25P03', '40001', '40P01']);

/** True when a SQLSTATE means the database cannot serve now (see the two sets above). */
function isTransientState(state: string): boolean {
  return TRANSIENT_CLASSES.has(state.slice(0, 2)) || TRANSIENT_STATES.has(state);
}

/**
 * Classify an error of pg or PGlite, deliberately:
 * - an error the server reported (a severity and a SQLSTATE) passes through, unless its state is
 *   transient (above): then it is DatabaseUnavailableError;
 * - a programming error (TypeError, RangeError: a bad parameter) passes through: it is a bug, and
 *   retrying would not help;
 * - everything else is the connection failing: a socket error (ECONNREFUSED, ECONNRESET, EPIPE,
 *   ENOSPC in PGlite's files), pg's "Connection terminated", a connect timeout, a client that was
 *   released as broken. It becomes DatabaseUnavailableError, keeping the original as cause.
 */
export function translateDbError(err: unknown): unknown {
  if (err instanceof DatabaseUnavailableError) return err;
  const state = sqlState(err);
  // Only the server's own errors carry a severity; Node's socket errors (EPIPE...) have codes too.
  const fromServer = typeof (err as { severity?: unknown } | undefined)?.severity === 'string';
  if (fromServer && state !== undefined && !isTransientState(state)) return err;
  if (!fromServer && (err instanceof TypeError || err instanceof RangeError)) return err;
  return new DatabaseUnavailableError('database unavailable', { cause: err });
}
