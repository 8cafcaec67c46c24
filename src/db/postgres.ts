import { createHash } from 'node:crypto';
import pg from 'pg';
import type { Database, QueryResult, Queryable } from './database.js';
import { translateDbError } from './unavailable.js';

/** Server-side limits set on every connection (0 disables one, as in Postgres). */
export interface SessionTimeouts {
  /** `statement_timeout`: a statement running longer is cancelled (57014). */
  statementMs: number;
  /** `lock_timeout`: a lock waited for longer is given up (55P03), e.g. the audit chain lock a frozen peer holds. */
  lockMs: number;
  /** `idle_in_transaction_session_timeout`: the server ends a session idle inside a transaction (25P03), releasing its locks. */
  idleInTransactionMs: number;
}

export interface PostgresOptions {
  url: string;
  /** Connections kept by the pool. */
  poolSize: number;
  /** Defaults: 30 s statement, 5 s lock, 10 s idle in transaction. */
  timeouts?: Partial<SessionTimeouts>;
  /** Connections of the separate pool for {@link Database.longTransaction} (default 2). */
  longPoolSize?: number;
  /** Called for errors on connections nobody is using (server restart, network drop). */
  onIdleError?: (err: Error) => void;
}

const DEFAULT_TIMEOUTS: Readonly<SessionTimeouts> = { statementMs: 30_000, lockMs: 5_000, idleInTransactionMs: 10_000 };

/**
 * A long transaction waits on the token (an RSA generation takes up to seconds, more under
 * load) while it holds only its own row: the server may end it only after this, far longer
 * than any generation takes, so a frozen process still lets its row go in the end.
 */
const LONG_IDLE_IN_TRANSACTION_MS = 600_000;

/** Statement names by SQL text: every parameterised query is prepared once per connection. */
const statementNames = new Map<string, string>();

/**
 * A named (prepared) query: the server parses and plans it once per connection instead of on
 * every call, which is most of the database cost of the hot path (nonce claim, credential and
 * keypair lookups, request-log insert). SQL texts are constants of the code (batches pass arrays,
 * never a text that grows with the batch), so a connection holds one statement per query site.
 * Queries without parameters (BEGIN, DDL) stay unnamed.
 */
function statement(sql: string, params: readonly unknown[]): pg.QueryConfig {
  if (params.length === 0) return { text: sql };
  let name = statementNames.get(sql);
  if (name === undefined) {
    name = `sr_${createHash('sha256').update(sql).digest('hex').slice(0, 24)}`;
    statementNames.set(sql, name);
  }
  return { name, text: sql, values: params as unknown[] };
}

function wrap(client: pg.Pool | pg.PoolClient): Queryable {
  return {
    async query<R>(sql: string, params: readonly unknown[] = []): Promise<QueryResult<R>> {
      try {
        const result = await client.query(statement(sql, params));
        return { rows: result.rows as R[], rowCount: result.rowCount ?? 0 };
      } catch (err) {
        throw translateDbError(err);
      }
    },
  };
}

function newPool(options: PostgresOptions, max: number, timeouts: SessionTimeouts, connectWaitMs: number): pg.Pool {
  const pool = new pg.Pool({
    connectionString: options.url,
    max,
    // Fail fast while the server is down instead of queueing requests behind a dead socket.
    connectionTimeoutMillis: connectWaitMs,
    idleTimeoutMillis: 30_000,
    application_name: 'strongroom',
    // TCP keepalive: a peer that vanished (host down, cable cut) is noticed by the kernel.
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
    // Sent in the startup packet: every connection has them from its first statement on.
    statement_timeout: timeouts.statementMs,
    lock_timeout: timeouts.lockMs,
    idle_in_transaction_session_timeout: timeouts.idleInTransactionMs,
  });
  // Without a listener, an idle client's error would crash the process.
  pool.on('error', (err) => options.onIdleError?.(err));
  return pool;
}

/**
 * Run `fn` on a client checked out of `pool`. While it is out, the pool's idle listener does not
 * cover it: a server shutdown (57P01 from `pg_ctl stop -m fast`) or a dropped socket emits
 * 'error' on the client, which would crash the process without a listener of our own. A client
 * that failed that way, or whose ROLLBACK failed, is released as broken: the pool destroys it
 * instead of handing a dead connection to the next caller.
 */
async function withTransaction<T>(
  pool: pg.Pool,
  fn: (tx: Queryable) => Promise<T>,
  before?: (q: Queryable) => Promise<void>,
): Promise<T> {
  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (err) {
    throw translateDbError(err);
  }
  let broken: Error | undefined;
  const onError = (err: Error) => {
    broken ??= err;
  };
  client.on('error', onError);
  const tx = wrap(client);
  try {
    if (before) await before(tx);
    await tx.query('BEGIN');
    const result = await fn(tx);
    await tx.query('COMMIT');
    return result;
  } catch (err) {
    if (!broken) {
      try {
        await client.query('ROLLBACK');
      } catch (rollbackErr) {
        broken = rollbackErr as Error;
      }
    }
    throw err;
  } finally {
    client.off('error', onError);
    client.release(broken);
  }
}

/** A Postgres server through a pg connection pool (and a small second pool for long transactions). */
export function openPostgres(options: PostgresOptions): Database {
  const timeouts: SessionTimeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts };
  const pool = newPool(options, options.poolSize, timeouts, 5_000);
  // Waiting here holds no connection anyone else needs, so it may wait longer than a request does.
  const longPool = newPool(
    options,
    options.longPoolSize ?? 2,
    { ...timeouts, idleInTransactionMs: Math.max(timeouts.idleInTransactionMs, LONG_IDLE_IN_TRANSACTION_MS) },
    30_000,
  );
  const direct = wrap(pool);
  return {
    kind: 'postgres',
    query: direct.query,
    transaction: (fn) => withTransaction(pool, fn),
    longTransaction: (fn, opts) => withTransaction(longPool, fn, opts?.before),
    async close() {
      await Promise.all([pool.end(), longPool.end()]);
    },
  };
}
