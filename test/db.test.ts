// The database layer runs the same SQL on a real Postgres server and on the embedded PGlite: one
// suite, run against each. Backend-specific behaviour (advisory lock across pools, the embedded
// directory lock, connection failures) follows.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import t, { type Test } from 'tap';
import { CredentialRepository } from '../src/db/credentials.js';
import { sqlState, toBuffer, toNumber, type Database, type Queryable } from '../src/db/database.js';
import { EmbeddedDatabaseLockedError, openEmbedded } from '../src/db/embedded.js';
import { KeypairRepository, type KeypairRow } from '../src/db/keypairs.js';
import { migrate, migrations, type Migration } from '../src/db/migrations.js';
import { NonceRepository } from '../src/db/nonces.js';
import { openPostgres } from '../src/db/postgres.js';
import { RequestLogRepository, type RequestLogEntry } from '../src/db/request-log.js';
import { DatabaseUnavailableError, translateDbError } from '../src/db/unavailable.js';
import { createEmptyDatabase, createTestDatabase, serverUrl } from './helpers/database.js';
import { BUILD_ROOT } from './helpers/paths.js';

// PGlite starts in seconds and one check waits out the 5 s connection timeout: more than tap's
// 30 s default when this file is run directly with node.
t.setTimeout(180_000);

async function caught(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected the promise to reject, but it resolved');
}

async function count(db: Database, sql: string, params: unknown[] = []): Promise<number> {
  const { rows } = await db.query<{ n: unknown }>(sql, params);
  return toNumber(rows[0]?.n);
}

const tableCount = (db: Database, where = '') =>
  count(db, `SELECT count(*)::int AS n FROM information_schema.tables WHERE table_schema = 'public' ${where}`);

async function createEmptyEmbedded(t: Test): Promise<Database> {
  const dir = mkdtempSync(join(tmpdir(), 'strongroom-db-test-'));
  const db = await openEmbedded({ dataDir: dir });
  t.teardown(async () => {
    await db.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });
  return db;
}

interface Backend {
  kind: 'postgres' | 'embedded';
  /** A migrated database the repository tests share. */
  db: Database;
  /** A brand-new database with no schema at all, closed and removed when `t` ends. */
  fresh(t: Test): Promise<Database>;
}

/** Everything both backends must do identically. */
/** Every schema version this build knows, in order, and the newest. */
const VERSIONS = migrations.map((m) => m.version).sort((x, y) => x - y);
const LATEST = VERSIONS[VERSIONS.length - 1] as number;
/** The tables of migration 1; later migrations may add more. */
const LKM_TABLES = ['hawk_credential', 'hawk_nonce', 'keypair', 'request_log', 'request_log_clear', 'schema_migration'];

