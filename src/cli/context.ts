import { openPkcs11KeyStore, type KeyStore } from '../../hsm/index.js';
import { loadConfig, type Config } from '../config.js';
import type { Database } from '../db/database.js';
import { openDatabase } from '../db/open.js';
import { ensureServiceKeys } from '../service-keys.js';

export interface CliContext {
  config: Config;
  db: Database;
  keyStore: KeyStore;
}

/**
 * Open what a command needs from the same configuration as the service (environment only:
 * secrets never come from argv), run it, and close everything whatever happens.
 */
export async function withContext<T>(env: NodeJS.ProcessEnv, fn: (ctx: CliContext) => Promise<T>): Promise<T> {
  const config = loadConfig(env);
  const db = await openDatabase(config.database);
  try {
    const keyStore = await openPkcs11KeyStore({
      modulePath: config.pkcs11.modulePath,
      tokenLabel: config.pkcs11.tokenLabel,
      pin: config.pkcs11.pin.reveal(),
      sessions: 1,
    });
    try {
      await ensureServiceKeys(db, keyStore);
      return await fn({ config, db, keyStore });
    } finally {
      await keyStore.close();
    }
  } finally {
    await db.close();
  }
}
