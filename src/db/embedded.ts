import { randomBytes } from 'node:crypto';
import { closeSync, linkSync, mkdirSync, openSync, readFileSync, realpathSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { PGlite } from '@electric-sql/pglite';
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

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Directories this process holds open: a lock file with our own pid is only stale if absent here. */
const heldHere = new Set<string>();

function readPid(path: string): number | undefined {
  try {
    const pid = Number(readFileSync(path, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** A lock is live when its pid is another running process (our own pid only counts via heldHere). */
function liveHolder(pid: number | undefined): pid is number {
  return pid !== undefined && pid !== process.pid && alive(pid);
}

/**
 * PGlite is a single-process database: two openers of one directory would corrupt it. A lock
 * file holding the owner's pid keeps other processes out, and `heldHere` a second opener in this
 * one. A lock left by a dead process is taken over (so is one carrying our own pid but not held
 * here: a container restarted as the same pid). Taking over renames the stale file aside first
 * and checks it is the one that was judged stale, so two starters cannot both take it.
 */
function lock(dir: string): () => void {
  if (heldHere.has(dir)) throw new EmbeddedDatabaseLockedError(dir, process.pid);
  const path = join(dir, 'strongroom.lock');
  for (let attempt = 0; attempt < 5; attempt += 1) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, String(process.pid));
      closeSync(fd);
      heldHere.add(dir);
      return () => {
        heldHere.delete(dir);
        rmSync(path, { force: true });
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const pid = readPid(path);
    if (liveHolder(pid)) throw new EmbeddedDatabaseLockedError(dir, pid);
    const aside = `${path}.stale-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      renameSync(path, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // someone else moved it: look again
      throw err;
    }
    const moved = readPid(aside);
    if (liveHolder(moved)) {
      // Another starter took the stale lock between our read and our rename: put its lock back.
      try {
        linkSync(aside, path);
      } finally {
        rmSync(aside, { force: true });
      }
      throw new EmbeddedDatabaseLockedError(dir, moved);
    }
    rmSync(aside, { force: true });
  }
  throw new Error(`cannot take the lock ${path}`);
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
