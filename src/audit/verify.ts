import type { Queryable } from '../db/database.js';
import { toBuffer, toNumber } from '../db/database.js';
import { GENESIS_HASH, hashRecord, type AuditRecord, type HashVersion } from './chain.js';
import { latestAnchor, readHead } from './store.js';

/** What broke the chain first. */
export interface ChainProblem {
  /**
   * `altered`: the entry's content no longer matches its hash. `missing`: an entry is gone.
   * `reordered`: the entry is not chained to the one before it (moved, or its predecessor was
   * altered and re-hashed). `unchained`: a row without a chain position was added after the chain began.
   * `head`: the chain does not end where audit_head says (entries appended around the writer,
   * or the tail rewritten and re-hashed).
   */
  kind: 'altered' | 'missing' | 'reordered' | 'unchained' | 'head';
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
  /** Of those, entries under each hash encoding (v1: before migration 040). */
  byVersion: { v1: number; v2: number };
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
  face: string | null;
  principal_kind: string | null;
  principal_id: string | null;
  subject_kind: string | null;
  subject_id: string | null;
  hash_version: number | null;
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
    face: r.face,
    principalKind: r.principal_kind,
    principalId: r.principal_id,
    subjectKind: r.subject_kind,
    subjectId: r.subject_id,
  };
}

/**
 * Walk the chain in seq order from the retention anchor (or genesis), in batches, recomputing
 * every hash under the encoding its row names (v1 rows, then v2 rows: the first v2 entry chains
 * to the last v1 entry's hash), and check that it ends where audit_head says. Stops at the
 * first problem and names it.
 */
export async function verifyChain(db: Queryable, options: VerifyOptions = {}): Promise<VerifyResult> {
  const batch = options.batch ?? 5000;
  const anchor = await latestAnchor(db);
  // Read before the walk: entries appended during it lie beyond this head and are checked too.
  const stored = await readHead(db);
  let expected = anchor ? anchor.seq + 1 : 1;
  let prev = anchor ? anchor.hash : GENESIS_HASH;
  let checked = 0;
  const byVersion = { v1: 0, v2: 0 };
  let head: VerifyResult['head'] = null;
  const legacyCount = await db.query<{ n: unknown }>('SELECT count(*) AS n FROM request_log WHERE seq IS NULL');
  const result = (problem: ChainProblem | null): VerifyResult => ({
    ok: problem === null,
    checked,
    byVersion,
    anchor: anchor ? { seq: anchor.seq, hash: anchor.hash.toString('hex') } : null,
    head,
    legacy: toNumber(legacyCount.rows[0]?.n ?? 0),
    problem,
  });

  for (;;) {
    const { rows } = await db.query<Row>(
      `SELECT id, seq, entry_uid, logged_at, user_id, request_method, request_uri, hawk_id, status_code,
              keypair_id, client_address, event, actor, detail, face, principal_kind, principal_id, subject_kind,
              subject_id, hash_version, prev_hash, hash
       FROM request_log WHERE seq >= $1 ORDER BY seq LIMIT $2`,
      [expected, batch],
    );
    if (rows.length === 0) break;
    for (const row of rows) {
      const seq = toNumber(row.seq);
      const id = toNumber(row.id);
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
      const version: HashVersion = row.hash_version === null ? 1 : 2;
      const computed = hashRecord(version, record(row), seq, id, prev);
      if (!computed.equals(toBuffer(row.hash))) {
        return result({ kind: 'altered', seq, id, message: `entry seq ${seq} (id ${id}) was altered: its content does not match its hash` });
      }
      if (seq === stored.seq && !computed.equals(stored.hash)) {
        return result({
          kind: 'head',
          seq,
          id,
          message: `entry seq ${seq} (id ${id}) is not the entry audit_head records there: the chain was rewritten and re-hashed`,
        });
      }
      byVersion[version === 1 ? 'v1' : 'v2'] += 1;
      prev = computed;
      head = { seq, id, hash: computed.toString('hex') };
      expected = seq + 1;
      checked += 1;
    }
    options.onProgress?.(checked);
  }

  const last = expected - 1;
  if (last < stored.seq) {
    return result({ kind: 'missing', seq: last + 1, message: `the chain ends at seq ${last}, but audit_head records entries through seq ${stored.seq}: its tail was removed` });
  }
  if (last > stored.seq) {
    // Appends may have moved the head during the walk: only entries beyond the current head are foreign.
    const now = await readHead(db);
    if (last > now.seq) {
      return result({ kind: 'head', seq: now.seq + 1, message: `entries from seq ${now.seq + 1} through ${last} lie beyond audit_head (seq ${now.seq}): they were appended around the audit writer` });
    }
  }

  // Rows logged before the chain existed all have ids up to legacy_through (migration 040): a
  // row without a chain position above it was slipped in by hand.
  const stray = await db.query<{ id: unknown }>('SELECT id FROM request_log WHERE seq IS NULL AND id > $1 ORDER BY id LIMIT 1', [
    stored.legacyThrough,
  ]);
  if (stray.rows[0]) {
    const id = toNumber(stray.rows[0].id);
    return result({ kind: 'unchained', seq: expected, id, message: `row id ${id} carries no chain position: it was inserted outside the audit chain` });
  }
  return result(null);
}
