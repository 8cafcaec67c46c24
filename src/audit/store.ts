import type { Database, Queryable } from '../db/database.js';
import { toBuffer, toNumber } from '../db/database.js';
import { GENESIS_HASH, hashRecord, type AuditRecord, type ChainedRecord } from './chain.js';

/** Arbitrary constant: the advisory lock that makes every instance append to one chain in turn. */
export const AUDIT_CHAIN_LOCK = 0x41554454; // 'AUDT'

/** The end of the chain: the last entry, else the retention anchor, else genesis. */
export interface ChainHead {
  seq: number;
  hash: Buffer;
}

/** The point the chain continues from after retention removed older entries. */
export interface ChainAnchor extends ChainHead {
  removedAt: Date;
}

const COLUMNS =
  'id, entry_uid, logged_at, user_id, request_method, request_uri, hawk_id, status_code, keypair_id, ' +
  'client_address, event, actor, detail, seq, prev_hash, hash';

/** The newest retention anchor, if retention ever removed entries. */
export async function latestAnchor(db: Queryable): Promise<ChainAnchor | undefined> {
  const { rows } = await db.query<{ seq: unknown; hash: unknown; removed_at: Date }>(
    'SELECT seq, hash, removed_at FROM audit_anchor ORDER BY seq DESC LIMIT 1',
  );
  const row = rows[0];
  return row && { seq: toNumber(row.seq), hash: toBuffer(row.hash), removedAt: new Date(row.removed_at) };
}

/**
 * Appends records to the chain in one transaction holding the chain lock, so concurrent
 * instances interleave whole batches and the chain stays one. Records already present (a spool
 * replayed after a crash, or a commit whose acknowledgement was lost) are skipped by uid.
 * Returns how many were new.
 */
export async function appendRecords(db: Database, records: readonly AuditRecord[]): Promise<number> {
  if (records.length === 0) return 0;
  return db.transaction(async (tx) => {
    await tx.query('SELECT pg_advisory_xact_lock($1)', [AUDIT_CHAIN_LOCK]);
    // One round trip for what the batch needs: which uids already landed, the chain's end, and
    // row ids (taken under the lock, so they follow the chain's order and are hashed too).
    const { rows } = await tx.query<{ present: string[] | null; last_seq: unknown; last_hash: unknown; ids: unknown[] }>(
      `SELECT
         (SELECT array_agg(entry_uid::text) FROM request_log WHERE entry_uid = ANY($1::uuid[])) AS present,
         (SELECT seq FROM request_log WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1) AS last_seq,
         (SELECT hash FROM request_log WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1) AS last_hash,
         ARRAY(SELECT nextval(pg_get_serial_sequence('request_log', 'id')) FROM generate_series(1, $2::int)) AS ids`,
      [records.map((r) => r.uid), records.length],
    );
    const row = rows[0];
    if (!row) throw new Error('audit append: no answer');
    const skip = new Set(row.present ?? []);
    const fresh = records.filter((r) => !skip.has(r.uid));
    if (fresh.length === 0) return 0;
    let { seq, hash } =
      row.last_seq === null || row.last_seq === undefined
        ? ((await latestAnchor(tx)) ?? { seq: 0, hash: GENESIS_HASH })
        : { seq: toNumber(row.last_seq), hash: toBuffer(row.last_hash) };
    const idList = row.ids.map((id) => toNumber(id)).sort((a, b) => a - b);
    const chained: ChainedRecord[] = fresh.map((r, i) => {
      seq += 1;
      const id = idList[i] as number;
      const next = hashRecord(r, seq, id, hash);
      const out = { ...r, id, seq, prevHash: hash, hash: next };
      hash = next;
      return out;
    });
    // One SQL text whatever the batch size: each column travels as one text array (portable to
    // pg and PGlite alike) and is cast back in SQL; hashes as hex.
    const text = (v: string | number | null) => (v === null ? null : String(v));
    await tx.query(
      `INSERT INTO request_log (${COLUMNS})
       SELECT u.id::bigint, u.uid::uuid, u.logged_at::timestamptz, u.user_id, u.method, u.uri, u.hawk_id,
              u.status_code::integer, u.keypair_id::uuid, u.client_address, u.event, u.actor, u.detail::jsonb,
              u.seq::bigint, decode(u.prev_hash, 'hex'), decode(u.hash, 'hex')
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                   $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[])
         AS u(id, uid, logged_at, user_id, method, uri, hawk_id, status_code, keypair_id, client_address, event, actor,
              detail, seq, prev_hash, hash)`,
      [
        chained.map((c) => text(c.id)),
        chained.map((c) => c.uid),
        chained.map((c) => c.loggedAt.toISOString()),
        chained.map((c) => c.userId),
        chained.map((c) => c.method),
        chained.map((c) => c.uri),
        chained.map((c) => c.hawkId),
        chained.map((c) => text(c.statusCode)),
        chained.map((c) => c.keypairId),
        chained.map((c) => c.clientAddress),
        chained.map((c) => c.event),
        chained.map((c) => c.actor),
        chained.map((c) => (c.detail === null ? null : JSON.stringify(c.detail))),
        chained.map((c) => text(c.seq)),
        chained.map((c) => c.prevHash.toString('hex')),
        chained.map((c) => c.hash.toString('hex')),
      ],
    );
    return chained.length;
  });
}

/**
 * Retention: removes the oldest entries logged before `cutoff` (a prefix of the chain, so what
 * remains is contiguous) and records an anchor holding the last removed seq and hash, from which
 * verification continues. Returns the anchor, or undefined when nothing was old enough.
 */
export async function trimChain(db: Database, cutoff: Date): Promise<(ChainAnchor & { removed: number }) | undefined> {
  return db.transaction(async (tx) => {
    // The first run after enabling retention may delete millions of rows: longer than a request's
    // statement_timeout. Appends meanwhile wait at most lock_timeout, then spool (nothing stalls).
    await tx.query('SET LOCAL statement_timeout = 0');
    await tx.query('SELECT pg_advisory_xact_lock($1)', [AUDIT_CHAIN_LOCK]);
    // The newest old entry bounds the prefix; the entry after it keeps the chain's tail verifiable.
    const bound = await tx.query<{ seq: unknown }>(
      'SELECT max(seq) AS seq FROM request_log WHERE seq IS NOT NULL AND logged_at < $1',
      [cutoff],
    );
    if (bound.rows[0]?.seq === null || bound.rows[0]?.seq === undefined) return undefined;
    const throughSeq = toNumber(bound.rows[0].seq);
    const last = await tx.query<{ hash: unknown }>('SELECT hash FROM request_log WHERE seq = $1', [throughSeq]);
    if (!last.rows[0]) return undefined;
    const hash = toBuffer(last.rows[0].hash);
    const removedAt = new Date();
    // Entries from before the chain existed (seq NULL) go with the first trim.
    const removed = await tx.query(
      'DELETE FROM request_log WHERE (seq IS NOT NULL AND seq <= $1) OR (seq IS NULL AND logged_at < $2)',
      [throughSeq, cutoff],
    );
    await tx.query(
      'INSERT INTO audit_anchor (seq, hash, removed_rows, removed_at) VALUES ($1, $2, $3, $4) ON CONFLICT (seq) DO NOTHING',
      [throughSeq, hash, removed.rowCount, removedAt],
    );
    return { seq: throughSeq, hash, removedAt, removed: removed.rowCount };
  });
}
