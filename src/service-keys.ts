import type { KeyStore } from '../hsm/index.js';
import type { Database } from './db/database.js';

/** Advisory lock serialising the creation of the token's service keys across instances. */
const SERVICE_KEYS_LOCK = 0x5354524f; // 'STRO'

/**
 * Create the token's service keys if missing, holding a database-wide lock so that two
 * instances starting together on a fresh token create one secrets key, not two.
 */
export async function ensureServiceKeys(db: Database, keyStore: KeyStore): Promise<void> {
  await db.transaction(async (tx) => {
    await tx.query('SELECT pg_advisory_xact_lock($1)', [SERVICE_KEYS_LOCK]);
    await keyStore.ensureServiceKeys();
  });
}
