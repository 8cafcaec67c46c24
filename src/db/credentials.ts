import { PG_UNIQUE_VIOLATION, sqlState, toBuffer, type Queryable } from './database.js';

export type HawkAlgorithm = 'sha1' | 'sha256';

export interface CredentialRow {
  id: string;
  /** The Hawk key sealed by the token (see KeyStore.sealSecret); never the plaintext. */
  sealedKey: Buffer;
  algorithm: HawkAlgorithm;
  createdAt: Date;
  revokedAt: Date | null;
  /** Has authenticated a request with its query string signed (see migration 010). */
  signsQuery: boolean;
}

interface Raw {
  id: string;
  sealed_key: unknown;
  algorithm: HawkAlgorithm;
  created_at: Date;
  revoked_at: Date | null;
  signs_query?: boolean;
}

export class CredentialRepository {
  readonly #db: Queryable;

  constructor(db: Queryable) {
    this.#db = db;
  }

  /** Insert a credential; false when the id is taken. */
  async insert(id: string, sealedKey: Buffer, algorithm: HawkAlgorithm): Promise<boolean> {
    try {
      await this.#db.query('INSERT INTO hawk_credential (id, sealed_key, algorithm) VALUES ($1, $2, $3)', [
        id,
        sealedKey,
        algorithm,
      ]);
      return true;
    } catch (err) {
      if (sqlState(err) === PG_UNIQUE_VIOLATION) return false;
      throw err;
    }
  }

  /** Every credential without its key, oldest first. */
  async list(): Promise<Omit<CredentialRow, 'sealedKey' | 'signsQuery'>[]> {
    const { rows } = await this.#db.query<Omit<Raw, 'sealed_key'>>(
      'SELECT id, algorithm, created_at, revoked_at FROM hawk_credential ORDER BY created_at, id',
    );
    return rows.map((r) => ({ id: r.id, algorithm: r.algorithm, createdAt: r.created_at, revokedAt: r.revoked_at }));
  }

  /** Mark `id` revoked (kept, never deleted: the request log names it). */
  async revoke(id: string): Promise<'revoked' | 'already-revoked' | 'unknown'> {
    const { rowCount } = await this.#db.query('UPDATE hawk_credential SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL', [id]);
    if (rowCount > 0) return 'revoked';
    return (await this.find(id)) ? 'already-revoked' : 'unknown';
  }

  /** Replace the sealed key of a credential that is not revoked; false when there is none. */
  async replaceKey(id: string, sealedKey: Buffer): Promise<boolean> {
    const { rowCount } = await this.#db.query(
      'UPDATE hawk_credential SET sealed_key = $2 WHERE id = $1 AND revoked_at IS NULL',
      [id, sealedKey],
    );
    return rowCount > 0;
  }

  /** Record that `id` signs its query strings (idempotent). */
  async markSignsQuery(id: string): Promise<void> {
    await this.#db.query('UPDATE hawk_credential SET signs_query = true WHERE id = $1 AND NOT signs_query', [id]);
  }

  async find(id: string): Promise<CredentialRow | undefined> {
    const { rows } = await this.#db.query<Raw>(
      'SELECT id, sealed_key, algorithm, created_at, revoked_at, signs_query FROM hawk_credential WHERE id = $1',
      [id],
    );
    const row = rows[0];
    if (!row) return undefined;
    return {
      id: row.id,
      sealedKey: toBuffer(row.sealed_key),
      algorithm: row.algorithm,
      createdAt: row.created_at,
      revokedAt: row.revoked_at,
      signsQuery: row.signs_query === true,
    };
  }
}
