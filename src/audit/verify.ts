import type { Queryable } from '../db/database.js';
import { toBuffer, toNumber } from '../db/database.js';
import { GENESIS_HASH, hashRecord, type AuditRecord } from './chain.js';
import { latestAnchor } from './store.js';

/** What broke the chain first. */
export interface ChainProblem {
  /**
   * `altered`: the entry's content no longer matches its hash. `missing`: an entry is gone.
   * `reordered`: the entry is not chained to the one before it (moved, or its predecessor was
   * altered and re-hashed). `unchained`: a row without a chain position was added after the chain began.
   */
  kind: 'altered' | 'missing' | 'reordered' | 'unchained';
  /** The chain position at which the problem shows. */
  seq: number;
  /** The row id found there (absent for a missing entry). */
  id?: number;
  message: string;
}

export interface VerifyResult {
  ok: boolean;
  /** Entries whose hashes were checked. */
  checked: number;
  /** Where verification started after retention, if it ever removed entries. */
  anchor: { seq: number; hash: string } | null;
  /** The last verified entry (record it elsewhere to detect a truncated tail later). */
  head: { seq: number; id: number; hash: string } | null;
  /** Rows logged before the chain existed (seq NULL, migration 003): not covered. */
  legacy: number;
  problem: ChainProblem | null;
}

export interface VerifyOptions {
  /** Rows per query: memory stays flat however long the chain. */
  batch?: number;
  onProgress?: (checked: number) => void;
}

interface Row {
  id: unknown;
  seq: unknown;
  entry_uid: string;
  logged_at: Date;
  user_id: string | null;
  request_method: string | null;
  request_uri: string | null;
  hawk_id: string | null;
  status_code: number | null;
  keypair_id: string | null;
  client_address: string | null;
  event: string | null;
  actor: string | null;
  detail: Record<string, unknown> | string | null;
  prev_hash: unknown;
  hash: unknown;
}

function record(r: Row): AuditRecord {
  return {
    uid: r.entry_uid,
    loggedAt: new Date(r.logged_at),
    userId: r.user_id,
    method: r.request_method,
    uri: r.request_uri,
    hawkId: r.hawk_id,
    statusCode: r.status_code === null ? null : Number(r.status_code),
    keypairId: r.keypair_id,
    clientAddress: r.client_address,
    event: r.event,
    actor: r.actor,
    detail: typeof r.detail === 'string' ? (JSON.parse(r.detail) as Record<string, unknown>) : r.detail,
  };
}

/**
 * Walk the chain in seq order from the retention anchor (or genesis), in batches, recomputing
 * every hash. Stops at the first problem and names it.
 */
export async function verifyChain(db: Queryable, options: VerifyOptions = {}): Promise<VerifyResult> {
  const batch = options.batch ?? 5000;
  const anchor = await latestAnchor(db);
  let expected = anchor ? anchor.seq + 1 : 1;
  let prev = anchor ? anchor.hash : GENESIS_HASH;
  let checked = 0;
  let head: VerifyResult['head'] = null;
  let firstId: number | undefined;
  const legacyCount = await db.query<{ n: unknown }>('SELECT count(*) AS n FROM request_log WHERE seq IS NULL');
  const result = (problem: ChainProblem | null): VerifyResult => ({
    ok: problem === null,
    checked,
    anchor: anchor ? { seq: anchor.seq, hash: anchor.hash.toString('hex') } : null,
    head,
    legacy: toNumber(legacyCount.rows[0]?.n ?? 0),
    problem,
  });

  for (;;) {
    const { rows } = await db.query<Row>(
      `SELECT id, seq, entry_uid, logged_at, user_id, request_method, request_uri, hawk_id, status_code,
              keypair_id, client_address, event, actor, detail, prev_hash, hash
       FROM request_log WHERE seq >= $1 ORDER BY seq LIMIT $2`,
      [expected, batch],
    );
    if (rows.length === 0) break;
    for (const row of rows) {
      const seq = toNumber(row.seq);
      const id = toNumber(row.id);
      firstId ??= id;
      if (seq !== expected) {
        return result({ kind: 'missing', seq: expected, message: `entry seq ${expected} is missing (the next present is seq ${seq}, id ${id})` });
      }
      if (!toBuffer(row.prev_hash).equals(prev)) {
        return result({
          kind: 'reordered',
          seq,
          id,
          message: `entry seq ${seq} (id ${id}) is not chained to the entry before it: entries were reordered, or the one before was altered and re-hashed`,
        });
      }
      const computed = hashRecord(record(row), seq, id, prev);
      if (!computed.equals(toBuffer(row.hash))) {
        return result({ kind: 'altered', seq, id, message: `entry seq ${seq} (id ${id}) was altered: its content does not match its hash` });
      }
      prev = computed;
      head = { seq, id, hash: computed.toString('hex') };
      expected = seq + 1;
      checked += 1;
    }
    options.onProgress?.(checked);
  }

  // A row without a chain position newer than the chain's first entry was slipped in by hand.
  if (firstId !== undefined) {
    const stray = await db.query<{ id: unknown }>(
      'SELECT id FROM request_log WHERE seq IS NULL AND id > $1 ORDER BY id LIMIT 1',
      [firstId],
    );
    if (stray.rows[0]) {
      const id = toNumber(stray.rows[0].id);
      return result({ kind: 'unchained', seq: expected, id, message: `row id ${id} carries no chain position: it was inserted outside the audit chain` });
    }
  }
  return result(null);
}
