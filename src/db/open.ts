import type { DatabaseConfig } from '../config.js';
import type { Database } from './database.js';
import { openEmbedded } from './embedded.js';
import { CORE_COMPONENT, migrateAll, migrations, type MigrationSet } from './migrations.js';
import { openPostgres } from './postgres.js';

/** Open the configured database and bring its schema up to date (the core's, and each of `sets`' given). */
export async function openDatabase(
  config: DatabaseConfig,
  onIdleError?: (err: Error) => void,
  sets: readonly MigrationSet[] = [{ component: CORE_COMPONENT, migrations }],
): Promise<Database> {
  const db =
    config.kind === 'postgres'
      ? openPostgres({
          url: config.url.reveal(),
          poolSize: config.poolSize,
          timeouts: config.timeouts,
          ...(onIdleError && { onIdleError }),
        })
      : await openEmbedded({ dataDir: config.dataDir });
  try {
    await migrateAll(db, sets);
  } catch (err) {
    await db.close().catch(() => undefined);
    throw err;
  }
  return db;
}
