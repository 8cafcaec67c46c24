import { mkdirSync, realpathSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { PGlite } from '@electric-sql/pglite';
import { tryPidLock } from '../pid-lock.js';
import type { Database, QueryResult, Queryable } from './database.js';

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

function wrap(db: Pick<PGlite, 'query'>): Queryable {
  return {
    async query<R>(sql: string, params: readonly unknown[] = []): Promise<QueryResult<R>> {
      const result = await db.query<R>(sql, params as unknown[]);
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
  return {
    kind: 'embedded',
    query: direct.query,
    transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
      return db.transaction((tx) => fn(wrap(tx)));
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
