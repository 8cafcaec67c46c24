// Database faults short of a restart, caused for real on the real Postgres (and PGlite): a peer
// holding the audit chain lock (lock_timeout), a session idle in a transaction (the server ends
// it), a statement over statement_timeout, a disk-full SQLSTATE, a record the database refuses
// (quarantined, the rest go on), a spool at its cap (refused, never lost), and the nonce guard
// full during an outage (refused, never unguarded).
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import t from 'tap';
import type { AuditRecord } from '../src/audit/chain.js';
import { AuditSpool } from '../src/audit/spool.js';
import { verifyChain } from '../src/audit/verify.js';
import { AuditWriter } from '../src/audit/writer.js';
import { openEmbedded } from '../src/db/embedded.js';
import { NonceGuard, NonceRepository } from '../src/db/nonces.js';
import { openPostgres } from '../src/db/postgres.js';
import { DatabaseUnavailableError } from '../src/db/unavailable.js';
import { AppError } from '../src/errors.js';
import { createTestDatabase } from './helpers/database.js';
import { lkmRequestRecord } from './helpers/audit-record.js';
import { freePort } from './helpers/process-util.js';

const { url, db } = await createTestDatabase(t);

function tmp(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `strongroom-${prefix}-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function record(userId: string, keypairId: string | null = null): AuditRecord {
  return lkmRequestRecord({
    userId,
    method: 'GET',
    uri: '/key-management/v1/keypair',
    keypairId,
    subjectKind: keypairId === null ? null : 'keypair',
    subjectId: keypairId,
  });
}

async function rows(where: string, params: unknown[] = []): Promise<Array<Record<string, unknown>>> {
  return (await db.query<Record<string, unknown>>(`SELECT * FROM request_log WHERE ${where} ORDER BY seq`, params)).rows;
}

/** A database nobody answers at (connection refused): unavailable for real. */
async function unreachable() {
  const d = openPostgres({ url: `postgres://postgres@127.0.0.1:${await freePort()}/none`, poolSize: 1 });
  t.teardown(() => d.close());
  return d;
}

t.test('a peer holding the chain head: appends give up after lock_timeout and are spooled, then land', async (t) => {
  const holder = new pg.Client({ connectionString: url });
  await holder.connect();
  // What a peer's append holds while its statement runs: the audit_head row (held here for good).
  await holder.query('BEGIN');
  await holder.query('SELECT seq FROM audit_head FOR UPDATE');
  const short = openPostgres({ url, poolSize: 2, timeouts: { lockMs: 300 } });
  t.teardown(() => short.close());
  const writer = new AuditWriter({ db: short, spool: new AuditSpool(tmp('lock-spool')), retryMs: 100 });
  writer.start();
  const started = Date.now();
  await writer.record(record('lock-waiter'));
  const waited = Date.now() - started;
  t.ok(waited < 3_000, `the entry was durable after ${waited} ms (spooled), not stuck behind the lock`);
  t.equal(writer.spooling, true, 'it went to the spool');
  await holder.query('COMMIT');
  await holder.end();
  const deadline = Date.now() + 10_000;
  while (writer.spooling && Date.now() < deadline) await sleep(50);
  t.equal((await rows("user_id = 'lock-waiter'")).length, 1, 'replayed once the lock was free');
  await writer.close();
});

t.test('idle in a transaction past the limit: the server ends the session; no crash, a 503-class error, the pool recovers', async (t) => {
  const short = openPostgres({ url, poolSize: 1, timeouts: { idleInTransactionMs: 200 } });
  t.teardown(() => short.close());
  const err = await short
    .transaction(async (tx) => {
      await tx.query('SELECT 1');
      // The server sends FATAL 25P03 and closes: an 'error' event on the checked-out client.
      await sleep(800);
      await tx.query('SELECT 2');
    })
    .catch((e: unknown) => e);
  t.type(err, DatabaseUnavailableError, 'the transaction fails as "database unavailable"');
  const { rows: r } = await short.query<{ n: number }>('SELECT 3 AS n');
  t.equal(r[0]?.n, 3, 'the broken client was discarded; the next query gets a fresh connection');
});

t.test('a statement over statement_timeout (57014) is "database unavailable"', async (t) => {
  const short = openPostgres({ url, poolSize: 1, timeouts: { statementMs: 200 } });
  t.teardown(() => short.close());
  const err = await short.query('SELECT pg_sleep(2)').catch((e: unknown) => e);
  t.type(err, DatabaseUnavailableError);
  t.equal(((err as Error).cause as { code?: string }).code, '57014');
});

const DISK_FULL = `DO $$ BEGIN RAISE EXCEPTION 'no space' USING ERRCODE = 'disk_full'; END $$`;
const BAD_INPUT = `SELECT 'not-a-uuid'::uuid`;

t.test('disk full (53100) is "database unavailable" on Postgres and PGlite; bad input is not', async (t) => {
  const dir = tmp('embedded');
  const embedded = await openEmbedded({ dataDir: dir });
  t.teardown(() => embedded.close());
  for (const [name, d] of [['postgres', db], ['embedded', embedded]] as const) {
    const full = await d.query(DISK_FULL).catch((e: unknown) => e);
    t.type(full, DatabaseUnavailableError, `${name}: disk full → unavailable`);
    const inTx = await d.transaction((tx) => tx.query(DISK_FULL)).catch((e: unknown) => e);
    t.type(inTx, DatabaseUnavailableError, `${name}: also inside a transaction`);
    const bad = await d.query(BAD_INPUT).catch((e: unknown) => e);
    t.notOk(bad instanceof DatabaseUnavailableError, `${name}: invalid input stays a server error`);
    t.equal((bad as { code?: string }).code, '22P02');
  }
});

