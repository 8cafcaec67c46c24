import type { KeyStore } from '../../hsm/index.js';
import type { Database, Queryable } from '../db/database.js';
import { KEY_HOLDING_STATES, KeypairRepository } from '../db/keypairs.js';
import { reconcileGenerating, type ReconcileReport } from './generator.js';

export interface KeyInconsistencies {
  /** Keypairs that should have a key (pool, enabled, disabled, pending deletion) the token lacks. */
  rowsWithoutKey: string[];
  /** Keys in the token (UUID-named RSA private keys) that no keypair row names at all. */
  keysWithoutRow: string[];
}

/**
 * Compare the database with the token. Read-only. `generating` rows are intents, not keypairs,
 * so a missing key there is no inconsistency; a `deleted` row whose key is still in the token is
 * a purge cut short (the next purge finishes it), also not one.
 * Order matters with a live service: rows are read before and after the token listing, so a
 * key generated or purged meanwhile is not reported.
 */
export async function findKeyInconsistencies(db: Queryable, keyStore: KeyStore): Promise<KeyInconsistencies> {
  const repo = new KeypairRepository(db);
  const before = await repo.states();
  const inToken = new Set(await keyStore.listKeyPairIds());
  const after = await repo.states();
  const holding = new Set<string>(KEY_HOLDING_STATES);
  const unlisted = [...before]
    .filter(([id, state]) => holding.has(state) && holding.has(after.get(id) ?? 'deleted') && !inToken.has(id))
    .map(([id]) => id)
    .sort();
  // A listing can miss a key another process made (SoftHSM's file store); a lookup confirms a
  // miss with a token refresh, so a key that exists is never reported missing.
  const rowsWithoutKey: string[] = [];
  for (const id of unlisted) if (!(await keyStore.getRsaPublicKey(id))) rowsWithoutKey.push(id);
  const keysWithoutRow = [...inToken].filter((id) => !after.has(id) && !before.has(id)).sort();
  return { rowsWithoutKey, keysWithoutRow };
}

export interface ReconcileKeysOptions {
  /** Also dates the grace period of `generating` rows (GENERATING_GRACE_MS). */
  clock?: () => number;
  /** Ids this process is generating (skipped). */
  skip?: ReadonlySet<string>;
  log: {
    info(obj: object, msg: string): void;
    error(obj: object, msg: string): void;
  };
}

/**
 * At start: settle `generating` rows left by a killed process (once older than
 * GENERATING_GRACE_MS: a younger unlocked one may be another instance's live generation), then report what remains
 * inconsistent. Nothing else is changed: a key without a row is kept (it may be a key being
 * imported elsewhere, or the only copy of something) and never reused; a row without a key
 * needs the token restored.
 */
export async function reconcileKeys(
  db: Database,
  keyStore: KeyStore,
  options: ReconcileKeysOptions,
): Promise<ReconcileReport & KeyInconsistencies> {
  const settled = await reconcileGenerating(db, keyStore, {
    ...(options.skip && { skip: options.skip }),
    ...(options.clock && { clock: options.clock }),
  });
  if (settled.completed.length > 0) {
    options.log.info({ keypairIds: settled.completed }, 'interrupted key generations completed into the key pool');
  }
  if (settled.removed.length > 0) {
    options.log.info({ keypairIds: settled.removed }, 'interrupted key generations without a key removed');
  }
  const found = await findKeyInconsistencies(db, keyStore);
  if (found.rowsWithoutKey.length > 0) {
    options.log.error({ keypairIds: found.rowsWithoutKey }, 'the database lists keypairs the token does not hold');
  }
  if (found.keysWithoutRow.length > 0) {
    options.log.error(
      { keypairIds: found.keysWithoutRow },
      'the token holds keys no keypair row names; they are kept and never reused (strongroom doctor lists them)',
    );
  }
  return { ...settled, ...found };
}
