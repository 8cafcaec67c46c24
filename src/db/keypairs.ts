import { toBuffer, type Queryable } from './database.js';

/** Where a keypair is in its life (see migration 002). */
export type KeypairState = 'generating' | 'pool' | 'enabled' | 'disabled' | 'pending_deletion' | 'deleted';
/** How its key entered the token. */
export type KeypairOrigin = 'generated' | 'imported' | 'restored';

/** States the LKM list and get show: keys that were handed out and still exist. */
export const VISIBLE_STATES: readonly KeypairState[] = ['enabled', 'disabled', 'pending_deletion'];
/** States whose key the token must hold. */
export const KEY_HOLDING_STATES: readonly KeypairState[] = ['pool', 'enabled', 'disabled', 'pending_deletion'];

export interface KeypairRow {
  id: string;
  /** PKCS#1 RSAPublicKey DER. */
  publicKey: Buffer;
  modulusBits: number;
  dateCreated: Date;
  /** Hawk id of the caller that created it (null when created by an operator). */
  owner: string | null;
  /** Default `enabled`: imported and restored keypairs are usable at once. */
  state?: KeypairState;
  /** Default `generated`. */
  origin?: KeypairOrigin;
}

/** A stored keypair with its lifecycle fields. */
export interface KeypairRecord extends KeypairRow {
  state: KeypairState;
  origin: KeypairOrigin;
  stateChangedAt: Date;
  /** Set while pending deletion (and kept once deleted). */
  deleteAfter: Date | null;
}

interface Raw {
  id: string;
  public_key: unknown;
  modulus_bits: number;
  date_created: Date;
  owner: string | null;
  state: KeypairState;
  origin: KeypairOrigin;
  state_changed_at: Date;
  delete_after: Date | null;
}

const COLUMNS = 'id, public_key, modulus_bits, date_created, owner, state, origin, state_changed_at, delete_after';

function fromRaw(row: Raw): KeypairRecord {
  return {
    id: row.id,
    publicKey: toBuffer(row.public_key),
    modulusBits: Number(row.modulus_bits),
    dateCreated: row.date_created,
    owner: row.owner,
    state: row.state,
    origin: row.origin,
    stateChangedAt: row.state_changed_at,
    deleteAfter: row.delete_after,
  };
}

export class KeypairRepository {
  readonly #db: Queryable;

  constructor(db: Queryable) {
    this.#db = db;
  }

