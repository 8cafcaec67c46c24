import { randomUUID } from 'node:crypto';
import { encodeRsaPublicKey, modulusBits, type KeyStore } from '../../hsm/index.js';
import type { Database, Queryable } from '../db/database.js';
import { KeypairRepository, type KeypairRecord, type KeypairState } from '../db/keypairs.js';

export interface KeyGeneratorOptions {
  db: Database;
  keyStore: KeyStore;
  bits: number;
  clock?: () => number;
}

/** What a generation is for: the pool, or a caller who gets the key at once. */
export type GenerationTarget = { state: 'pool' } | { state: 'enabled'; owner: string | null };

/**
 * Crash-consistent key generation. The order makes every kill point recoverable:
 * 1. commit a `generating` row under a fresh id (an intent: nobody sees it);
 * 2. generate in the token under that id, holding the row locked (Postgres, on the database's
 *    separate long-transaction pool) so another instance's reconciliation leaves it alone while
 *    this process lives;
 * 3. store the public key and the final state in one UPDATE.
 * Killed after 1 or 2, the row stays `generating`; `reconcileGenerating` completes it into the
 * pool when the token has the key and deletes it when it does not. A row whose key the token
 * lacks is never shown to anyone.
 */
export class KeyGenerator {
  readonly #db: Database;
  readonly #keyStore: KeyStore;
  readonly #bits: number;
  readonly #clock: () => number;
  /** Ids this process is generating right now: its own reconciliation skips them. */
  readonly inFlight = new Set<string>();

  constructor(options: KeyGeneratorOptions) {
    this.#db = options.db;
    this.#keyStore = options.keyStore;
    this.#bits = options.bits;
    this.#clock = options.clock ?? Date.now;
  }

  async generate(target: GenerationTarget): Promise<KeypairRecord> {
    const id = randomUUID();
    const owner = target.state === 'enabled' ? target.owner : null;
    this.inFlight.add(id);
    try {
      const intent = (q: Queryable) => new KeypairRepository(q).insertGenerating(id, new Date(this.#clock()));
      const run = async (repo: KeypairRepository): Promise<KeypairRecord> => {
        const publicKey = await this.#keyStore.generateRsaKeyPair(id, this.#bits);
        const done = await repo.completeGeneration(id, {
          publicKey: encodeRsaPublicKey(publicKey),
          modulusBits: modulusBits(publicKey.modulus),
          state: target.state satisfies KeypairState,
          owner,
          now: new Date(this.#clock()),
        });
        if (!done) throw new Error(`keypair ${id} left the generating state while its key was generated`);
        return done;
      };
      if (this.#db.kind === 'embedded') {
        // One process per embedded database (a lock file): nobody else reconciles meanwhile, and a
        // transaction would hold PGlite's only connection for the whole generation.
        await intent(this.#db);
        return await run(new KeypairRepository(this.#db));
      }
      // The row lock is held across the generation (seconds): on the long-transaction pool, so
      // no connection that decrypts and audit appends need is held meanwhile. The intent is
      // written on that connection once it is ours, then locked at once: a wait for the
      // connection never leaves a committed, unlocked intent for another instance to reconcile.
      return await this.#db.longTransaction(
        async (tx) => {
          const repo = new KeypairRepository(tx);
          if (!(await repo.lockGenerating(id))) {
            throw new Error(`keypair ${id} was reconciled away before its key was generated`);
          }
          return run(repo);
        },
        { before: intent },
      );
    } catch (err) {
      this.inFlight.delete(id);
      // Settle the intent now rather than at the next start: the token says whether the key exists.
      await reconcileGenerating(this.#db, this.#keyStore, { skip: this.inFlight, clock: this.#clock }).catch(() => undefined);
      throw err;
    } finally {
      this.inFlight.delete(id);
    }
  }
}

export interface ReconcileReport {
  /** `generating` rows whose key the token holds: now pool keys (imported/restored ones: enabled). */
  completed: string[];
  /** `generating` rows whose key never came to be: deleted (with any half-made token object). */
  removed: string[];
}

/**
 * How old an unlocked `generating` row must be before another process settles it: a live
 * generation takes seconds, so a younger row may be one whose generator has not locked it yet
 * (or, on the embedded database, never does). Generous on purpose: settling late costs nothing.
 */
export const GENERATING_GRACE_MS = 10 * 60_000;

/**
 * Settle `generating` rows left by a process that died (or by a failed generation): the token
 * decides. Rows locked by a live generator (Postgres), younger than `graceMs`
 * (GENERATING_GRACE_MS) or in `skip` (this process) are left alone.
 */
export async function reconcileGenerating(
  db: Database,
  keyStore: KeyStore,
  options: { skip?: ReadonlySet<string>; clock?: () => number; graceMs?: number } = {},
): Promise<ReconcileReport> {
  const clock = options.clock ?? Date.now;
  const report: ReconcileReport = { completed: [], removed: [] };
  const startedBefore = new Date(clock() - (options.graceMs ?? GENERATING_GRACE_MS));
  await db.transaction(async (tx) => {
    const repo = new KeypairRepository(tx);
    for (const { id, origin } of await repo.lockAbandonedGenerating(startedBefore)) {
      if (options.skip?.has(id)) continue;
      const publicKey = await keyStore.getRsaPublicKey(id);
      if (publicKey) {
        // A generated key nobody was given (its request failed) joins the pool; an imported or
        // restored one keeps its id and becomes the keypair it was meant to be.
        await repo.completeGeneration(id, {
          publicKey: encodeRsaPublicKey(publicKey),
          modulusBits: modulusBits(publicKey.modulus),
          state: origin === 'generated' ? 'pool' : 'enabled',
          owner: null,
          now: new Date(clock()),
        });
        report.completed.push(id);
      } else {
        // A kill inside C_GenerateKeyPair may leave the public half alone: remove what exists.
        await keyStore.deleteKeyPair(id);
        await repo.deleteGenerating(id);
        report.removed.push(id);
      }
    }
  });
  return report;
}
