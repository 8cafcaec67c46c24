import type { Queryable } from './database.js';

/**
 * Hawk nonces, shared by every instance through the database. A nonce may be used once per
 * credential while its record lives; an expired record may be taken over.
 */
export class NonceRepository {
  readonly #db: Queryable;

  constructor(db: Queryable) {
    this.#db = db;
  }

  /** Record `nonce` for `hawkId` until `expiresAt`; false if it is already recorded and live. */
  async claim(hawkId: string, nonce: string, now: Date, expiresAt: Date): Promise<boolean> {
    const { rowCount } = await this.#db.query(
      `INSERT INTO hawk_nonce (hawk_id, nonce, expires_at) VALUES ($1, $2, $3)
       ON CONFLICT (hawk_id, nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at
       WHERE hawk_nonce.expires_at < $4`,
      [hawkId, nonce, expiresAt, now],
    );
    return rowCount === 1;
  }

  /** Drop expired records; returns how many. */
  async purge(now: Date): Promise<number> {
    const { rowCount } = await this.#db.query('DELETE FROM hawk_nonce WHERE expires_at < $1', [now]);
    return rowCount;
  }
}
