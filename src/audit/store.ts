import type { Database, Queryable } from '../db/database.js';
import { PG_UNIQUE_VIOLATION, sqlState, toBuffer, toNumber } from '../db/database.js';
import { DatabaseUnavailableError } from '../db/unavailable.js';
import { CURRENT_HASH_VERSION, hashRecord, type AuditRecord, type ChainedRecord } from './chain.js';

/** Arbitrary constant: the advisory lock that keeps two retention runs (two instances) apart. */
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

/** Where the next entry goes: after this seq, hash and row id. */
export interface HeadPosition extends ChainHead {
  lastId: number;
}

/** The audit_head row: the chain's end and the last row id given. */
export interface StoredHead extends HeadPosition {
  /** Rows without a chain position above this id were not written by the chain (see verify). */
  legacyThrough: number;
}

/** The newest retention anchor, if retention ever removed entries. */
export async function latestAnchor(db: Queryable): Promise<ChainAnchor | undefined> {
  const { rows } = await db.query<{ seq: unknown; hash: unknown; removed_at: Date }>(
    'SELECT seq, hash, removed_at FROM audit_anchor ORDER BY seq DESC LIMIT 1',
  );
  const row = rows[0];
  return row && { seq: toNumber(row.seq), hash: toBuffer(row.hash), removedAt: new Date(row.removed_at) };
}

/** The chain's end as the database holds it (migration 040 creates the row). */
export async function readHead(db: Queryable, lock = false): Promise<StoredHead> {
  const { rows } = await db.query<{ seq: unknown; last_id: unknown; hash: unknown; legacy_through: unknown }>(
    lock ? 'SELECT seq, last_id, hash, legacy_through FROM audit_head FOR UPDATE' : 'SELECT seq, last_id, hash, legacy_through FROM audit_head',
  );
  const row = rows[0];
  if (!row) throw new Error('audit_head has no row: the audit-v2 migration did not run');
  return { seq: toNumber(row.seq), lastId: toNumber(row.last_id), hash: toBuffer(row.hash), legacyThrough: toNumber(row.legacy_through) };
}

/**
 * The head this process last wrote or read, per database handle: an append needs no read first.
 * Dropped after any failure, so the next append starts from what the database says.
 */
const heads = new WeakMap<Queryable, HeadPosition>();

/** Optimistic attempts of one append before it takes the head row's lock (see appendRecords). */
const OPTIMISTIC_ATTEMPTS = 2;
/** Attempts in all before it is given up as "unavailable" (the writer spools it). */
const MAX_ATTEMPTS = 10;

/**
 * One statement, one text whatever the batch size: the head moves from the seq this process
 * believes is last to the batch's last, and the batch goes in only if it did (the INSERT reads
 * the UPDATE's RETURNING). Another instance that appended meanwhile makes the UPDATE match no
 * row (Postgres re-checks the WHERE on the row it waited for), so nothing is inserted and zero
 * rows come back. Ids and seqs are the head's plus the row's ordinal: no sequence round trip.
 */
const APPEND_SQL = `WITH head AS (
    UPDATE audit_head SET seq = $1::bigint + cardinality($4::text[]), last_id = $2::bigint + cardinality($4::text[]),
                          hash = decode($3, 'hex')
    WHERE seq = $1::bigint
    RETURNING 1)
  INSERT INTO request_log (id, entry_uid, logged_at, user_id, request_method, request_uri, hawk_id, status_code, keypair_id,
                           client_address, event, actor, detail, face, principal_kind, principal_id, subject_kind, subject_id,
                           hash_version, seq, prev_hash, hash)
  SELECT $2::bigint + u.ord, u.uid::uuid, u.logged_at::timestamptz, u.user_id, u.method, u.uri, u.hawk_id, u.status_code::integer,
         u.keypair_id::uuid, u.client_address, u.event, u.actor, u.detail::jsonb, u.face, u.principal_kind, u.principal_id,
         u.subject_kind, u.subject_id, 2, $1::bigint + u.ord, decode(u.prev_hash, 'hex'), decode(u.hash, 'hex')
  FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
              $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[])
       WITH ORDINALITY AS u(uid, logged_at, user_id, method, uri, hawk_id, status_code, keypair_id, client_address, event, actor,
                            detail, face, principal_kind, principal_id, subject_kind, subject_id, prev_hash, hash, ord)
  WHERE EXISTS (SELECT 1 FROM head)`;

