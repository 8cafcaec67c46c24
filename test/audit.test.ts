// The tamper-evident audit chain on a real token and a real Postgres: every request and audited
// event is chained; rows altered, deleted, reordered or slipped in with SQL are named by the BUILT
// `strongroom audit verify`; retention removes old entries behind an anchor and the rest still
// verifies; two instances on one database keep one chain; concurrent requests share commits.
import t from 'tap';
import { GENESIS_HASH, hashRecordV2 } from '../src/audit/chain.js';
import { trimChain } from '../src/audit/store.js';
import { verifyChain } from '../src/audit/verify.js';
import { toNumber } from '../src/db/database.js';
import { startHarness } from './helpers/harness.js';
import { hawkFetch } from './helpers/hawk-client.js';
import { CLI_JS } from './helpers/paths.js';
import { baseEnv, spawnNode, tempDir, tokenEnv, waitExit, writeSecretFile } from './helpers/process-util.js';
import { createTestToken } from './helpers/token.js';

// SoftHSM scans the token directory at C_Initialize: create every token before anything opens one.
const token = createTestToken();
const work = tempDir(t, 'audit');
const pinFile = writeSecretFile(work, 'pin', `${token.pin}\n`);

const h = await startHarness(t, { token });
const credential = await h.register('audit-caller');
const env = { ...baseEnv(), ...tokenEnv(token, pinFile), DATABASE_URL: h.databaseUrl };

interface Verdict {
  ok: boolean;
  checked: number;
  anchor: { seq: number; hash: string } | null;
  head: { seq: number; id: number; hash: string } | null;
  problem: { kind: string; seq: number; id?: number; message: string } | null;
}

/** `strongroom audit verify` as a real process. */
async function verify(tt: Parameters<typeof spawnNode>[0], json = true): Promise<{ code: number | null; stdout: string; verdict?: Verdict }> {
  const proc = spawnNode(tt, CLI_JS, json ? ['audit', 'verify', '--json'] : ['audit', 'verify'], env);
  const { code } = await waitExit(proc, 60_000);
  const stdout = proc.stdout();
  return { code, stdout, ...(json && { verdict: JSON.parse(stdout) as Verdict }) };
}

const get = (path: string, headers: Record<string, string> = {}) =>
  hawkFetch({ method: 'GET', url: `${h.base}${path}`, credential, headers });

async function rowCount(where = 'TRUE'): Promise<number> {
  const { rows } = await h.db.query<{ n: unknown }>(`SELECT count(*) AS n FROM request_log WHERE ${where}`);
  return toNumber(rows[0]?.n);
}

t.test('every request and event is chained; audit verify passes', async (t) => {
  for (let i = 0; i < 5; i++) t.equal((await get('/keypair', { 'PureCloud-User-Id': `user-${i}` })).status, 200);
  const bad = await hawkFetch({ method: 'GET', url: `${h.base}/keypair`, credential: { ...credential, key: 'x'.repeat(43) } });
  t.equal(bad.status, 401, 'a refused request');
  t.equal(bad.headers.get('strongroom-error-code'), 'HAWK_ERR_UNAUTHORIZED');
  await h.app.audit({ event: 'keypair.disable', actor: 'admin', keypairId: '3F2504E0-4F89-11D3-9A0C-0305E82C3301', detail: { reason: 'test', n: 1 } });

  const { rows } = await h.db.query<{ seq: unknown; event: string | null; status_code: number | null; keypair_id: string | null; actor: string | null }>(
    'SELECT seq, event, status_code, keypair_id, actor FROM request_log ORDER BY seq',
  );
  t.ok(rows.length >= 8, 'registration, five lists, the refusal and the event');
  t.same(rows.map((r) => toNumber(r.seq)), rows.map((_, i) => i + 1), 'seq runs 1..n without gaps');
  t.equal(await rowCount('seq IS NULL OR hash IS NULL OR prev_hash IS NULL'), 0, 'every row is chained');
  t.ok(rows.some((r) => r.status_code === 401), 'the refused request is logged too');
  const event = rows.find((r) => r.event === 'keypair.disable');
  t.equal(event?.actor, 'admin');
  t.equal(event?.keypair_id, '3f2504e0-4f89-11d3-9a0c-0305e82c3301');

  const first = await h.db.query<{ prev_hash: Buffer }>('SELECT prev_hash FROM request_log WHERE seq = 1');
  t.ok(first.rows[0]?.prev_hash.equals(GENESIS_HASH), 'the first entry chains to genesis');

  const run = await verify(t);
  t.equal(run.code, 0, run.stdout);
  t.equal(run.verdict?.ok, true);
  t.equal(run.verdict?.checked, rows.length, 'every entry was checked');
  t.equal(run.verdict?.head?.seq, rows.length);
  const human = await verify(t, false);
  t.equal(human.code, 0);
  t.match(human.stdout, /audit chain intact: \d+ entries verified/);
});

