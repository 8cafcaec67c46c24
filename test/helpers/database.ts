import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Database } from '../../src/db/database.js';
import { migrate } from '../../src/db/migrations.js';
import { openPostgres } from '../../src/db/postgres.js';

export interface TestDatabase {
  url: string;
  db: Database;
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

/** A fresh, migrated database on the real server, dropped when the test ends. */
export async function createTestDatabase(t: Teardown): Promise<TestDatabase> {
  const base = serverUrl();
  const name = `sr_test_${process.pid}_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: base });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = new URL(base);
  url.pathname = `/${name}`;
  const db = openPostgres({ url: url.toString(), poolSize: 5 });
  await migrate(db);
  t.teardown(async () => {
    await db.close();
    const drop = new pg.Client({ connectionString: base });
    await drop.connect();
    await drop.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await drop.end();
  });
  return { url: url.toString(), db };
}