/** Chain `records` after `head` under the current encoding. */
function chain(records: readonly AuditRecord[], head: HeadPosition): ChainedRecord[] {
  let { seq, lastId: id, hash } = head;
  return records.map((r) => {
    seq += 1;
    id += 1;
    const next = hashRecord(CURRENT_HASH_VERSION, r, seq, id, hash);
    const out: ChainedRecord = { ...r, id, seq, prevHash: hash, hash: next, hashVersion: CURRENT_HASH_VERSION };
    hash = next;
    return out;
  });
}

function appendParams(head: HeadPosition, chained: readonly ChainedRecord[]): unknown[] {
  const text = (v: string | number | null) => (v === null ? null : String(v));
  const last = chained[chained.length - 1] as ChainedRecord;
  return [
    head.seq,
    head.lastId,
    last.hash.toString('hex'),
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
    chained.map((c) => c.face),
    chained.map((c) => c.principalKind),
    chained.map((c) => c.principalId),
    chained.map((c) => c.subjectKind),
    chained.map((c) => c.subjectId),
    chained.map((c) => c.prevHash.toString('hex')),
    chained.map((c) => c.hash.toString('hex')),
  ];
}

/**
 * Appends records to the chain, normally in ONE statement (no transaction, lock or read): the
 * head kept in memory is moved optimistically with the insert (APPEND_SQL). When another
 * instance appended first, zero rows come back: the head is read again and the hashes
 * recomputed; after a second loss the append waits for the head row's lock instead. Records already present (a spool replayed after a crash, or a commit whose
 * acknowledgement was lost) make the statement fail on entry_uid as a whole; they are looked up
 * and skipped. Returns how many were new.
 */
export async function appendRecords(db: Database, records: readonly AuditRecord[]): Promise<number> {
  // One uid twice in a batch lands once (the first), as with a replayed spool.
  const seen = new Set<string>();
  let fresh = records.filter((r) => !seen.has(r.uid) && seen.add(r.uid));
  for (let attempt = 0; attempt < MAX_ATTEMPTS && fresh.length > 0; attempt += 1) {
    let written: ChainedRecord[] | undefined;
    try {
      if (attempt < OPTIMISTIC_ATTEMPTS) {
        const head = heads.get(db) ?? (await readHead(db));
        const chained = chain(fresh, head);
        if ((await db.query(APPEND_SQL, appendParams(head, chained))).rowCount > 0) written = chained;
      } else {
        // Lost the race twice (busy peers): wait for the head row instead of racing again, so
        // contention costs a bounded four statements, not a retry per peer's commit.
        written = await db.transaction(async (tx) => {
          const head = await readHead(tx, true);
          const chained = chain(fresh, head);
          await tx.query(APPEND_SQL, appendParams(head, chained));
          return chained;
        });
      }
    } catch (err) {
      heads.delete(db);
      if (sqlState(err) !== PG_UNIQUE_VIOLATION) throw err;
      // A uid already present (replay), or a seq/id another writer took: skip the present, re-read the head.
      const { rows } = await db.query<{ uid: string }>(
        'SELECT entry_uid::text AS uid FROM request_log WHERE entry_uid = ANY($1::uuid[])',
        [fresh.map((r) => r.uid)],
      );
      const present = new Set(rows.map((r) => r.uid));
      fresh = fresh.filter((r) => !present.has(r.uid));
      continue;
    }
    if (!written) {
      // Zero rows: another instance moved the head. Start again from where it is now.
      heads.delete(db);
      continue;
    }
    const last = written[written.length - 1] as ChainedRecord;
    heads.set(db, { seq: last.seq, lastId: last.id, hash: last.hash });
    return written.length;
  }
  if (fresh.length === 0) return 0;
  throw new DatabaseUnavailableError(`audit append: the chain head moved under every one of ${MAX_ATTEMPTS} attempts`);
}

/**
 * Retention: removes the oldest entries logged before `cutoff` (a prefix of the chain, so what
 * remains is contiguous) and records an anchor holding the last removed seq and hash, from which
 * verification continues. Returns the anchor, or undefined when nothing was old enough.
 */
export async function trimChain(db: Database, cutoff: Date): Promise<(ChainAnchor & { removed: number }) | undefined> {
  return db.transaction(async (tx) => {
    // The first run after enabling retention may delete millions of rows: longer than a request's
    // statement_timeout. Appends go on meanwhile: they only add entries above the committed head,
    // and this removes a prefix at or below it. The lock keeps two instances' runs apart.
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