function suite(t: Test, b: Backend): void {
  const { db } = b;

  t.test('the handle reports its backend', async (t) => {
    t.equal(db.kind, b.kind);
  });

  t.test('migrate() applies every version once and records it', async (t) => {
    const fresh = await b.fresh(t);
    t.equal(await tableCount(fresh), 0, 'a fresh database has no tables');
    t.same(await migrate(fresh), VERSIONS, 'the first run applies every version, in order');
    t.same(await migrate(fresh), [], 'the second run applies nothing');
    const { rows } = await fresh.query<{ version: number; name: string; applied_at: unknown }>(
      'SELECT version, name, applied_at FROM schema_migration ORDER BY version',
    );
    t.same(rows.map((r) => r.version), VERSIONS);
    t.equal(rows[0]?.version, 1);
    t.equal(rows[0]?.name, 'lkm');
    t.ok(rows[0]?.applied_at instanceof Date, 'applied_at is a timestamp');
    const names = await fresh.query<{ table_name: string }>(
      "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
    );
    const tables = names.rows.map((r) => r.table_name);
    t.same(LKM_TABLES.filter((n) => !tables.includes(n)), [], 'every table of migration 1 exists');
  });

  t.test('two concurrent migrate() calls on one handle apply every version exactly once', async (t) => {
    const fresh = await b.fresh(t);
    const results = await Promise.all([migrate(fresh), migrate(fresh)]);
    t.same(results.map((r) => r.join(',')).sort(), ['', VERSIONS.join(',')]);
    t.equal(await count(fresh, 'SELECT count(*)::int AS n FROM schema_migration'), VERSIONS.length);
  });

  t.test('a failing migration leaves nothing behind; a new one applies alone', async (t) => {
    const NEXT = LATEST + 1;
    const broken: Migration = { version: NEXT, name: 'broken', sql: 'CREATE TABLE db_test_extra (x integer);\nSELEC nothing;' };
    const err = await caught(migrate(db, [...migrations, broken]));
    t.equal(sqlState(err), '42601', 'the syntax error surfaces with its SQLSTATE');
    t.equal(await tableCount(db, "AND table_name = 'db_test_extra'"), 0, 'the statement before it was rolled back');
    t.equal(await count(db, `SELECT count(*)::int AS n FROM schema_migration WHERE version = ${NEXT}`), 0);

    const extra: Migration = { version: NEXT, name: 'extra', sql: 'CREATE TABLE db_test_extra (x integer);\n' };
    t.same(await migrate(db, [...migrations, extra]), [NEXT], 'only the new version is applied');
    t.equal(await tableCount(db, "AND table_name = 'db_test_extra'"), 1);

    // This build knows up to LATEST only: a database migrated by a newer build must stop it.
    const tooNew = await caught(migrate(db));
    t.ok(tooNew instanceof Error);
    t.equal(
      (tooNew as Error).message,
      `the database schema (version ${NEXT}) is newer than this build knows (${LATEST}); upgrade strongroom`,
    );
    t.equal(await count(db, 'SELECT count(*)::int AS n FROM schema_migration'), VERSIONS.length + 1, 'nothing was changed');

    await db.query('DROP TABLE db_test_extra');
    await db.query(`DELETE FROM schema_migration WHERE version = ${NEXT}`);
    t.same(await migrate(db), [], `back at version ${LATEST}`);
  });

  t.test('CredentialRepository stores the sealed key byte for byte', async (t) => {
    const creds = new CredentialRepository(db);
    // Every byte value, NUL and 0xff included, in a non-trivial order.
    const sealed = Buffer.concat([Buffer.from(Array.from({ length: 256 }, (_, i) => i)), randomBytes(61)]);
    const before = Date.now();
    t.equal(await creds.insert('cred-alpha', sealed, 'sha256'), true, 'insert');
    t.equal(await creds.insert('cred-alpha', randomBytes(16), 'sha1'), false, 'a duplicate id is refused');

    const row = await creds.find('cred-alpha');
    if (!row) throw new Error('credential not found');
    t.same(Object.keys(row).sort(), ['algorithm', 'createdAt', 'id', 'revokedAt', 'sealedKey', 'signsQuery']);
    t.equal(row.id, 'cred-alpha');
    t.ok(Buffer.isBuffer(row.sealedKey), 'sealedKey is a Buffer');
    t.equal(row.sealedKey.length, sealed.length);
    t.ok(row.sealedKey.equals(sealed), 'the bytes are exactly the ones stored (not the duplicate)');
    t.equal(row.algorithm, 'sha256');
    t.ok(row.createdAt instanceof Date, 'createdAt is a Date');
    t.ok(Math.abs(row.createdAt.getTime() - before) < 10_000, 'createdAt defaults to now');
    t.equal(row.revokedAt, null);

    t.equal(await creds.insert('cred-beta', Buffer.from([1, 2, 3]), 'sha1'), true);
    t.equal((await creds.find('cred-beta'))?.algorithm, 'sha1');
    t.equal(await creds.find('no-such-credential'), undefined, 'unknown id');

    const bad = await caught(creds.insert('cred-gamma', Buffer.from([1]), 'md5' as 'sha1'));
    t.equal(sqlState(bad), '23514', 'an algorithm outside the CHECK is a constraint error, not a duplicate');
    t.equal(await creds.find('cred-gamma'), undefined);
  });

  t.test('KeypairRepository round-trips rows and lists them oldest first', async (t) => {
    const keypairs = new KeypairRepository(db);
    const base = Date.UTC(2024, 0, 2, 3, 4, 5, 123);
    const mk = (id: string, offsetMs: number, owner: string | null, bits = 3072): KeypairRow => ({
      id,
      publicKey: Buffer.concat([Buffer.from([0x30, 0x82, 0x00]), randomBytes(40)]),
      modulusBits: bits,
      dateCreated: new Date(base + offsetMs),
      owner,
    });
    const late = mk('cccccccc-0000-4000-8000-000000000003', 2_001, 'genesys-cloud-1');
    const early = mk('bbbbbbbb-0000-4000-8000-000000000002', 0, null, 2048);
    const tieB = mk('aaaaaaaa-0000-4000-8000-000000000009', 1_007, 'op');
    const tieA = mk('aaaaaaaa-0000-4000-8000-000000000001', 1_007, null);
    for (const row of [late, early, tieB, tieA]) await keypairs.insert(row);

    const found = await keypairs.find(late.id);
    if (!found) throw new Error('keypair not found');
    t.same(Object.keys(found).sort(), [
      'dateCreated', 'deleteAfter', 'id', 'modulusBits', 'origin', 'owner', 'publicKey', 'state', 'stateChangedAt',
    ]);
    t.equal(found.state, 'enabled', 'insert() records an enabled keypair by default');
    t.equal(found.origin, 'generated');
    t.equal(found.id, late.id);
    t.ok(Buffer.isBuffer(found.publicKey), 'publicKey is a Buffer');
    t.ok(found.publicKey.equals(late.publicKey), 'publicKey bytes are unchanged');
    t.equal(typeof found.modulusBits, 'number');
    t.equal(found.modulusBits, 3072);
    t.ok(found.dateCreated instanceof Date, 'dateCreated is a Date');
    t.equal(found.dateCreated.getTime(), base + 2_001, 'milliseconds survive');
    t.equal(found.owner, 'genesys-cloud-1');
    const noOwner = await keypairs.find(early.id);
    t.equal(noOwner?.owner, null, 'a null owner stays null');
    t.equal(noOwner?.modulusBits, 2048);

    const list = await keypairs.list();
    t.same(
      list.map((r) => r.id),
      [early.id, tieA.id, tieB.id, late.id],
      'ordered by dateCreated, then id',
    );
    t.same(
      list.map((r) => r.dateCreated.getTime()),
      [base, base + 1_007, base + 1_007, base + 2_001],
    );
    for (const row of list) {
      const inserted = [late, early, tieA, tieB].find((r) => r.id === row.id);
      t.ok(inserted && row.publicKey.equals(inserted.publicKey) && row.owner === inserted.owner, `${row.id} round-trips`);
    }
    t.equal(await keypairs.find(randomUUID()), undefined, 'unknown id');
  });

  t.test('NonceRepository: one use per credential while live, purge drops only expired', async (t) => {
    const nonces = new NonceRepository(db);
    const now = new Date(Date.UTC(2024, 5, 1, 12, 0, 0, 0));
    const at = (s: number) => new Date(now.getTime() + s * 1000);

    t.equal(await nonces.claim('hawk-a', 'n-1', now, at(60)), true, 'first claim');
    t.equal(await nonces.claim('hawk-a', 'n-1', at(30), at(90)), false, 'replay while live');
    t.equal(await nonces.claim('hawk-a', 'n-1', at(60), at(120)), false, 'still live at its expiry instant');
    t.equal(await nonces.claim('hawk-b', 'n-1', at(30), at(90)), true, 'the same nonce under another credential');
    t.equal(await nonces.claim('hawk-a', 'n-1', at(61), at(121)), true, 'reusable once expired');
    t.equal(await nonces.claim('hawk-a', 'n-1', at(62), at(122)), false, 'and then live again');
    t.equal(await nonces.claim('hawk-c', 'n-old', at(-20), at(-1)), true);

    const rows = async () =>
      (
        await db.query<{ hawk_id: string; nonce: string; expires_at: Date }>(
          'SELECT hawk_id, nonce, expires_at FROM hawk_nonce ORDER BY hawk_id, nonce',
        )
      ).rows.map((r) => `${r.hawk_id}/${r.nonce}@${(r.expires_at.getTime() - now.getTime()) / 1000}`);
    t.same(await rows(), ['hawk-a/n-1@121', 'hawk-b/n-1@90', 'hawk-c/n-old@-1']);

    t.equal(await nonces.purge(now), 1, 'one record had expired');
    t.same(await rows(), ['hawk-a/n-1@121', 'hawk-b/n-1@90']);
    t.equal(await nonces.purge(at(90)), 0, 'a record is not expired at its expiry instant');
    t.equal(await nonces.purge(at(100)), 1);
    t.same(await rows(), ['hawk-a/n-1@121']);
    t.equal(await nonces.purge(at(100)), 0, 'nothing left to purge');
  });

  t.test('NonceRepository: concurrent claims share statements, and each nonce has exactly one winner', async (t) => {
    let statements = 0;
    const counted: Queryable = {
      query: (text: string, params?: unknown[]) => {
        statements += 1;
        return db.query(text, params);
      },
    } as Queryable;
    const nonces = new NonceRepository(counted);
    const now = new Date(Date.UTC(2024, 6, 1, 12, 0, 0, 0));
    const until = new Date(now.getTime() + 120_000);
    t.equal(await nonces.claim('hawk-batch', 'taken-before', now, until), true);
    statements = 0;

    // 150 distinct nonces, each claimed twice at once, plus one already taken.
    const names = Array.from({ length: 150 }, (_, i) => `n-${i}`);
    const claims = [...names, ...names, 'taken-before'].map((n) => nonces.claim('hawk-batch', n, now, until).then((ok) => [n, ok] as const));
    const results = await Promise.all(claims);
    const wins = new Map<string, number>();
    for (const [n, ok] of results) if (ok) wins.set(n, (wins.get(n) ?? 0) + 1);
    t.equal(wins.get('taken-before'), undefined, 'a nonce recorded earlier is refused');
    t.same(names.filter((n) => wins.get(n) !== 1), [], 'every new nonce is won exactly once');
    t.ok(statements > 0 && statements <= 10, `301 concurrent claims took ${statements} statements`);
    const { rows } = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM hawk_nonce WHERE hawk_id = 'hawk-batch'");
    t.equal(Number(rows[0]?.n), 151, 'one row per nonce');

    t.equal(await nonces.claim('hawk-batch', 'after', now, until), true);
  });

  t.test('RequestLogRepository: newest first, limit, inclusive bounds, clear hides without deleting', async (t) => {
    const log = new RequestLogRepository(db);
    const base = Date.UTC(2024, 2, 3, 4, 5, 6, 7);
    const entry = (i: number, extra: Partial<RequestLogEntry> = {}): RequestLogEntry => ({
      userId: `user-${i}`,
      method: i % 2 === 0 ? 'GET' : 'POST',
      uri: `/key-management/v1/thing/${i}`,
      loggedAt: new Date(base + i * 1000),
      hawkId: 'hawk-a',
      statusCode: 200,
      keypairId: null,
      clientAddress: '127.0.0.1',
      ...extra,
    });
    // Inserted out of time order: list() orders by loggedAt, not by insertion.
    for (const i of [2, 0, 4, 1, 3]) await log.insert(entry(i, i === 3 ? { hawkId: null, statusCode: 401, clientAddress: null, keypairId: randomUUID() } : {}));

    const all = await log.list({ limit: 100 });
    t.same(
      all.map((e) => e.userId),
      ['user-4', 'user-3', 'user-2', 'user-1', 'user-0'],
      'newest first',
    );
    t.same(Object.keys(all[0] ?? {}).sort(), ['id', 'loggedAt', 'requestMethod', 'requestUri', 'userId']);
    t.same(all[0], {
      id: all[0]?.id,
      userId: 'user-4',
      requestUri: '/key-management/v1/thing/4',
      requestMethod: 'GET',
      loggedAt: new Date(base + 4000),
    });
    for (const e of all) {
      t.equal(typeof e.id, 'number', `id of ${e.userId} is a number`);
      t.ok(Number.isSafeInteger(e.id) && e.id > 0);
      t.ok(e.loggedAt instanceof Date);
    }
    t.equal(new Set(all.map((e) => e.id)).size, 5, 'ids are distinct');
    const raw = await db.query<{ id: unknown; user_id: string }>("SELECT id, user_id FROM request_log WHERE user_id = 'user-4'");
    t.equal(toNumber(raw.rows[0]?.id), all[0]?.id, 'the id is the stored bigserial');

    t.same(
      (await log.list({ limit: 2 })).map((e) => e.userId),
      ['user-4', 'user-3'],
      'limit keeps the newest',
    );
    t.same(
      (await log.list({ limit: 100, earliest: new Date(base + 1000), latest: new Date(base + 3000) })).map((e) => e.userId),
      ['user-3', 'user-2', 'user-1'],
      'earliest and latest are inclusive',
    );
    t.same(
      (await log.list({ limit: 100, earliest: new Date(base + 1001) })).map((e) => e.userId),
      ['user-4', 'user-3', 'user-2'],
      'earliest alone',
    );
    t.same(
      (await log.list({ limit: 100, latest: new Date(base + 999) })).map((e) => e.userId),
      ['user-0'],
      'latest alone',
    );
    t.same(
      (await log.list({ limit: 1, earliest: new Date(base + 1000), latest: new Date(base + 3000) })).map((e) => e.userId),
      ['user-3'],
      'limit applies after the bounds',
    );

    await log.clear('hawk-admin', new Date(base + 10_000));
    t.same(await log.list({ limit: 100 }), [], 'clear hides everything logged so far');
    t.equal(await count(db, 'SELECT count(*)::int AS n FROM request_log'), 5, 'the rows remain');
    const marks = await db.query<{ cleared_through: unknown; hawk_id: string | null; cleared_at: Date }>(
      'SELECT cleared_through, hawk_id, cleared_at FROM request_log_clear',
    );
    t.equal(marks.rows.length, 1);
    t.equal(toNumber(marks.rows[0]?.cleared_through), Math.max(...all.map((e) => e.id)), 'cleared through the newest id');
    t.equal(marks.rows[0]?.hawk_id, 'hawk-admin', 'who cleared it is recorded');
    t.equal(marks.rows[0]?.cleared_at.getTime(), base + 10_000);

    // Logged after the clear, but with an older timestamp: visibility follows the id, not the clock.
    await log.insert(entry(5));
    await log.insert(entry(-1));
    const after = await log.list({ limit: 100 });
    t.same(
      after.map((e) => e.userId),
      ['user-5', 'user--1'],
      'entries inserted after the clear are visible',
    );
    t.ok(after.every((e) => e.id > Math.max(...all.map((x) => x.id))));
    t.same(
      (await log.list({ limit: 100, latest: new Date(base + 4000) })).map((e) => e.userId),
      ['user--1'],
      'bounds still apply after a clear',
    );
    await log.clear(null, new Date(base + 20_000));
    t.same(await log.list({ limit: 100 }), [], 'a second clear hides those too');
    t.equal(await count(db, 'SELECT count(*)::int AS n FROM request_log'), 7);
    t.equal(await count(db, 'SELECT count(*)::int AS n FROM request_log_clear WHERE hawk_id IS NULL'), 1);
  });

  t.test('transaction() commits on success and rolls back when the function throws', async (t) => {
    const creds = new CredentialRepository(db);
    const value = await db.transaction(async (tx) => {
      t.equal(await new CredentialRepository(tx).insert('tx-commit', Buffer.from([7]), 'sha1'), true);
      return 'done';
    });
    t.equal(value, 'done', 'the function result is returned');
    t.ok((await creds.find('tx-commit'))?.sealedKey.equals(Buffer.from([7])), 'committed');

    const boom = new Error('boom');
    const err = await caught(
      db.transaction(async (tx) => {
        await new CredentialRepository(tx).insert('tx-rollback', Buffer.from([8]), 'sha1');
        const inside = await tx.query<{ n: unknown }>("SELECT count(*)::int AS n FROM hawk_credential WHERE id = 'tx-rollback'");
        t.equal(toNumber(inside.rows[0]?.n), 1, 'visible inside the transaction');
        throw boom;
      }),
    );
    t.equal(err, boom, 'the thrown error propagates unchanged');
    t.equal(await creds.find('tx-rollback'), undefined, 'rolled back');

    const sqlErr = await caught(
      db.transaction(async (tx) => {
        await new CredentialRepository(tx).insert('tx-sql-error', Buffer.from([9]), 'sha1');
        await tx.query('SELEC 1');
      }),
    );
    t.equal(sqlState(sqlErr), '42601');
    t.notOk(sqlErr instanceof DatabaseUnavailableError, 'a SQL error is not an outage');
    t.equal(await creds.find('tx-sql-error'), undefined, 'a SQL error rolls back the earlier statements');

    t.equal(
      await db.transaction(async (tx) => new CredentialRepository(tx).insert('tx-after', Buffer.from([10]), 'sha1')),
      true,
      'the database is usable after a rollback',
    );
    t.ok(await creds.find('tx-after'));
  });

  t.test('SQL errors keep their SQLSTATE', async (t) => {
    const syntax = await caught(db.query('SELEC 1'));
    t.equal(sqlState(syntax), '42601', 'syntax error');
    t.notOk(syntax instanceof DatabaseUnavailableError);
    t.equal(translateDbError(syntax), syntax, 'translateDbError passes it through');

    await db.query("INSERT INTO hawk_credential (id, sealed_key, algorithm) VALUES ('sqlstate-dup', '\\x00', 'sha1')");
    const dup = await caught(
      db.query("INSERT INTO hawk_credential (id, sealed_key, algorithm) VALUES ('sqlstate-dup', '\\x01', 'sha1')"),
    );
    t.equal(sqlState(dup), '23505', 'unique violation');
    t.notOk(dup instanceof DatabaseUnavailableError);

    const missing = await caught(db.query('SELECT * FROM no_such_table'));
    t.equal(sqlState(missing), '42P01', 'undefined table');
  });

  t.test('rowCount means the same on both backends', async (t) => {
    await db.query('CREATE TEMPORARY TABLE db_test_rows (x integer)');
    t.equal((await db.query('INSERT INTO db_test_rows VALUES (1), (2), (3)')).rowCount, 3, 'INSERT');
    t.equal((await db.query('UPDATE db_test_rows SET x = x + 1 WHERE x > 1')).rowCount, 2, 'UPDATE');
    t.equal((await db.query('UPDATE db_test_rows SET x = 0 WHERE false')).rowCount, 0, 'UPDATE of nothing');
    const select = await db.query('SELECT x FROM db_test_rows');
    t.equal(select.rows.length, 3);
    t.equal(select.rowCount, 3, 'SELECT counts the rows returned');
    t.equal((await db.query('DELETE FROM db_test_rows')).rowCount, 3, 'DELETE');
    await db.query('DROP TABLE db_test_rows');
  });

  t.test('pg and PGlite column types normalise to the same values', async (t) => {
    const { rows } = await db.query<{ i8: unknown; b: unknown; empty: unknown }>(
      "SELECT 9007199254740991::int8 AS i8, '\\x00ff10'::bytea AS b, ''::bytea AS empty",
    );
    const row = rows[0];
    if (!row) throw new Error('no row');
    t.equal(toNumber(row.i8), Number.MAX_SAFE_INTEGER, 'int8 becomes a number');
    t.same([...toBuffer(row.b)], [0, 0xff, 0x10], 'bytea becomes a Buffer');
    t.ok(Buffer.isBuffer(toBuffer(row.b)));
    t.equal(toBuffer(row.empty).length, 0, 'empty bytea');
  });
}

