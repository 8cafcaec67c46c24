/**
 * One small interface over a Postgres server (pg) and the embedded Postgres (PGlite), so every
 * repository runs the same SQL on both.
 */
export interface QueryResult<R> {
  rows: R[];
  rowCount: number;
}

export interface Queryable {
  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<QueryResult<R>>;
}

export interface Database extends Queryable {
  /** `postgres` for a server reached through DATABASE_URL, `embedded` for PGlite under DATA_DIR. */
  readonly kind: 'postgres' | 'embedded';
  /** Run `fn` in one transaction: committed when it resolves, rolled back when it throws. */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /**
   * A transaction that waits on something slow while it holds a lock (a key generation holding
   * its intent row). On Postgres it runs on a small pool of its own, so it never holds a
   * connection that short queries (decrypts, audit appends) are waiting for. `before` runs on the
   * same connection just before BEGIN, committed on its own: a row it writes is locked by `fn`
   * one round trip later, never after a wait for a connection.
   */
  longTransaction<T>(fn: (tx: Queryable) => Promise<T>, options?: { before?: (q: Queryable) => Promise<void> }): Promise<T>;
  close(): Promise<void>;
}

/** Postgres error codes we branch on (Appendix A of the Postgres manual). */
export const PG_UNIQUE_VIOLATION = '23505';

/** The SQLSTATE of a pg or PGlite error, if it carries one. */
export function sqlState(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') return err.code;
  return undefined;
}

/** bytea comes back as Buffer from pg and Uint8Array from PGlite. */
export function toBuffer(value: unknown): Buffer {
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError('expected bytea');
}

/** int8 comes back as string from pg and number from PGlite. */
export function toNumber(value: unknown): number {
  const n = typeof value === 'number' ? value : Number(value);
  if (!Number.isSafeInteger(n)) throw new TypeError('expected a safe integer');
  return n;
}
