import { createHash } from 'node:crypto';
import pg from 'pg';
import type { Database, QueryResult, Queryable } from './database.js';
import { translateDbError } from './unavailable.js';

export interface PostgresOptions {
  url: string;
  /** Connections kept by the pool. */
  poolSize: number;
  /** Called for errors on idle connections (server restart, network drop). */
  onIdleError?: (err: Error) => void;
}

/** Statement names by SQL text: every parameterised query is prepared once per connection. */
const statementNames = new Map<string, string>();

/**
 * A named (prepared) query: the server parses and plans it once per connection instead of on
 * every call, which is most of the database cost of the hot path (nonce claim, credential and
 * keypair lookups, request-log insert). SQL texts come from the code, never from input, so the
 * set of names is bounded. Queries without parameters (BEGIN, DDL) stay unnamed.
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

/** A Postgres server through a pg connection pool. */
export function openPostgres(options: PostgresOptions): Database {
  const pool = new pg.Pool({
    connectionString: options.url,
    max: options.poolSize,
    // Fail fast while the server is down instead of queueing requests behind a dead socket.
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    application_name: 'strongroom',
  });
  // Without a listener, an idle client's error would crash the process.
  pool.on('error', (err) => options.onIdleError?.(err));
  const direct = wrap(pool);
  return {
    kind: 'postgres',
    query: direct.query,
    async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
      let client: pg.PoolClient;
      try {
        client = await pool.connect();
      } catch (err) {
        throw translateDbError(err);
      }
      const tx = wrap(client);
      let broken = false;
      try {
        await tx.query('BEGIN');
        const result = await fn(tx);
        await tx.query('COMMIT');
        return result;
      } catch (err) {
        try {
          await client.query('ROLLBACK');
        } catch {
          broken = true;
        }
        throw err;
      } finally {
        client.release(broken);
      }
    },
    async close() {
      await pool.end();
    },
  };
}