t.test('postgres server', async (t) => {
  const { db } = await createTestDatabase(t);
  suite(t, {
    kind: 'postgres',
    db,
    async fresh(t) {
      return (await createEmptyDatabase(t)).open();
    },
  });
});

t.test('embedded PGlite', async (t) => {
  const db = await createEmptyEmbedded(t);
  t.same(await migrate(db), VERSIONS, 'migrated');
  suite(t, { kind: 'embedded', db, fresh: createEmptyEmbedded });
});

t.test('concurrent migrate() from two pools on one server database applies every version exactly once', async (t) => {
  const empty = await createEmptyDatabase(t);
  const a = empty.open(1);
  const b = empty.open(1);
  // Connect both first, so the two migrations reach the server together.
  await Promise.all([a.query('SELECT 1'), b.query('SELECT 1')]);
  const results = await Promise.all([migrate(a), migrate(b)]);
  t.same(results.map((r) => r.join(',')).sort(), ['', VERSIONS.join(',')], 'one applied them, the other found them applied');
  t.equal(await count(a, 'SELECT count(*)::int AS n FROM schema_migration'), VERSIONS.length);
  t.ok(await count(b, "SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'public'") >= LKM_TABLES.length);
});

t.test('a failed postgres transaction returns a clean connection to the pool', async (t) => {
  const { url, db: other } = await createTestDatabase(t);
  const db = openPostgres({ url, poolSize: 1 });
  t.teardown(() => db.close());
  for (let i = 0; i < 3; i += 1) {
    const err = await caught(
      db.transaction(async (tx) => {
        await new CredentialRepository(tx).insert(`pool-${i}`, Buffer.from([i]), 'sha1');
        throw new Error(`fail ${i}`);
      }),
    );
    t.equal((err as Error).message, `fail ${i}`);
  }
  // With one connection, a leak would make this wait forever; a connection left inside the
  // transaction would make the insert invisible to another connection.
  t.equal(await new CredentialRepository(db).insert('pool-after', Buffer.from([1]), 'sha1'), true);
  const seen = await other.query<{ id: string }>("SELECT id FROM hawk_credential WHERE id LIKE 'pool-%' ORDER BY id");
  t.same(seen.rows, [{ id: 'pool-after' }], 'the rolled-back rows are gone, the later insert is committed');
});

