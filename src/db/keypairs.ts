import { toBuffer, type Queryable } from './database.js';

export interface KeypairRow {
  id: string;
  /** PKCS#1 RSAPublicKey DER. */
  publicKey: Buffer;
  modulusBits: number;
  dateCreated: Date;
  /** Hawk id of the caller that created it (null when created by an operator). */
  owner: string | null;
}

interface Raw {
  id: string;
  public_key: unknown;
  modulus_bits: number;
  date_created: Date;
  owner: string | null;
}

const COLUMNS = 'id, public_key, modulus_bits, date_created, owner';

function fromRaw(row: Raw): KeypairRow {
  return {
    id: row.id,
    publicKey: toBuffer(row.public_key),
    modulusBits: Number(row.modulus_bits),
    dateCreated: row.date_created,
    owner: row.owner,
  };
}

export class KeypairRepository {
  readonly #db: Queryable;

  constructor(db: Queryable) {
    this.#db = db;
  }

  async insert(row: KeypairRow): Promise<void> {
    await this.#db.query(`INSERT INTO keypair (${COLUMNS}) VALUES ($1, $2, $3, $4, $5)`, [
      row.id,
      row.publicKey,
      row.modulusBits,
      row.dateCreated,
      row.owner,
    ]);
  }

  async find(id: string): Promise<KeypairRow | undefined> {
    const { rows } = await this.#db.query<Raw>(`SELECT ${COLUMNS} FROM keypair WHERE id = $1`, [id]);
    return rows[0] ? fromRaw(rows[0]) : undefined;
  }

  /** Every keypair, oldest first. */
  async list(): Promise<KeypairRow[]> {
    const { rows } = await this.#db.query<Raw>(`SELECT ${COLUMNS} FROM keypair ORDER BY date_created, id`);
    return rows.map(fromRaw);
  }
}