t.test('DELETE /request-log hides entries, destroys nothing, and is itself audited', async (t) => {
  const before = await rowCount();
  const res = await hawkFetch({ method: 'DELETE', url: `${h.base}/request-log`, credential });
  t.equal(res.status, 200);
  t.equal(await rowCount(), before + 2, 'nothing removed; the clear event and the DELETE request were added');
  const ev = await h.db.query<{ actor: string; detail: { clearedThrough: number } }>(
    "SELECT actor, detail FROM request_log WHERE event = 'request-log.clear'",
  );
  t.equal(ev.rows.length, 1);
  t.equal(ev.rows[0]?.actor, 'audit-caller', 'the Hawk id that cleared');
  t.type(ev.rows[0]?.detail.clearedThrough, 'number');
  const list = await get('/request-log');
  t.equal(list.status, 200);
  const entries = list.json as { requestMethod: string; requestUri: string }[];
  t.same(
    entries.map((e) => e.requestMethod),
    ['DELETE'],
    'only the DELETE itself (logged after the clear) is visible; events never show in the compatible GET',
  );
  t.equal((await verify(t)).code, 0, 'the chain still verifies');
});

t.test('altered, deleted, reordered and slipped-in rows are each named', async (t) => {
  const n = await rowCount();
  t.ok(n >= 8);
  const idOf = async (seq: number) =>
    toNumber((await h.db.query<{ id: unknown }>('SELECT id FROM request_log WHERE seq = $1', [seq])).rows[0]?.id);

  // Altered: one field of seq 3.
  await h.db.query("UPDATE request_log SET request_uri = request_uri || '?x' WHERE seq = 3");
  let run = await verify(t);
  t.equal(run.code, 1, 'exit 1');
  t.equal(run.verdict?.ok, false);
  t.equal(run.verdict?.problem?.kind, 'altered');
  t.equal(run.verdict?.problem?.seq, 3);
  t.equal(run.verdict?.problem?.id, await idOf(3));
  t.equal(run.verdict?.checked, 2, 'two intact entries before it');
  const human = await verify(t, false);
  t.equal(human.code, 1);
  t.match(human.stdout, /BROKEN.*seq 3 .*altered/);
  await h.db.query("UPDATE request_log SET request_uri = left(request_uri, length(request_uri) - 2) WHERE seq = 3");
  t.equal((await verify(t)).code, 0, 'restored: intact again');

  // A forger who alters a row and re-computes its hash still breaks the link to the next one.
  const victim = n - 1;
  const row = await h.db.query<Record<string, unknown>>(
    'SELECT id, seq, entry_uid, logged_at, user_id, request_method, request_uri, hawk_id, status_code, keypair_id, client_address, event, actor, detail, face, principal_kind, principal_id, subject_kind, subject_id, prev_hash, hash FROM request_log WHERE seq = $1',
    [victim],
  );
  const r = row.rows[0] as Record<string, unknown>;
  const forged = hashRecordV2(
    {
      uid: r.entry_uid as string,
      loggedAt: r.logged_at as Date,
      userId: r.user_id as string | null,
      method: r.request_method as string | null,
      uri: r.request_uri as string | null,
      hawkId: r.hawk_id as string | null,
      statusCode: 599,
      keypairId: r.keypair_id as string | null,
      clientAddress: r.client_address as string | null,
      event: r.event as string | null,
      actor: r.actor as string | null,
      detail: r.detail as Record<string, unknown> | null,
      face: r.face as string | null,
      principalKind: r.principal_kind as string | null,
      principalId: r.principal_id as string | null,
      subjectKind: r.subject_kind as string | null,
      subjectId: r.subject_id as string | null,
    },
    victim,
    toNumber(r.id),
    r.prev_hash as Buffer,
  );
  await h.db.query('UPDATE request_log SET status_code = 599, hash = $1 WHERE seq = $2', [forged, victim]);
  run = await verify(t);
  t.equal(run.code, 1);
  t.equal(run.verdict?.problem?.kind, 'reordered', 're-hashed row: the next entry no longer follows it');
  t.equal(run.verdict?.problem?.seq, victim + 1);
  await h.db.query('UPDATE request_log SET status_code = $1, hash = $2 WHERE seq = $3', [r.status_code, r.hash, victim]);
  t.equal((await verify(t)).code, 0);

  // Deleted: seq 5 (kept aside as JSON and put back afterwards).
  const saved = await h.db.query<{ j: unknown }>('SELECT row_to_json(l) AS j FROM request_log l WHERE seq = 5');
  await h.db.query('DELETE FROM request_log WHERE seq = 5');
  run = await verify(t);
  t.equal(run.code, 1);
  t.equal(run.verdict?.problem?.kind, 'missing');
  t.equal(run.verdict?.problem?.seq, 5, 'the missing entry is named');
  t.equal(run.verdict?.checked, 4);
  await h.db.query('INSERT INTO request_log SELECT * FROM json_populate_record(NULL::request_log, $1::json)', [
    JSON.stringify(saved.rows[0]?.j),
  ]);
  t.equal((await verify(t)).code, 0, 'put back: intact again');

  // Reordered: seq 6 and 7 swap places.
  await h.db.query('UPDATE request_log SET seq = -1 WHERE seq = 6');
  await h.db.query('UPDATE request_log SET seq = 6 WHERE seq = 7');
  await h.db.query('UPDATE request_log SET seq = 7 WHERE seq = -1');
  run = await verify(t);
  t.equal(run.code, 1);
  t.equal(run.verdict?.problem?.kind, 'reordered');
  t.equal(run.verdict?.problem?.seq, 6);
  await h.db.query('UPDATE request_log SET seq = -1 WHERE seq = 6');
  await h.db.query('UPDATE request_log SET seq = 6 WHERE seq = 7');
  await h.db.query('UPDATE request_log SET seq = 7 WHERE seq = -1');
  t.equal((await verify(t)).code, 0);

  // Slipped in: a row written around the chain.
  const stray = await h.db.query<{ id: unknown }>(
    "INSERT INTO request_log (user_id, request_method, request_uri, logged_at) VALUES ('x', 'GET', '/forged', now()) RETURNING id",
  );
  run = await verify(t);
  t.equal(run.code, 1);
  t.equal(run.verdict?.problem?.kind, 'unchained');
  t.equal(run.verdict?.problem?.id, toNumber(stray.rows[0]?.id));
  await h.db.query('DELETE FROM request_log WHERE id = $1', [stray.rows[0]?.id]);
  t.equal((await verify(t)).code, 0);
});

