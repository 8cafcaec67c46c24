// Audit v2 on the real Postgres: rows written under the v1 encoding (before migration 040) and
// rows written under v2 after it verify in one chain (the first v2 entry chains to the last v1
// entry's hash); altering, deleting, reordering or inserting either kind is named; the request
// log shows LKM requests only; two writers (two pools, as two instances) racing for the head
// take the optimistic-retry path and the locked fallback, and the chain stays one.
import { randomUUID } from 'node:crypto';
import t, { type Test } from 'tap';
import { GENESIS_HASH, hashRecordV1, hashRecordV2, type AuditRecord } from '../src/audit/chain.js';
import { appendRecords, readHead, trimChain } from '../src/audit/store.js';
import { verifyChain } from '../src/audit/verify.js';
import { AuditWriter } from '../src/audit/writer.js';
import type { Database, Queryable } from '../src/db/database.js';
import { toBuffer, toNumber } from '../src/db/database.js';
import { migrate, migrations } from '../src/db/migrations.js';
import { RequestLogRepository } from '../src/db/request-log.js';
import { createEmptyDatabase } from './helpers/database.js';
import { lkmRequestRecord } from './helpers/audit-record.js';

const record = lkmRequestRecord;

/** Write `records` the way the v1 writer did (ids from the sequence, v1 hashes, no v2 columns). */
async function appendV1(db: Queryable, records: AuditRecord[]): Promise<void> {
  const last = await db.query<{ seq: unknown; hash: unknown }>('SELECT seq, hash FROM request_log WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1');
  let seq = last.rows[0] ? toNumber(last.rows[0].seq) : 0;
  let prev = last.rows[0] ? toBuffer(last.rows[0].hash) : GENESIS_HASH;
  for (const r of records) {
    seq += 1;
    const id = toNumber((await db.query<{ id: unknown }>("SELECT nextval('request_log_id_seq') AS id")).rows[0]?.id);
    const hash = hashRecordV1(r, seq, id, prev);
    await db.query(
      `INSERT INTO request_log (id, entry_uid, logged_at, user_id, request_method, request_uri, hawk_id, status_code, keypair_id,
                                client_address, event, actor, detail, seq, prev_hash, hash)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`,
      [id, r.uid, r.loggedAt, r.userId, r.method, r.uri, r.hawkId, r.statusCode, r.keypairId, r.clientAddress, r.event, r.actor,
        r.detail === null ? null : JSON.stringify(r.detail), seq, prev, hash],
    );
    prev = hash;
  }
}

const empty = await createEmptyDatabase(t);
const db = empty.open(4);
let lastV1: { seq: unknown; hash: Buffer } | undefined;

t.test('set-up: a legacy row, v1 rows under the schema before audit v2, then migration 040', async (t) => {
  await migrate(db, migrations.filter((m) => m.version < 3));
  await db.query("INSERT INTO request_log (user_id, request_method, request_uri, logged_at) VALUES ('old', 'GET', '/key-management/v1/keypair', now())");
  await migrate(db, migrations.filter((m) => m.version < 40));
  await appendV1(db, [
    record({ userId: 'v1-a' }),
    record({ userId: 'v1-b', keypairId: randomUUID() }),
    record({ method: null, uri: null, userId: null, hawkId: null, statusCode: null, clientAddress: null, event: 'keypair.disable', actor: 'admin', detail: { reason: 'v1' } }),
    record({ userId: 'v1-admin-call', uri: '/admin/v1/keypairs', method: 'GET', hawkId: null }),
    record({ userId: 'v1-c' }),
  ]);
  lastV1 = (await db.query<{ seq: unknown; hash: Buffer }>('SELECT seq, hash FROM request_log WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1')).rows[0];
  t.ok(lastV1);
  t.same(await migrate(db), [40], 'migration 040 applies on top');
});