t.test('embedded lock', async (t) => {
  const lockPath = (dir: string) => join(dir, 'strongroom.lock');

  t.test('a second open of the same directory in this process is refused', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'strongroom-db-lock-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const first = await openEmbedded({ dataDir: dir });
    let firstOpen = true;
    t.teardown(async () => {
      if (firstOpen) await first.close();
    });
    await migrate(first);
    t.equal(readFileSync(lockPath(dir), 'utf8'), String(process.pid), 'the lock holds our pid');

    const second = await openEmbedded({ dataDir: dir }).then(
      async (db) => {
        await db.close(); // it should never have opened; do not leave it running
        return undefined;
      },
      (err: unknown) => err,
    );
    t.ok(second instanceof EmbeddedDatabaseLockedError, 'EmbeddedDatabaseLockedError');
    if (second instanceof EmbeddedDatabaseLockedError) {
      t.equal(second.code, 'DB_ERR_LOCKED');
      t.equal(second.pid, process.pid);
      t.match(second.message, `in use by process ${process.pid}`);
    }
    t.equal(readFileSync(lockPath(dir), 'utf8'), String(process.pid), 'the refused open left the lock alone');
    t.equal(await count(first, 'SELECT count(*)::int AS n FROM schema_migration'), VERSIONS.length, 'the first handle still works');

    await first.close();
    firstOpen = false;
    t.notOk(existsSync(lockPath(dir)), 'close releases the lock');
    const again = await openEmbedded({ dataDir: dir });
    t.equal(await count(again, 'SELECT count(*)::int AS n FROM schema_migration'), VERSIONS.length, 'reopened with its data');
    await again.close();
  });

  t.test('a second open through another path to the same directory is refused too', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'strongroom-db-lock-'));
    const link = `${dir}-link`;
    symlinkSync(dir, link);
    t.teardown(() => {
      rmSync(link, { force: true });
      rmSync(dir, { recursive: true, force: true });
    });
    const first = await openEmbedded({ dataDir: dir });
    t.teardown(() => first.close());
    const second = await openEmbedded({ dataDir: link }).then(
      async (db) => {
        await db.close();
        return undefined;
      },
      (err: unknown) => err,
    );
    t.ok(second instanceof EmbeddedDatabaseLockedError, 'a symlink does not get around the lock');
  });

  t.test('another live process holding the directory blocks the open; its stale lock is taken over', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'strongroom-db-lock-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const embeddedJs = pathToFileURL(join(BUILD_ROOT, 'src', 'db', 'embedded.js')).href;
    const childCode = `
      const { openEmbedded } = await import(process.argv[1]);
      const db = await openEmbedded({ dataDir: process.argv[2] });
      await db.query('CREATE TABLE child_marker (pid integer)');
      await db.query('INSERT INTO child_marker VALUES ($1)', [process.pid]);
      process.stdout.write('ready\\n');
      setInterval(() => undefined, 60_000);
    `;
    const child: ChildProcess = spawn(process.execPath, ['--input-type=module', '-e', childCode, embeddedJs, dir], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    t.teardown(async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    });
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    await new Promise<void>((resolve, reject) => {
      let out = '';
      child.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('ready\n')) resolve();
      });
      child.once('exit', (code, signal) => reject(new Error(`child exited (${code ?? signal}) before ready: ${stderr}`)));
    });
    const pid = child.pid;
    if (pid === undefined) throw new Error('child has no pid');
    t.equal(readFileSync(lockPath(dir), 'utf8'), String(pid), 'the child holds the lock');

    const err = await caught(openEmbedded({ dataDir: dir }));
    t.ok(err instanceof EmbeddedDatabaseLockedError, 'EmbeddedDatabaseLockedError');
    if (err instanceof EmbeddedDatabaseLockedError) {
      t.equal(err.code, 'DB_ERR_LOCKED');
      t.equal(err.pid, pid);
      t.match(err.message, `in use by process ${pid}`);
      t.match(err.message, dir);
    }
    t.equal(readFileSync(lockPath(dir), 'utf8'), String(pid), 'the refused open left the child its lock');

    // Killed without closing: the lock file stays behind, naming a dead process.
    child.kill('SIGKILL');
    await exited;
    t.equal(readFileSync(lockPath(dir), 'utf8'), String(pid), 'a stale lock remains');

    const db = await openEmbedded({ dataDir: dir });
    t.teardown(() => db.close());
    t.equal(readFileSync(lockPath(dir), 'utf8'), String(process.pid), 'the stale lock was taken over');
    t.same(
      (await db.query<{ pid: number }>('SELECT pid FROM child_marker')).rows,
      [{ pid }],
      "the child's committed data survived its death",
    );
  });
});

