// A database outage of more than 60 s under a running service, through a TCP relay to the real
// Postgres that the test cuts. Decrypts with a credential and a keypair the instance already
// knows keep succeeding the whole time (cached credential, key handle and length; nonces checked
// by this instance alone); key creation, registration and listing answer 503 with Retry-After;
// afterwards everything works again without a restart, and the outage's nonces reach Postgres.
import { constants, publicEncrypt, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import t from 'tap';
import { createTestDatabase, serverUrl } from './helpers/database.js';
import { startHarness } from './helpers/harness.js';
import { tempDir } from './helpers/process-util.js';
import { hawkFetch, send, type Response } from './helpers/hawk-client.js';
import { Relay } from './helpers/tcp-relay.js';

const OUTAGE_MS = 62_000;
// The outage alone is longer than tap's 30 s default.
t.setTimeout(150_000);

const { url, db } = await createTestDatabase(t);
const target = new URL(serverUrl());
const relay = new Relay(target.hostname, Number(target.port || 5432));
await relay.start();
t.teardown(() => relay.cut());

// A spool of its own: audit entries of this outage must not land in another test's database.
const h = await startHarness(t, { databaseUrl: relay.via(url), env: { AUDIT_SPOOL_DIR: join(tempDir(t, 'outage'), 'spool') } });
const credential = await h.register();
const created = await hawkFetch({ method: 'POST', url: `${h.base}/keypair`, credential });
if (created.status !== 200) throw new Error(`POST /keypair answered ${created.status}`);
const keypair = created.json as { id: string; publicKey: string };
const publicKey = { key: Buffer.from(keypair.publicKey, 'base64'), format: 'der' as const, type: 'pkcs1' as const };

async function decrypt(nonce?: string): Promise<{ res: Response; ok: boolean }> {
  const plaintext = randomBytes(32);
  const body = publicEncrypt({ ...publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, plaintext);
  const res = await hawkFetch({
    method: 'POST',
    url: `${h.base}/decrypt`,
    credential,
    json: { keypairId: keypair.id, body: body.toString('base64') },
    ...(nonce !== undefined && { nonce }),
  });
  return { res, ok: res.status === 200 && (res.json as { body?: string }).body === plaintext.toString('base64') };
}

function assertDbUnavailable(t: Tap, res: Response, what: string): void {
  t.equal(res.status, 503, `${what}: 503`);
  t.equal(res.headers.get('strongroom-error-code'), 'DB_ERR_UNAVAILABLE', `${what}: DB_ERR_UNAVAILABLE`);
  t.equal(res.headers.get('retry-after'), '5', `${what}: Retry-After`);
  t.same(res.json, { message: 'The database is temporarily unavailable', status: 503 }, `${what}: no internals`);
}
type Tap = Pick<typeof t, 'equal' | 'same'>;

t.test('warm: the instance knows the credential and the keypair', async (t) => {
  t.ok((await decrypt()).ok);
});

t.test(`database cut for ${OUTAGE_MS / 1000} s: every decrypt succeeds; creation and admin calls 503`, { timeout: 120_000 }, async (t) => {
  await relay.cut();
  const start = Date.now();
  let decrypts = 0;
  const failures: string[] = [];
  const outageNonce = `outage-${randomBytes(4).toString('hex')}`;
  const first = await decrypt(outageNonce);
  t.ok(first.ok, 'a decrypt right after the cut succeeds');

  // Two clients decrypting back to back for the whole outage.
  const clients = [0, 1].map(async () => {
    while (Date.now() - start < OUTAGE_MS) {
      const { res, ok } = await decrypt();
      decrypts += 1;
      if (!ok) failures.push(`${res.status} ${res.headers.get('strongroom-error-code')}`);
    }
  });
  // Meanwhile, every few seconds, the calls that need the database.
  const probes: Array<{ what: string; res: Response }> = [];
  const prober = (async () => {
    while (Date.now() - start < OUTAGE_MS - 5_000) {
      probes.push({ what: 'POST /keypair', res: await hawkFetch({ method: 'POST', url: `${h.base}/keypair`, credential }) });
      probes.push({ what: 'GET /keypair', res: await hawkFetch({ method: 'GET', url: `${h.base}/keypair`, credential }) });
      probes.push({
        what: 'POST /auth',
        res: await send('POST', `${h.base}/auth`, {
          json: { id: `during-${randomBytes(4).toString('hex')}` },
          headers: { authorization: `Bearer ${h.adminToken}` },
        }),
      });
      await sleep(10_000);
    }
  })();
  await Promise.all([...clients, prober]);
  t.ok(Date.now() - start >= 60_000, `the outage lasted ${Math.round((Date.now() - start) / 1000)} s`);
  t.same(failures, [], `all ${decrypts} decrypts during the outage succeeded`);
  t.ok(decrypts > 100, `${decrypts} decrypts`);
  t.ok(probes.length >= 9, `${probes.length} calls that need the database`);
  for (const { what, res } of probes) assertDbUnavailable(t, res, what);

  const replay = await hawkFetch({ method: 'POST', url: `${h.base}/decrypt`, credential, nonce: outageNonce, json: {} });
  t.equal(replay.status, 401, 'a nonce used during the outage is refused as a replay by this instance');
  t.equal(replay.headers.get('strongroom-error-code'), 'HAWK_ERR_UNAUTHORIZED');
  const stranger = await hawkFetch({
    method: 'POST',
    url: `${h.base}/decrypt`,
    credential: { ...credential, id: 'never-seen-here' },
    json: {},
  });
  assertDbUnavailable(t, stranger, 'a credential this instance never saw');

  await relay.start();
});

t.test('database back: everything works again without a restart', async (t) => {
  const decrypted = await decrypt();
  t.ok(decrypted.ok, 'decrypt');
  const made = await hawkFetch({ method: 'POST', url: `${h.base}/keypair`, credential });
  t.equal(made.status, 200, 'POST /keypair');
  const listed = await hawkFetch({ method: 'GET', url: `${h.base}/keypair`, credential });
  t.equal(listed.status, 200, 'GET /keypair');
  t.equal((listed.json as unknown[]).length, 2, 'both keypairs listed; none was half-created during the outage');
  const other = await h.register();
  t.ok(other.key.length > 0, 'POST /auth');
  // The first successful claim after the outage writes the outage's nonces to Postgres.
  await sleep(500);
  const { rows } = await db.query<{ n: string }>('SELECT count(*) AS n FROM hawk_nonce WHERE hawk_id = $1 AND nonce LIKE $2', [
    credential.id,
    'outage-%',
  ]);
  t.equal(Number(rows[0]?.n), 1, 'the nonce accepted during the outage is now in the shared store');
  const ready = await fetch(`${h.base}/ready`);
  t.equal(ready.status, 200, '/ready');
});