t.test('concurrent requests share commits (group commit) and all land', async (t) => {
  const before = await rowCount();
  const results = await Promise.all(
    Array.from({ length: 40 }, (_, i) => get('/keypair', { 'PureCloud-User-Id': `burst-${i}` })),
  );
  t.ok(results.every((r) => r.status === 200));
  t.equal(await rowCount(), before + 40, 'one entry per request, none lost');
  const tx = await h.db.query<{ n: unknown }>("SELECT count(DISTINCT xmin::text) AS n FROM request_log WHERE user_id LIKE 'burst-%'");
  t.ok(toNumber(tx.rows[0]?.n) < 40, `40 entries in ${toNumber(tx.rows[0]?.n)} transactions`);
  t.equal((await verifyChain(h.db)).ok, true);
});

t.test('two instances on one database keep one unbroken chain', async (t) => {
  const other = await startHarness(t, { token, databaseUrl: h.databaseUrl });
  const before = await rowCount();
  const statuses = await Promise.all(
    Array.from({ length: 30 }, (_, i) =>
      hawkFetch({ method: 'GET', url: `${(i % 2 ? other : h).base}/keypair`, credential }).then((r) => r.status),
    ),
  );
  t.same([...new Set(statuses)], [200]);
  t.equal(await rowCount(), before + 30);
  const result = await verifyChain(h.db);
  t.equal(result.ok, true, JSON.stringify(result.problem));
  t.equal(result.checked, await rowCount());
});

