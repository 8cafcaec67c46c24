// No audit entry lost: while the database is unreachable (a TCP relay to the real Postgres is
// cut) entries go to the fsync'd spool, then land exactly once and in order when it is back; a
// replay interrupted by a crash does not duplicate; with the spool unwritable too, the request
// is refused with 503 and Retry-After instead of being served unaudited.
import { execFileSync } from 'node:child_process';
import { appendFileSync, chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { AuditSpool } from '../src/audit/spool.js';
import { appendRecords } from '../src/audit/store.js';
import { verifyChain } from '../src/audit/verify.js';
import { AuditWriter, eventRecord } from '../src/audit/writer.js';
import { toNumber } from '../src/db/database.js';
import { AppError } from '../src/errors.js';
import { createTestDatabase, serverUrl } from './helpers/database.js';
import { startHarness } from './helpers/harness.js';
import { hawkFetch } from './helpers/hawk-client.js';
import { Relay } from './helpers/tcp-relay.js';

async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const direct = await createTestDatabase(t);
const target = new URL(serverUrl());
const relay = new Relay(target.hostname, Number(target.port || 5432));
await relay.start();
t.teardown(() => relay.cut());
const viaRelay = new URL(direct.url);
viaRelay.hostname = '127.0.0.1';
viaRelay.port = String(relay.port);

const h = await startHarness(t, { databaseUrl: viaRelay.toString() });
const credential = await h.register('spool-caller');
const spoolDir = h.config.audit.spoolDir;
const get = (user: string) =>
  hawkFetch({ method: 'GET', url: `${h.base}/keypair`, credential, headers: { 'PureCloud-User-Id': user } });
const count = async (where: string) =>
  toNumber((await direct.db.query<{ n: unknown }>(`SELECT count(*) AS n FROM request_log WHERE ${where}`)).rows[0]?.n);
const spoolLines = () =>
  readdirSync(spoolDir)
    .filter((f) => f.endsWith('.jsonl'))
    .flatMap((f) => readFileSync(join(spoolDir, f), 'utf8').split('\n').filter(Boolean));

t.test('database unreachable: entries are spooled; back: replayed exactly once and in order', async (t) => {
  t.equal((await get('before')).status, 200);
  await relay.cut();
  const statuses: number[] = [];
  for (let i = 0; i < 15; i++) {
    const res = await get(`spool-${i}`);
    statuses.push(res.status);
    t.not(res.headers.get('strongroom-error-code'), 'AUDIT_ERR_UNAVAILABLE', `request ${i} was audited (spooled)`);
  }
  const burst = await Promise.all(Array.from({ length: 10 }, (_, i) => get(`spool-burst-${i}`)));
  for (const res of burst) t.not(res.headers.get('strongroom-error-code'), 'AUDIT_ERR_UNAVAILABLE');
  t.ok([...statuses, ...burst.map((r) => r.status)].every((s) => s === 200 || s === 503), 'served or a clean 503');
  t.equal(h.app.auditWriter.spooling, true, 'the writer is spooling');
  const lines = spoolLines();
  t.equal(lines.filter((l) => l.includes('"spool-')).length, 25, 'every entry is in the spool file');
  t.equal(await count("user_id LIKE 'spool-%'"), 0, 'none reached the database yet');

  await relay.start(relay.port);
  await until('the spool to drain', () => !h.app.auditWriter.spooling);
  t.equal(await count("user_id LIKE 'spool-%'"), 25, 'every spooled entry landed');
  t.equal(await count("user_id LIKE 'spool-%' AND entry_uid IS NOT NULL"), 25);
  const dup = await direct.db.query("SELECT entry_uid FROM request_log GROUP BY entry_uid HAVING count(*) > 1");
  t.equal(dup.rows.length, 0, 'no entry twice');
  const order = await direct.db.query<{ user_id: string }>(
    "SELECT user_id FROM request_log WHERE user_id LIKE 'spool-%' AND user_id NOT LIKE 'spool-burst-%' ORDER BY seq",
  );
  t.same(order.rows.map((r) => r.user_id), Array.from({ length: 15 }, (_, i) => `spool-${i}`), 'in the order they were made');
  t.same(spoolLines(), [], 'the spool file is gone once replayed');
  t.equal((await get('after')).status, 200, 'served again');
  const verdict = await verifyChain(direct.db);
  t.equal(verdict.ok, true, JSON.stringify(verdict.problem));
  t.equal(verdict.checked, await count('TRUE'));
});

t.test('a replay interrupted by a crash lands each entry once, in order', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'strongroom-spool-crash-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const records = Array.from({ length: 10 }, (_, i) => eventRecord({ event: 'spool.crash', actor: 'system', detail: { i } }, new Date()));
  const first = new AuditSpool(dir);
  first.acquire();
  await first.append(records);
  const path = first.path as string;
  // The dead replayer had committed the first four before it could note its progress...
  await appendRecords(direct.db, records.slice(0, 4));
  // ...and a write was torn by the crash (never acknowledged to anyone).
  appendFileSync(path, '{"uid":"torn');
  await first.close();

  const writer = new AuditWriter({ db: direct.db, spool: new AuditSpool(dir), retryMs: 100 });
  writer.start();
  t.equal(writer.spooling, true, 'the left-over spool is found at start');
  await until('the replay', () => !writer.spooling);
  await writer.recordEvent({ event: 'spool.crash', actor: 'system', detail: { i: 10 } });
  await writer.close();
  const rows = await direct.db.query<{ detail: { i: number } }>("SELECT detail FROM request_log WHERE event = 'spool.crash' ORDER BY seq");
  t.same(rows.rows.map((r) => r.detail.i), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 'each once, in order, new entries after');
  t.notOk(existsSync(path), 'the replayed spool file is removed');
  t.equal((await verifyChain(direct.db)).ok, true);
});

/** Make `dir` unwritable, also for root (which ignores mode bits): the immutable attribute. */
function makeReadOnly(dir: string): () => void {
  chmodSync(dir, 0o500);
  const root = process.getuid?.() === 0;
  if (root) execFileSync('chattr', ['+i', dir]);
  return () => {
    if (root) execFileSync('chattr', ['-i', dir]);
    chmodSync(dir, 0o700);
  };
}

t.test('spool unwritable and database down: 503 with Retry-After, never served unaudited', async (t) => {
  t.same(spoolLines(), [], 'no spool file open (the previous outage was replayed)');
  const restore = makeReadOnly(spoolDir);
  t.teardown(restore);
  t.throws(() => writeFileSync(join(spoolDir, 'probe'), 'x'), 'the spool directory is really read-only');
  await relay.cut();
  for (let i = 0; i < 3; i++) {
    const res = await get(`refused-${i}`);
    t.equal(res.status, 503);
    t.equal(res.headers.get('strongroom-error-code'), 'AUDIT_ERR_UNAVAILABLE');
    t.equal(res.headers.get('retry-after'), '5');
    t.same(res.json, { message: 'The audit log is temporarily unavailable', status: 503 });
  }
  const err = await h.app.audit({ event: 'keypair.disable', actor: 'admin' }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof AppError && err.code === 'AUDIT_ERR_UNAVAILABLE', 'app.audit rejects too');

  restore();
  await relay.start(relay.port);
  await until('service back', async () => (await get('back')).status === 200);
  t.equal(await count("user_id LIKE 'refused-%'"), 0, 'refused requests left no entry (they were not served)');
  t.equal((await verifyChain(direct.db)).ok, true);
});