t.test('connection failures become DatabaseUnavailableError', async (t) => {
  t.test('a closed port', async (t) => {
    const db = openPostgres({ url: 'postgres://strongroom:strongroom@127.0.0.1:1/postgres', poolSize: 1 });
    t.teardown(() => db.close());
    const started = Date.now();
    const err = await caught(db.query('SELECT 1'));
    t.ok(Date.now() - started < 5_500, 'within the 5 s connection timeout');
    t.ok(err instanceof DatabaseUnavailableError, 'DatabaseUnavailableError');
    t.equal((err as DatabaseUnavailableError).code, 'DB_ERR_UNAVAILABLE');
    t.equal((err as DatabaseUnavailableError).message, 'database unavailable');
    t.equal(((err as Error).cause as NodeJS.ErrnoException | undefined)?.code, 'ECONNREFUSED', 'the cause is kept');
    const txErr = await caught(db.transaction(async () => 'never'));
    t.ok(txErr instanceof DatabaseUnavailableError, 'transaction() too');
  });

  t.test('a server that accepts but never answers times out after 5 s', async (t) => {
    const sockets = new Set<Socket>();
    const server: Server = createServer((s) => {
      sockets.add(s);
      s.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.teardown(
      () =>
        new Promise<void>((resolve) => {
          for (const s of sockets) s.destroy();
          server.close(() => resolve());
        }),
    );
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('no port');
    const db = openPostgres({ url: `postgres://strongroom:strongroom@127.0.0.1:${address.port}/postgres`, poolSize: 1 });
    t.teardown(() => db.close());
    const started = Date.now();
    const err = await caught(db.query('SELECT 1'));
    const elapsed = Date.now() - started;
    t.ok(elapsed >= 4_500 && elapsed < 7_000, `gave up after the connection timeout (${elapsed} ms)`);
    t.ok(err instanceof DatabaseUnavailableError, 'DatabaseUnavailableError');
    t.equal((err as DatabaseUnavailableError).code, 'DB_ERR_UNAVAILABLE');
  });

  t.test('a connection terminated by the server mid-query (57P01)', async (t) => {
    const { url } = await createTestDatabase(t);
    const idleErrors: Error[] = [];
    const db = openPostgres({ url, poolSize: 1, onIdleError: (e) => idleErrors.push(e) });
    t.teardown(() => db.close());
    const pid = toNumber((await db.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]?.pid);
    const admin = new pg.Client({ connectionString: serverUrl() });
    await admin.connect();
    t.teardown(() => admin.end());

    const pending = caught(db.query('SELECT pg_sleep(10)'));
    await sleep(300);
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    const err = await pending;
    t.ok(err instanceof DatabaseUnavailableError, 'DatabaseUnavailableError');
    t.equal(sqlState((err as Error).cause), '57P01', 'the cause is the server terminating the connection');
    t.same((await db.query<{ one: number }>('SELECT 1 AS one')).rows, [{ one: 1 }], 'the pool reconnects');
  });

  t.test('translateDbError', async (t) => {
    const withCode = (code: string, props: Record<string, unknown> = {}) =>
      Object.assign(new Error(`error ${code}`), { code }, props);
    for (const code of ['23505', '42601', '42P01', '23514', 'P0001', 'XX000', '22P02']) {
      const err = withCode(code, { severity: 'ERROR' });
      t.equal(translateDbError(err), err, `${code} passes through`);
    }
    // Timeouts, a peer's lock, the server ending an idle transaction, retryable conflicts.
    for (const code of ['57014', '55P03', '25P03', '40001', '40P01', '53100', '57P02']) {
      const out = translateDbError(withCode(code, { severity: 'ERROR' }));
      t.ok(out instanceof DatabaseUnavailableError, `${code} from the server is unavailable`);
    }
    const bug = new TypeError('bad parameter');
    t.equal(translateDbError(bug), bug, 'a TypeError (a bug) passes through');
    for (const code of ['08006', '08001', '57P01', '57P03', 'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT']) {
      const err = withCode(code);
      const out = translateDbError(err);
      t.ok(out instanceof DatabaseUnavailableError, `${code} is unavailable`);
      t.equal((out as Error).cause, err, `${code} is kept as cause`);
    }
    const plain = new Error('Connection terminated unexpectedly');
    t.ok(translateDbError(plain) instanceof DatabaseUnavailableError, 'no code at all');
    t.ok(translateDbError('weird') instanceof DatabaseUnavailableError, 'not even an Error');
    // Five upper-case letters look like a SQLSTATE but are a socket errno from Node.
    const epipe = withCode('EPIPE', { errno: -32, syscall: 'write' });
    t.ok(translateDbError(epipe) instanceof DatabaseUnavailableError, 'EPIPE (socket write after the server left) is unavailable');
  });
});

t.test('toBuffer and toNumber normalise pg and PGlite values', async (t) => {
  const buf = Buffer.from([1, 2, 3]);
  t.equal(toBuffer(buf), buf, 'a Buffer is returned as is');
  const backing = new Uint8Array([9, 9, 4, 5, 6, 9]);
  const view = backing.subarray(2, 5);
  const converted = toBuffer(view);
  t.ok(Buffer.isBuffer(converted), 'a Uint8Array becomes a Buffer');
  t.same([...converted], [4, 5, 6], 'only the bytes of the view, honouring its offset');
  t.ok(converted.equals(Buffer.from([4, 5, 6])));
  t.equal(toBuffer(new Uint8Array(0)).length, 0);
  t.throws(() => toBuffer('\\x0102'), { name: 'TypeError', message: 'expected bytea' }, 'a string is not bytea');
  t.throws(() => toBuffer(null), { name: 'TypeError', message: 'expected bytea' });
  t.throws(() => toBuffer([1, 2]), { name: 'TypeError', message: 'expected bytea' });

  t.equal(toNumber('42'), 42, 'pg int8 string');
  t.equal(toNumber(42), 42, 'PGlite number');
  t.equal(toNumber(0), 0);
  t.equal(toNumber('9007199254740991'), Number.MAX_SAFE_INTEGER);
  t.equal(toNumber(7n), 7, 'bigint');
  t.throws(() => toNumber('9007199254740993'), { name: 'TypeError', message: 'expected a safe integer' }, 'beyond 2^53');
  t.throws(() => toNumber('abc'), { name: 'TypeError' });
  t.throws(() => toNumber(1.5), { name: 'TypeError' });
  t.throws(() => toNumber(undefined), { name: 'TypeError' });
  t.throws(() => toNumber(Number.NaN), { name: 'TypeError' });
});