t.test('the head starts at the last v1 entry; v2 entries chain to it; one chain verifies', async (t) => {
  const head = await readHead(db);
  t.equal(head.seq, toNumber(lastV1?.seq));
  t.ok(head.hash.equals(lastV1?.hash as Buffer), 'audit_head holds the last v1 hash');
  t.equal(head.legacyThrough, 1, 'the legacy row is below legacy_through');
  const writer = new AuditWriter({ db });
  writer.start();
  await Promise.all([
    writer.record(record({ userId: 'v2-lkm', keypairId: '3F2504E0-4F89-11D3-9A0C-0305E82C3301'.toLowerCase(), subjectKind: 'keypair', subjectId: '3f2504e0-4f89-11d3-9a0c-0305e82c3301' })),
    writer.record(record({ userId: 'v2-admin', uri: '/admin/v1/keypairs', method: 'GET', hawkId: null, face: 'admin', principalKind: 'admin-token', principalId: 'admin' })),
    writer.recordEvent({ event: 'credential.revoke', actor: 'cli:root', detail: { id: 'genesys' } }),
    writer.record(record({ userId: 'v2-lkm-2' })),
  ]);
  await writer.close();

  const rows = (
    await db.query<{ seq: unknown; id: unknown; hash_version: number | null; prev_hash: Buffer; face: string | null; principal_kind: string | null; principal_id: string | null; subject_kind: string | null; subject_id: string | null; event: string | null }>(
      'SELECT seq, id, hash_version, prev_hash, face, principal_kind, principal_id, subject_kind, subject_id, event FROM request_log WHERE seq IS NOT NULL ORDER BY seq',
    )
  ).rows;
  const firstV2 = rows.find((r) => r.hash_version === 2);
  t.equal(toNumber(firstV2?.seq), toNumber(lastV1?.seq) + 1, 'the first v2 entry follows the last v1 entry');
  t.ok(firstV2?.prev_hash.equals(lastV1?.hash as Buffer), 'and chains to its hash');
  t.ok(toNumber(firstV2?.id) > toNumber(rows.find((r) => r.hash_version === null && toNumber(r.seq) === toNumber(lastV1?.seq))?.id), 'ids continue past the sequence');
  t.same(rows.filter((r) => r.hash_version === null).map((r) => r.face), [null, null, null, null, null], 'v1 rows are left alone');
  const revoke = rows.find((r) => r.event === 'credential.revoke');
  t.same([revoke?.face, revoke?.principal_kind, revoke?.principal_id, revoke?.subject_kind, revoke?.subject_id], ['cli', 'cli', 'cli:root', 'credential', 'genesys']);

  const result = await verifyChain(db);
  t.equal(result.ok, true, JSON.stringify(result.problem));
  t.same(result.byVersion, { v1: 5, v2: 4 });
  t.equal(result.legacy, 1);
  t.equal(result.head?.seq, (await readHead(db)).seq, 'verified through the recorded head');
});

t.test('GET /request-log: LKM requests only (v1 rows without an event, v2 rows of face lkm)', async (t) => {
  const list = await new RequestLogRepository(db).list({ limit: 100 });
  t.same(
    list.map((e) => e.userId).sort(),
    ['old', 'v1-a', 'v1-admin-call', 'v1-b', 'v1-c', 'v2-lkm', 'v2-lkm-2'].sort(),
    'v2 admin calls and events of both versions are not shown; v1 request rows show as before',
  );
});

/** Run `change`, expect verify to name `kind` at `seq`, then undo and expect it intact again. */
async function tamper(t: Test, what: string, change: () => Promise<unknown>, undo: () => Promise<unknown>, kind: string, seq: number) {
  await change();
  const broken = await verifyChain(db);
  t.equal(broken.ok, false, `${what}: found`);
  t.equal(broken.problem?.kind, kind, `${what}: ${broken.problem?.message}`);
  t.equal(broken.problem?.seq, seq, `${what}: at seq ${seq}`);
  await undo();
  const again = await verifyChain(db);
  t.equal(again.ok, true, `${what} undone: intact (${JSON.stringify(again.problem)})`);
}

