import type { DatabaseConfig } from '../config.js';
import type { Database } from './database.js';
import { openEmbedded } from './embedded.js';
import { migrate } from './migrations.js';
import { openPostgres } from './postgres.js';

/** Open the configured database and bring its schema up to date. */
export async function openDatabase(config: DatabaseConfig, onIdleError?: (err: Error) => void): Promise<Database> {
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
    await migrate(db);
  } catch (err) {
    await db.close().catch(() => undefined);
    throw err;
  }
  return db;
}
