import { PG_UNIQUE_VIOLATION, sqlState, toBuffer, type Queryable } from './database.js';

export type HawkAlgorithm = 'sha1' | 'sha256';

export interface CredentialRow {
  id: string;
  /** The Hawk key sealed by the token (see KeyStore.sealSecret); never the plaintext. */
  sealedKey: Buffer;
  algorithm: HawkAlgorithm;
  createdAt: Date;
  revokedAt: Date | null;
}

interface Raw {
  id: string;
  sealed_key: unknown;
  algorithm: HawkAlgorithm;
  created_at: Date;
  revoked_at: Date | null;
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

  async find(id: string): Promise<CredentialRow | undefined> {
    const { rows } = await this.#db.query<Raw>(
      'SELECT id, sealed_key, algorithm, created_at, revoked_at FROM hawk_credential WHERE id = $1',
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
    };
  }
}
