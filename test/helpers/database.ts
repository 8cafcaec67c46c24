import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Database } from '../../src/db/database.js';
import { migrate } from '../../src/db/migrations.js';
import { openPostgres } from '../../src/db/postgres.js';

export interface TestDatabase {
  url: string;
  db: Database;
}

export interface EmptyDatabase {
  url: string;
  /** Open a pool on it; pools are closed before the database is dropped. */
  open(poolSize?: number): Database;
}

/** The Postgres server the suite runs against (scripts/test.sh sets DATABASE_URL). */
export function serverUrl(): string {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL must name a Postgres server for the tests; scripts/test.sh sets it');
  return url;
}

interface Teardown {
  teardown(fn: () => unknown): void;
}

async function admin(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl() });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

/** A fresh, empty database on the real server, dropped when the test ends. */
export async function createEmptyDatabase(t: Teardown): Promise<EmptyDatabase> {
  const name = `sr_test_${process.pid}_${randomBytes(4).toString('hex')}`;
  await admin(`CREATE DATABASE ${name}`);
  const url = new URL(serverUrl());
  url.pathname = `/${name}`;
  const opened: Database[] = [];
  t.teardown(async () => {
    for (const db of opened) await db.close().catch(() => undefined);
    await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  });
  return {
    url: url.toString(),
    open(poolSize = 5) {
      const db = openPostgres({ url: url.toString(), poolSize });
      opened.push(db);
      return db;
    },
  };
}

/** A fresh, migrated database on the real server, dropped when the test ends. */
export async function createTestDatabase(t: Teardown): Promise<TestDatabase> {
  const empty = await createEmptyDatabase(t);
  const db = empty.open();
  await migrate(db);
  return { url: empty.url, db };
}