t.test('a record the database refuses is quarantined with an event; the rest of its batch lands', async (t) => {
  const spoolDir = tmp('quarantine');
  const spool = new AuditSpool(spoolDir);
  const writer = new AuditWriter({ db, spool });
  writer.start();
  const bad = record('q-bad', 'not-a-uuid');
  // One batch: the writer groups records handed in together.
  await Promise.all([writer.record(record('q-1')), writer.record(record('q-2')), writer.record(bad), writer.record(record('q-3'))]);
  await writer.flush();
  await writer.flush();
  t.same((await rows("user_id LIKE 'q-%'")).map((r) => r.user_id), ['q-1', 'q-2', 'q-3'], 'the good records landed, in order');
  const file = spool.quarantinePath as string;
  t.ok(existsSync(file), 'a quarantine file in the spool directory');
  const kept = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { reason: { code: string }; record: { uid: string } });
  t.equal(kept.length, 1);
  t.equal(kept[0]?.record.uid, bad.uid, 'the refused record is kept whole');
  t.equal(kept[0]?.reason.code, '22P02', 'with the SQLSTATE that refused it');
  const events = await rows("event = 'audit.quarantine'");
  t.equal(events.length, 1, 'an audit.quarantine event is in the chain');
  t.equal((events[0]?.detail as { uid?: string }).uid, bad.uid);
  t.equal(writer.spooling, false, 'nothing was spooled: it was no outage');
  await writer.record(record('q-after'));
  t.equal((await rows("user_id = 'q-after'")).length, 1, 'the writer goes on');
  t.ok((await verifyChain(db)).ok, 'the chain verifies');
  await writer.close();
});

t.test('a refused record in the spool does not jam the replay', async (t) => {
  const spoolDir = tmp('replay-quarantine');
  const first = new AuditSpool(spoolDir);
  first.acquire();
  const bad = record('rq-bad', 'not-a-uuid');
  await first.append([record('rq-1'), bad, record('rq-2')]);
  await first.close();
  const spool = new AuditSpool(spoolDir);
  const writer = new AuditWriter({ db, spool, retryMs: 100 });
  writer.start();
  const deadline = Date.now() + 10_000;
  while (writer.spooling && Date.now() < deadline) await sleep(50);
  t.equal(writer.spooling, false, 'the spool drained');
  t.same((await rows("user_id LIKE 'rq-%'")).map((r) => r.user_id), ['rq-1', 'rq-2'], 'the good records replayed');
  t.match(readFileSync(spool.quarantinePath as string, 'utf8'), bad.uid, 'the refused one is quarantined');
  await writer.close();
});

t.test('the spool at its cap: entries are refused with AUDIT_ERR_UNAVAILABLE, never dropped', async (t) => {
  const spoolDir = tmp('cap');
  const spool = new AuditSpool(spoolDir, { maxBytes: 4096 });
  const writer = new AuditWriter({ db: await unreachable(), spool, retryMs: 60_000 });
  writer.start();
  let kept = 0;
  let refused: unknown;
  for (let i = 0; i < 100 && refused === undefined; i++) {
    try {
      await writer.record(record(`cap-${i}`));
      kept += 1;
    } catch (err) {
      refused = err;
    }
  }
  t.ok(kept > 3, `${kept} entries spooled before the cap`);
  t.type(refused, AppError);
  t.equal((refused as AppError).code, 'AUDIT_ERR_UNAVAILABLE', 'then refused: the caller gets 503');
  t.equal((refused as AppError).headers['retry-after'], '5', 'with Retry-After');
  const size = statSync(spool.path as string).size;
  t.ok(size <= 4096, `the spool file stays within its cap (${size} bytes)`);
  t.equal(readFileSync(spool.path as string, 'utf8').trim().split('\n').length, kept, 'every acknowledged entry is in it');
  await writer.close();
});

t.test('nonce guard during an outage: capped; when full, refused (503) rather than accepted unguarded', async (t) => {
  let now = 1_000_000;
  const guard = new NonceGuard({ repo: new NonceRepository(await unreachable()), windowMs: 120_000, clock: () => now, maxUnrecorded: 3 });
  for (let i = 0; i < 3; i++) t.equal(await guard.claim('genesys', `n${i}`), true, `nonce ${i} accepted locally`);
  t.equal(await guard.claim('genesys', 'n0'), false, 'a replay is still refused');
  const full = await guard.claim('genesys', 'n3').catch((e: unknown) => e);
  t.type(full, DatabaseUnavailableError, 'the fourth is refused: the guard is full (DB_ERR_UNAVAILABLE, 503)');
  t.equal(guard.unrecordedCount, 3);
  now += 120_001;
  t.equal(await guard.claim('genesys', 'n4'), true, 'once their window passed, the old ones need no guard and room is made');
  t.equal(guard.unrecordedCount, 1);
});
