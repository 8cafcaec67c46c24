// The key pool (issue 5 item 2): keys generated ahead in the token, handed out once by
// POST /keypair, invisible until then, shared by two instances on one database and one token,
// and still there after a restart. Real SoftHSM token, real Postgres.
import { constants, createPublicKey, publicEncrypt, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import type { Database } from '../src/db/database.js';
import { findKeyInconsistencies } from '../src/keys/reconcile.js';
import { hawkFetch, type ClientCredential } from './helpers/hawk-client.js';
import { startHarness, type Harness } from './helpers/harness.js';
import { createTestToken } from './helpers/token.js';

// Key generation is slow (0.3–0.8 s, more on a busy machine) and the refiller rests between keys.
t.setTimeout(240_000);
const POOL = 2;
const token = createTestToken();

async function poolIds(db: Database): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>("SELECT id FROM keypair WHERE state = 'pool' ORDER BY id");
  return rows.map((r) => r.id);
}

async function waitForPool(db: Database, atLeast: number, ms = 60_000): Promise<string[]> {
  const deadline = Date.now() + ms;
  for (;;) {
    const ids = await poolIds(db);
    if (ids.length >= atLeast) return ids;
    if (Date.now() > deadline) throw new Error(`the pool holds ${ids.length} keys after ${ms} ms, expected ${atLeast}`);
    await sleep(200);
  }
}

function oaep(publicKeyB64: string, plaintext: Buffer): string {
  const key = createPublicKey({ key: Buffer.from(publicKeyB64, 'base64'), format: 'der', type: 'pkcs1' });
  return publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, plaintext).toString('base64');
}

const call = (h: Harness, credential: ClientCredential, method: string, path: string, json?: unknown) =>
  hawkFetch({ method, url: `${h.base}${path}`, credential, ...(json !== undefined && { json }) });

const a = await startHarness(t, { token, env: { KEY_POOL_SIZE: String(POOL) } });
const credential = await a.register('pool-client');

t.test('the pool fills in the background; its keys are in the token and nobody sees them', async (t) => {
  const ids = await waitForPool(a.db, POOL);
  t.ok(ids.length >= POOL, `${ids.length} pool keys`);
  const inToken = new Set(await a.app.keyStore.listKeyPairIds());
  t.same(ids.filter((id) => !inToken.has(id)), [], 'every pool key is in the token');

  const list = await call(a, credential, 'GET', '/keypair');
  t.equal(list.status, 200);
  t.same(list.json, [], 'GET /keypair lists no pool key');
  const one = await call(a, credential, 'GET', `/keypair/${ids[0]}`);
  t.equal(one.status, 404);
  t.equal(one.headers.get('strongroom-error-code'), 'KEY_ERR_KEYPAIR_NOT_FOUND');
  const publicKey = (await a.db.query<{ public_key: Buffer }>('SELECT public_key FROM keypair WHERE id = $1', [ids[0]])).rows[0]?.public_key;
  const dec = await call(a, credential, 'POST', '/decrypt', { keypairId: ids[0], body: oaep(publicKey?.toString('base64') ?? '', randomBytes(16)) });
  t.equal(dec.status, 400, 'a pool key does not decrypt for anyone');
  t.equal(dec.headers.get('strongroom-error-code'), 'KEY_ERR_NOT_FOUND');
});