t.test('tampering with v1 rows and v2 rows is found', async (t) => {
  const seqOf = async (where: string) => toNumber((await db.query<{ seq: unknown }>(`SELECT seq FROM request_log WHERE ${where}`)).rows[0]?.seq);
  const v1 = await seqOf("user_id = 'v1-b'");
  const v2 = await seqOf("user_id = 'v2-lkm-2'");
  const v2a = await seqOf("user_id = 'v2-admin'");
  const head = (await readHead(db)).seq;
  const swap = async (a: number, b: number) => {
    await db.query('UPDATE request_log SET seq = -1 WHERE seq = $1', [a]);
    await db.query('UPDATE request_log SET seq = $1 WHERE seq = $2', [a, b]);
    await db.query('UPDATE request_log SET seq = $1 WHERE seq = -1', [b]);
  };
  const saved = async (seq: number) => (await db.query<{ j: unknown }>('SELECT row_to_json(l) AS j FROM request_log l WHERE seq = $1', [seq])).rows[0]?.j;
  const restore = (j: unknown) => db.query('INSERT INTO request_log SELECT * FROM json_populate_record(NULL::request_log, $1::json)', [JSON.stringify(j)]);

  await tamper(t, 'v1 row altered', () => db.query("UPDATE request_log SET user_id = 'v1-x' WHERE seq = $1", [v1]),
    () => db.query("UPDATE request_log SET user_id = 'v1-b' WHERE seq = $1", [v1]), 'altered', v1);
  await tamper(t, 'v2 row altered (a v2-only column: principal)', () => db.query("UPDATE request_log SET principal_id = 'someone' WHERE seq = $1", [v2a]),
    () => db.query("UPDATE request_log SET principal_id = 'admin' WHERE seq = $1", [v2a]), 'altered', v2a);
  await tamper(t, 'v2 row altered (face)', () => db.query("UPDATE request_log SET face = 'lkm' WHERE seq = $1", [v2a]),
    () => db.query("UPDATE request_log SET face = 'admin' WHERE seq = $1", [v2a]), 'altered', v2a);
  await tamper(t, 'v2 row relabelled as v1', () => db.query('UPDATE request_log SET hash_version = NULL WHERE seq = $1', [v2]),
    () => db.query('UPDATE request_log SET hash_version = 2 WHERE seq = $1', [v2]), 'altered', v2);

  const j1 = await saved(v1);
  await tamper(t, 'v1 row deleted', () => db.query('DELETE FROM request_log WHERE seq = $1', [v1]), () => restore(j1), 'missing', v1);
  const jh = await saved(head);
  await tamper(t, 'last (v2) row deleted: the tail is shorter than the head', () => db.query('DELETE FROM request_log WHERE seq = $1', [head]), () => restore(jh), 'missing', head);

  const lastV1Seq = toNumber(lastV1?.seq);
  await tamper(t, 'last v1 and first v2 rows swapped', () => swap(lastV1Seq, lastV1Seq + 1), () => swap(lastV1Seq, lastV1Seq + 1), 'reordered', lastV1Seq);
  await tamper(t, 'two v2 rows swapped', () => swap(v2a, v2a + 1), () => swap(v2a, v2a + 1), 'reordered', v2a);

  // Inserted without a chain position.
  let stray = 0;
  await tamper(
    t,
    'row slipped in without a chain position',
    async () => {
      const id = (await readHead(db)).lastId + 1000;
      stray = id;
      await db.query("INSERT INTO request_log (id, user_id, request_method, request_uri, logged_at) VALUES ($1, 'x', 'GET', '/forged', now())", [id]);
    },
    () => db.query('DELETE FROM request_log WHERE id = $1', [stray]),
    'unchained',
    head + 1,
  );
  // Inserted at the end with a correct v2 hash (a forger who knows the encoding): beyond audit_head.
  const tail = (await db.query<{ hash: Buffer; id: unknown }>('SELECT hash, id FROM request_log WHERE seq = $1', [head])).rows[0];
  const forged = record({ userId: 'forged' });
  const fid = toNumber(tail?.id) + 1;
  await tamper(
    t,
    'row appended around the writer, correctly hashed',
    () =>
      db.query(
        `INSERT INTO request_log (id, entry_uid, logged_at, user_id, request_method, request_uri, hawk_id, status_code, client_address,
                                  face, principal_kind, principal_id, hash_version, seq, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 2, $13, $14, $15)`,
        [fid, forged.uid, forged.loggedAt, forged.userId, forged.method, forged.uri, forged.hawkId, forged.statusCode, forged.clientAddress,
          forged.face, forged.principalKind, forged.principalId, head + 1, tail?.hash, hashRecordV2(forged, head + 1, fid, tail?.hash as Buffer)],
      ),
    () => db.query('DELETE FROM request_log WHERE id = $1', [fid]),
    'head',
    head + 1,
  );
  // A forger who rewrites the tail and re-hashes it consistently still disagrees with audit_head.
  const row = (await db.query<{ prev_hash: Buffer; hash: Buffer; id: unknown; j: Record<string, unknown> }>(
    'SELECT prev_hash, hash, id, row_to_json(l) AS j FROM request_log l WHERE seq = $1', [head])).rows[0];
  const j = row?.j as Record<string, string | number | null>;
  const rewritten = hashRecordV2(
    record({ uid: j.entry_uid as string, loggedAt: new Date(j.logged_at as string), userId: 'rewritten', method: j.request_method as string, uri: j.request_uri as string,
      hawkId: j.hawk_id as string | null, statusCode: j.status_code as number, keypairId: j.keypair_id as string | null, clientAddress: j.client_address as string | null,
      face: j.face as string, principalKind: j.principal_kind as string | null, principalId: j.principal_id as string | null, subjectKind: j.subject_kind as string | null, subjectId: j.subject_id as string | null }),
    head, toNumber(row?.id), row?.prev_hash as Buffer);
  await tamper(t, 'last row rewritten and re-hashed',
    () => db.query("UPDATE request_log SET user_id = 'rewritten', hash = $1 WHERE seq = $2", [rewritten, head]),
    () => db.query('UPDATE request_log SET user_id = $1, hash = $2 WHERE seq = $3', [j.user_id, row?.hash, head]), 'head', head);
});