  /** Record a keypair whose key is already in the token (import, restore, tests). */
  async insert(row: KeypairRow): Promise<void> {
    await this.#db.query(
      `INSERT INTO keypair (id, public_key, modulus_bits, date_created, owner, state, origin, state_changed_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $4)`,
      [row.id, row.publicKey, row.modulusBits, row.dateCreated, row.owner, row.state ?? 'enabled', row.origin ?? 'generated'],
    );
  }

  /** Any keypair with a known key (every state but `generating`). */
  async find(id: string): Promise<KeypairRecord | undefined> {
    const { rows } = await this.#db.query<Raw>(`SELECT ${COLUMNS} FROM keypair WHERE id = $1 AND state <> 'generating'`, [id]);
    return rows[0] ? fromRaw(rows[0]) : undefined;
  }

  /** The keypairs the LKM contract shows (enabled, disabled, pending deletion), oldest first. */
  async list(): Promise<KeypairRecord[]> {
    return this.listIn(VISIBLE_STATES);
  }

  /** Every keypair with a known key, pool and deleted included, oldest first (operators, backup). */
  async listAll(): Promise<KeypairRecord[]> {
    const { rows } = await this.#db.query<Raw>(
      `SELECT ${COLUMNS} FROM keypair WHERE state <> 'generating' ORDER BY date_created, id`,
    );
    return rows.map(fromRaw);
  }

  async listIn(states: readonly KeypairState[]): Promise<KeypairRecord[]> {
    const { rows } = await this.#db.query<Raw>(
      `SELECT ${COLUMNS} FROM keypair WHERE state = ANY($1::text[]) ORDER BY date_created, id`,
      [[...states]],
    );
    return rows.map(fromRaw);
  }

  /** Ids and states of every row, `generating` included (reconciliation). */
  async states(): Promise<Map<string, KeypairState>> {
    const { rows } = await this.#db.query<{ id: string; state: KeypairState }>('SELECT id, state FROM keypair');
    return new Map(rows.map((r) => [r.id, r.state]));
  }

  /**
   * The intent record written (and committed) before the token generates or imports `id`.
   * Importers pass the original creation date and owner; generation passes now and null.
   */
  async insertGenerating(id: string, now: Date, origin: KeypairOrigin = 'generated', owner: string | null = null): Promise<void> {
    await this.#db.query(
      `INSERT INTO keypair (id, date_created, owner, state, origin, state_changed_at)
       VALUES ($1, $2, $4, 'generating', $3, $2)`,
      [id, now, origin, owner],
    );
  }

  /**
   * Lock a `generating` row for the rest of the transaction; false when it is gone (another
   * instance's reconciliation removed it) or taken.
   */
  async lockGenerating(id: string): Promise<boolean> {
    const { rowCount } = await this.#db.query(
      `SELECT 1 FROM keypair WHERE id = $1 AND state = 'generating' FOR UPDATE`,
      [id],
    );
    return rowCount === 1;
  }

  /**
   * `generating` rows nobody holds locked (their generator died) and written before
   * `startedBefore` (a younger one may be a live generation not yet locked), locked for this transaction.
   */
  async lockAbandonedGenerating(startedBefore: Date): Promise<{ id: string; origin: KeypairOrigin }[]> {
    const { rows } = await this.#db.query<{ id: string; origin: KeypairOrigin }>(
      `SELECT id, origin FROM keypair WHERE state = 'generating' AND state_changed_at < $1 ORDER BY id FOR UPDATE SKIP LOCKED`,
      [startedBefore],
    );
    return rows;
  }

  /**
   * The token holds the key: store its public half and move the row out of `generating`. A
   * generated key gets `now` as its creation date; an imported or restored one keeps the date
   * its intent row was written with (the original dateCreated).
   */
  async completeGeneration(
    id: string,
    fields: { publicKey: Buffer; modulusBits: number; state: KeypairState; owner: string | null; now: Date },
  ): Promise<KeypairRecord | undefined> {
    const { rows } = await this.#db.query<Raw>(
      `UPDATE keypair SET public_key = $2, modulus_bits = $3, state = $4, owner = COALESCE($5, owner),
         date_created = CASE WHEN origin = 'generated' THEN $6 ELSE date_created END, state_changed_at = $6
       WHERE id = $1 AND state = 'generating' RETURNING ${COLUMNS}`,
      [id, fields.publicKey, fields.modulusBits, fields.state, fields.owner, fields.now],
    );
    return rows[0] ? fromRaw(rows[0]) : undefined;
  }

  /** The token never got the key: the intent is void. */
  async deleteGenerating(id: string): Promise<boolean> {
    const { rowCount } = await this.#db.query(`DELETE FROM keypair WHERE id = $1 AND state = 'generating'`, [id]);
    return rowCount === 1;
  }

  async countPool(): Promise<number> {
    const { rows } = await this.#db.query<{ n: unknown }>(`SELECT count(*) AS n FROM keypair WHERE state = 'pool'`);
    return Number(rows[0]?.n ?? 0);
  }

  /**
   * Hand the oldest pool key to `owner`: one statement, so two callers (two instances) never get
   * the same row: SKIP LOCKED passes over a row another transaction is taking, and the re-check
   * of `state = 'pool'` after the lock drops one taken meanwhile.
   */
  async takeFromPool(owner: string | null, now: Date): Promise<KeypairRecord | undefined> {
    const { rows } = await this.#db.query<Raw>(
      `UPDATE keypair SET state = 'enabled', owner = $1, date_created = $2, state_changed_at = $2
       WHERE id = (SELECT id FROM keypair WHERE state = 'pool' ORDER BY state_changed_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
         AND state = 'pool'
       RETURNING ${COLUMNS}`,
      [owner, now],
    );
    return rows[0] ? fromRaw(rows[0]) : undefined;
  }

  /**
   * Move `id` from one of `from` to `to` in one statement (a concurrent change makes it miss).
   * `deleteAfter` is written only when given.
   */
  async transition(
    id: string,
    from: readonly KeypairState[],
    to: KeypairState,
    now: Date,
    deleteAfter?: Date | null,
  ): Promise<KeypairRecord | undefined> {
    // One SQL text for every call: `from` is an array, and delete_after changes only when given.
    const { rows } = await this.#db.query<Raw>(
      `UPDATE keypair SET state = $2, state_changed_at = $3,
         delete_after = CASE WHEN $5::boolean THEN $4::timestamptz ELSE delete_after END
       WHERE id = $1 AND state = ANY($6::text[]) RETURNING ${COLUMNS}`,
      [id, to, now, deleteAfter ?? null, deleteAfter !== undefined, [...from]],
    );
    return rows[0] ? fromRaw(rows[0]) : undefined;
  }

  /** Keypairs pending deletion whose date has come. */
  async listDue(now: Date): Promise<KeypairRecord[]> {
    const { rows } = await this.#db.query<Raw>(
      `SELECT ${COLUMNS} FROM keypair WHERE state = 'pending_deletion' AND delete_after <= $1 ORDER BY delete_after, id`,
      [now],
    );
    return rows.map(fromRaw);
  }
}