t.test('retention removes old entries behind an anchor; the rest still verifies', async (t) => {
  const total = await rowCount();
  // A second instance whose clock runs 3 days ahead with 2-day retention: everything so far is old.
  const later = Date.now() + 3 * 86_400_000;
  const trimmer = await startHarness(t, { token, databaseUrl: h.databaseUrl, env: { AUDIT_RETENTION_DAYS: '2' }, clock: () => later });
  let anchor: { seq: unknown; removed_rows: unknown } | undefined;
  for (let i = 0; i < 100 && !anchor; i++) {
    anchor = (await h.db.query<{ seq: unknown; removed_rows: unknown }>('SELECT seq, removed_rows FROM audit_anchor')).rows[0];
    if (!anchor) await new Promise((r) => setTimeout(r, 50));
  }
  t.ok(anchor, 'an anchor was written');
  t.equal(toNumber(anchor?.removed_rows), total, 'every old entry was removed');
  let ev: { detail: { throughSeq: number }; actor: string }[] = [];
  for (let i = 0; i < 100 && ev.length === 0; i++) {
    ev = (await h.db.query<{ detail: { throughSeq: number }; actor: string }>("SELECT detail, actor FROM request_log WHERE event = 'audit.retention'")).rows;
    if (ev.length === 0) await new Promise((r) => setTimeout(r, 50));
  }
  t.equal(ev.length, 1, 'the removal is itself audited');
  t.equal(ev[0]?.detail.throughSeq, toNumber(anchor?.seq));
  t.equal(ev[0]?.actor, 'system');
  t.equal((await get('/keypair')).status, 200, 'logging continues after the anchor');

  const run = await verify(t);
  t.equal(run.code, 0, run.stdout);
  t.equal(run.verdict?.anchor?.seq, toNumber(anchor?.seq));
  t.ok((run.verdict?.checked ?? 0) >= 2, 'the retention event and the new request verify from the anchor');

  // The first entry after the anchor deleted: still named.
  const next = toNumber(anchor?.seq) + 1;
  const saved = await h.db.query<{ j: unknown }>('SELECT row_to_json(l) AS j FROM request_log l WHERE seq = $1', [next]);
  await h.db.query('DELETE FROM request_log WHERE seq = $1', [next]);
  const broken = await verify(t);
  t.equal(broken.code, 1);
  t.equal(broken.verdict?.problem?.kind, 'missing');
  t.equal(broken.verdict?.problem?.seq, next);
  await h.db.query('INSERT INTO request_log SELECT * FROM json_populate_record(NULL::request_log, $1::json)', [
    JSON.stringify(saved.rows[0]?.j),
  ]);

  // trimChain with nothing old enough does nothing.
  t.equal(await trimChain(h.db, new Date(0)), undefined);
  t.equal((await verifyChain(h.db)).ok, true);
});