/** A database handle that counts statements (BEGIN/COMMIT included) and can run something before each append statement. */
function instrumented(inner: Database, beforeAppend?: (n: number) => Promise<void>): Database & { statements: number } {
  let appends = 0;
  const wrap = (q: Queryable): Queryable => ({
    async query(sql, params) {
      out.statements += 1;
      if (beforeAppend && sql.includes('UPDATE audit_head')) await beforeAppend(appends++);
      return q.query(sql, params);
    },
  });
  const out = {
    ...inner,
    statements: 0,
    query: (sql: string, params?: readonly unknown[]) => wrap(inner).query(sql, params),
    transaction: <T>(fn: (tx: Queryable) => Promise<T>) => {
      out.statements += 2;
      return inner.transaction((tx) => fn(wrap(tx)));
    },
  } as Database & { statements: number };
  return out;
}

t.test('two writers racing for the head: optimistic retry, then the locked fallback; one chain', async (t) => {
  const dbA = empty.open(2);
  const dbB = empty.open(2);
  const a = instrumented(dbA);
  t.equal(await appendRecords(a, [record({ userId: 'A1' })]), 1);
  const before = a.statements;
  t.equal(await appendRecords(a, [record({ userId: 'A2' })]), 1);
  t.equal(a.statements - before, 1, 'with the head in memory, an append is one statement');

  // B appends: A's head in memory is stale. A's next statement inserts nothing, A re-reads and retries.
  t.equal(await appendRecords(dbB, [record({ userId: 'B1' })]), 1);
  const s0 = a.statements;
  t.equal(await appendRecords(a, [record({ userId: 'A3' }), record({ userId: 'A4' })]), 2);
  t.equal(a.statements - s0, 3, 'lost once: the empty append, the head read, the append that took');

  // B wins before each of A's optimistic attempts: A then waits for the head row and cannot lose.
  const racing = instrumented(dbA, async (n) => {
    if (n < 2) await appendRecords(dbB, [record({ userId: `B-race-${n}` })]);
  });
  t.equal(await appendRecords(racing, [record({ userId: 'A5' })]), 1);
  t.equal(racing.statements, 8, 'two losses (head read + empty append, twice), then BEGIN, locked head read, append, COMMIT');

  const order = (await db.query<{ user_id: string }>("SELECT user_id FROM request_log WHERE user_id ~ '^[AB]' ORDER BY seq")).rows.map((r) => r.user_id);
  t.same(order, ['A1', 'A2', 'B1', 'A3', 'A4', 'B-race-0', 'B-race-1', 'A5'], 'each append lands once, in the order the head moved');

  // And under real concurrency: two writers (two pools, as two instances) appending at once.
  const wa = new AuditWriter({ db: dbA });
  const wb = new AuditWriter({ db: dbB });
  wa.start();
  wb.start();
  await Promise.all(
    Array.from({ length: 300 }, (_, i) => (i % 2 ? wa : wb).record(record({ userId: `burst-${i}` }))),
  );
  await Promise.all([wa.close(), wb.close()]);
  const n = (await db.query<{ n: unknown }>("SELECT count(*) AS n FROM request_log WHERE user_id LIKE 'burst-%'")).rows[0]?.n;
  t.equal(toNumber(n), 300, 'every entry landed once');
  const result = await verifyChain(db);
  t.equal(result.ok, true, JSON.stringify(result.problem));
  t.equal(result.head?.seq, (await readHead(db)).seq);
});

t.test('a replayed batch (uids already present) is skipped, not re-chained', async (t) => {
  const r1 = record({ userId: 'replay-1' });
  const r2 = record({ userId: 'replay-2' });
  t.equal(await appendRecords(db, [r1]), 1);
  t.equal(await appendRecords(db, [r1, r2, r2]), 1, 'only the new one, once');
  t.equal((await verifyChain(db)).ok, true);
});

t.test('retention behind an anchor keeps working with the head table', async (t) => {
  const head = await readHead(db);
  const anchor = await trimChain(db, new Date(Date.now() + 60_000));
  t.equal(anchor?.seq, head.seq, 'everything was old: the anchor is the head');
  t.same(await readHead(db), head, 'the head is untouched');
  t.equal(await appendRecords(db, [record({ userId: 'after-trim' })]), 1);
  const result = await verifyChain(db);
  t.equal(result.ok, true, JSON.stringify(result.problem));
  t.equal(result.checked, 1, 'the new entry verifies from the anchor');
  t.equal(result.legacy, 0, 'the legacy row went with the first trim');
});
