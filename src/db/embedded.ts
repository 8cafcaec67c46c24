import { mkdirSync, realpathSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { PGlite } from '@electric-sql/pglite';
import { tryPidLock } from '../pid-lock.js';
import type { Database, QueryResult, Queryable } from './database.js';
import { translateDbError } from './unavailable.js';

export interface EmbeddedOptions {
  /** Directory holding the embedded database (created if missing). */
  dataDir: string;
}

/** Another live process holds the embedded database. */
export class EmbeddedDatabaseLockedError extends Error {
  readonly code = 'DB_ERR_LOCKED';
  readonly pid: number;
  constructor(dataDir: string, pid: number) {
    super(
      `the embedded database in ${dataDir} is in use by process ${pid}; ` +
        'stop it first, or give both processes the same DATABASE_URL (a Postgres server)',
    );
    this.name = 'EmbeddedDatabaseLockedError';
    this.pid = pid;
  }
}

/**
 * PGlite is a single-process database: two openers of one directory would corrupt it. A lock
 * file holding the owner's pid keeps other processes out, and a second opener in this one.
 */
function lock(dir: string): () => void {
  const result = tryPidLock(join(dir, 'strongroom.lock'));
  if ('holder' in result) throw new EmbeddedDatabaseLockedError(dir, result.holder);
  return result.release;
}

/**
 * PGlite's errors are classified like a server's (src/db/unavailable.ts): a full disk (53100, or
 * ENOSPC from its file layer) or an I/O error is "unavailable, retry later" (503), not a 500.
 */
function wrap(db: Pick<PGlite, 'query'>): Queryable {
  return {
    async query<R>(sql: string, params: readonly unknown[] = []): Promise<QueryResult<R>> {
      let result: Awaited<ReturnType<typeof db.query<R>>>;
      try {
        result = await db.query<R>(sql, params as unknown[]);
      } catch (err) {
        throw translateDbError(err);
      }
      // PGlite reports affectedRows 0 for a SELECT; pg's rowCount is the number of rows returned.
      const returnsRows = (result.fields?.length ?? 0) > 0;
      return { rows: result.rows, rowCount: returnsRows ? result.rows.length : (result.affectedRows ?? 0) };
    },
  };
}

/** The embedded Postgres (PGlite) under `dataDir`: same SQL as the server, no server to run. */
export async function openEmbedded(options: EmbeddedOptions): Promise<Database> {
  mkdirSync(resolve(options.dataDir), { recursive: true, mode: 0o700 });
  // The real path: a symlink to the same directory must meet the same lock.
  const dir = realpathSync(resolve(options.dataDir));
  const unlock = lock(dir);
  let db: PGlite;
  try {
    db = await PGlite.create(join(dir, 'pgdata'));
  } catch (err) {
    unlock();
    throw err;
  }
  const direct = wrap(db);
  const transaction = async <T>(fn: (tx: Queryable) => Promise<T>): Promise<T> => {
    try {
      return await db.transaction((tx) => fn(wrap(tx)));
    } catch (err) {
      // BEGIN, COMMIT and ROLLBACK are PGlite's own: classify their failures too (a WebAssembly RuntimeError is the engine failing; what `fn`
      // threw is already classified, or is the caller's own error and passes through).
      const engine = typeof (err as { severity?: unknown }).severity === 'string' || (err as Error | undefined)?.name === 'RuntimeError';
      throw engine ? translateDbError(err) : err;
    }
  };
  return {
    kind: 'embedded',
    query: direct.query,
    transaction,
    // One connection and one process (the lock file): there is no other pool to move to.
    async longTransaction(fn, opts) {
      if (opts?.before) await opts.before(direct);
      return transaction(fn);
    },
    async close() {
      try {
        await db.close();
      } finally {
        unlock();
      }
    },
  };
}