t.test('POST /keypair hands out a pool key, which then works like any keypair', async (t) => {
  const before = new Set(await poolIds(a.db));
  const started = performance.now();
  const res = await call(a, credential, 'POST', '/keypair');
  const ms = performance.now() - started;
  t.equal(res.status, 200, res.text);
  const keypair = res.json as { id: string; publicKey: string; dateCreated: number };
  t.ok(before.has(keypair.id), 'the keypair came from the pool');
  t.comment(`POST /keypair from the pool: ${ms.toFixed(1)} ms`);
  t.ok(Math.abs(keypair.dateCreated - Date.now()) < 5_000, 'dateCreated is when it was handed out');
  const row = (await a.db.query<{ state: string; owner: string }>('SELECT state, owner FROM keypair WHERE id = $1', [keypair.id])).rows[0];
  t.same(row, { state: 'enabled', owner: 'pool-client' });

  const list = await call(a, credential, 'GET', '/keypair');
  t.same((list.json as { id: string }[]).map((k) => k.id), [keypair.id], 'listed once handed out');
  const plaintext = randomBytes(32);
  const dec = await call(a, credential, 'POST', '/decrypt', { keypairId: keypair.id, body: oaep(keypair.publicKey, plaintext) });
  t.equal(dec.status, 200, dec.text);
  t.equal((dec.json as { body: string }).body, plaintext.toString('base64'));
  t.ok((await poolIds(a.db)).length < POOL + 2, 'the pool is not overfilled by one instance');
});

t.test('two instances on one database and one token never hand out a key twice', async (t) => {
  const b = await startHarness(t, { token, databaseUrl: a.databaseUrl, env: { KEY_POOL_SIZE: String(POOL) } });
  const initial = new Set(await waitForPool(a.db, POOL));
  const calls = Array.from({ length: 8 }, (_, i) => call(i % 2 === 0 ? a : b, credential, 'POST', '/keypair'));
  const results = await Promise.all(calls);
  t.same(results.map((r) => r.status), Array(8).fill(200), 'every POST /keypair succeeded');
  const ids = results.map((r) => (r.json as { id: string }).id);
  t.equal(new Set(ids).size, ids.length, 'eight distinct keypairs');
  t.same([...initial].filter((id) => !ids.includes(id)), [], 'every key that was in the pool was handed out, once');
  const { rows } = await a.db.query<{ id: string; state: string }>(
    `SELECT id, state FROM keypair WHERE id IN (${ids.map((_, i) => `$${i + 1}`).join(', ')})`,
    ids,
  );
  t.same(rows.map((r) => r.state), Array(8).fill('enabled'));
  for (const [i, res] of results.entries()) {
    const k = res.json as { id: string; publicKey: string };
    const plaintext = randomBytes(16);
    const other = i % 2 === 0 ? b : a;
    const dec = await call(other, credential, 'POST', '/decrypt', { keypairId: k.id, body: oaep(k.publicKey, plaintext) });
    t.equal(dec.status, 200, `${k.id} decrypts at the other instance`);
  }
  await b.app.close();
});

t.test('the pool survives a restart; closing waits for the key being generated', async (t) => {
  await waitForPool(a.db, POOL);
  await a.app.close();
  const { rows } = await a.db.query<{ n: number }>("SELECT count(*)::int AS n FROM keypair WHERE state = 'generating'");
  t.equal(rows[0]?.n, 0, 'no generation left half done by a clean close');
  const kept = new Set(await poolIds(a.db));
  t.ok(kept.size >= POOL, 'the pool keys are still recorded');

  const c = await startHarness(t, { token, databaseUrl: a.databaseUrl, env: { KEY_POOL_SIZE: String(POOL) } });
  const res = await call(c, credential, 'POST', '/keypair');
  t.equal(res.status, 200, res.text);
  t.ok(kept.has((res.json as { id: string }).id), 'the restarted service hands out a key generated before the restart');
  t.same(await findKeyInconsistencies(c.db, c.app.keyStore), { rowsWithoutKey: [], keysWithoutRow: [] }, 'database and token agree');
  await c.app.close();
});

t.test('KEY_POOL_SIZE=0: no pool, POST /keypair generates on the spot', async (t) => {
  const d = await startHarness(t, { token, databaseUrl: a.databaseUrl, env: { KEY_POOL_SIZE: '0' } });
  const before = new Set(await poolIds(d.db));
  const res = await call(d, credential, 'POST', '/keypair');
  t.equal(res.status, 200, res.text);
  t.notOk(before.has((res.json as { id: string }).id), 'a fresh key, not a pool key');
  t.same(await poolIds(d.db), [...before].sort(), 'the pool was left alone');
});
