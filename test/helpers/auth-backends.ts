import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import type { Database } from '../../src/db/database.js';
import { openEmbedded } from '../../src/db/embedded.js';
import { migrate } from '../../src/db/migrations.js';
import { createEmptyDatabase } from './database.js';

/** A migrated database, and a second handle on it standing for another instance. */
export interface AuthBackend {
  kind: 'postgres' | 'embedded';
  db: Database;
  /**
   * Postgres: a second pool on the same database (its own connections, like another process).
   * PGlite is single-process, so the second instance is the same handle under other repositories.
   */
  second: Database;
}

/** Run `suite` once against the real Postgres server and once against the embedded PGlite. */
export async function eachBackend(t: Test, suite: (t: Test, b: AuthBackend) => Promise<void>): Promise<void> {
  await t.test('postgres', async (t) => {
    const empty = await createEmptyDatabase(t);
    const db = empty.open();
    await migrate(db);
    await suite(t, { kind: 'postgres', db, second: empty.open(2) });
  });
  await t.test('embedded PGlite', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'strongroom-auth-test-'));
    const db = await openEmbedded({ dataDir: dir });
    t.teardown(async () => {
      await db.close().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    });
    await migrate(db);
    await suite(t, { kind: 'embedded', db, second: db });
  });
}

/** A clock the test moves by hand. */
export class ManualClock {
  now: number;
  constructor(start = Date.UTC(2026, 0, 1, 12, 0, 0)) {
    this.now = start;
  }
  readonly read = (): number => this.now;
  advance(ms: number): void {
    this.now += ms;
  }
}
