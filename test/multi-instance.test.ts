// Two built server processes on one Postgres database and one SoftHSM token directory, each with
// the default configuration (key pool on, KEY_POOL_SIZE=4), behave as one service: keypairs
// created alternately at each decrypt at the other within 5 s, answering only 200 or a 503 with
// Retry-After before that (issue 9 item 2: SoftHSM hides another process's new keys until a
// refresh), five rounds over; a keypair created through one decrypts through the other, a Hawk header used at
// one is a replay at the other, and a credential revoked in the shared database is refused by
// both within 5 s, and their request logs form one audit chain that the built `strongroom audit
// verify` proves unbroken. Both sit behind one public URL (as behind a balancer), so a header signed for
// the service is valid at either instance.
import { constants, publicEncrypt, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { createTestDatabase } from './helpers/database.js';
import { hawkFetch, send, type ClientCredential } from './helpers/hawk-client.js';
import { CLI_JS, SERVER_JS } from './helpers/paths.js';
import { baseEnv, spawnNode, startService, tempDir, tokenEnv, waitExit, writeSecretFile } from './helpers/process-util.js';
import { createTestToken } from './helpers/token.js';

const PREFIX = '/key-management/v1';
const PUBLIC = 'https://lkm.example.test';

const token = createTestToken();
const work = tempDir(t, 'multi-instance');
const adminToken = randomBytes(32).toString('base64url');
const { url, db } = await createTestDatabase(t);
const env = {
  ...baseEnv(),
  ...tokenEnv(token, writeSecretFile(work, 'pin', `${token.pin}\n`)),
  DATABASE_URL: url,
  ADMIN_TOKEN_FILE: writeSecretFile(work, 'admin', adminToken),
  PUBLIC_URL: PUBLIC,
  LOG_LEVEL: 'warn',
  // The service's default (startService turns the pool off unless told).
  KEY_POOL_SIZE: '4',
};
// One after the other: the first start creates the token's secrets key, the second finds it.
// The audit spool is local to each instance.
const a = await startService(t, SERVER_JS, { ...env, AUDIT_SPOOL_DIR: join(work, 'spool-a') });
const b = await startService(t, SERVER_JS, { ...env, AUDIT_SPOOL_DIR: join(work, 'spool-b') });
const at = (origin: string, path: string) => ({ url: `${origin}${PREFIX}${path}`, signUrl: `${PUBLIC}${PREFIX}${path}` });

const registered = await send('POST', `${a.origin}${PREFIX}/auth`, {
  json: { id: `genesys-${randomBytes(4).toString('hex')}` },
  headers: { authorization: `Bearer ${adminToken}` },
});
if (registered.status !== 200) throw new Error(`POST /auth answered ${registered.status}`);
const reg = registered.json as { id: string; authKey: string };
const credential: ClientCredential = { id: reg.id, key: reg.authKey, algorithm: 'sha256' };

async function decryptAt(origin: string, keypair: { id: string; publicKey: string }, cred = credential) {
  const plaintext = randomBytes(32);
  const key = { key: Buffer.from(keypair.publicKey, 'base64'), format: 'der' as const, type: 'pkcs1' as const };
  const body = publicEncrypt({ ...key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, plaintext);
  const res = await hawkFetch({
    method: 'POST',
    ...at(origin, '/decrypt'),
    credential: cred,
    json: { keypairId: keypair.id, body: body.toString('base64') },
  });
  return { res, ok: res.status === 200 && (res.json as { body?: string }).body === plaintext.toString('base64') };
}

t.test('a keypair created through A decrypts through B, and the other way round', async (t) => {
  const fromA = await hawkFetch({ method: 'POST', ...at(a.origin, '/keypair'), credential });
  t.equal(fromA.status, 200, 'created at A');
  const fromB = await hawkFetch({ method: 'POST', ...at(b.origin, '/keypair'), credential });
  t.equal(fromB.status, 200, 'created at B');
  const ka = fromA.json as { id: string; publicKey: string };
  const kb = fromB.json as { id: string; publicKey: string };
  t.ok((await decryptAt(b.origin, ka)).ok, 'A\'s keypair decrypts at B');
  t.ok((await decryptAt(a.origin, kb)).ok, 'B\'s keypair decrypts at A');
  t.ok((await decryptAt(a.origin, ka)).ok, 'and at its own instance');
  const listB = await hawkFetch({ method: 'GET', ...at(b.origin, '/keypair'), credential });
  t.same(
    (listB.json as Array<{ id: string }>).map((k) => k.id).sort(),
    [ka.id, kb.id].sort(),
    'B lists both',
  );
});

t.test('20 keypairs made alternately at A and B decrypt at the other within 5 s, 5 rounds over', async (t) => {
  const ROUNDS = 5;
  const PER_ROUND = 20;
  const instances = [a.origin, b.origin];
  const waits: number[] = [];
  const early: Record<string, number> = {};
  for (let round = 1; round <= ROUNDS; round += 1) {
    for (let i = 0; i < PER_ROUND; i += 1) {
      const maker = instances[i % 2] as string;
      const other = instances[(i + 1) % 2] as string;
      const made = await hawkFetch({ method: 'POST', ...at(maker, '/keypair'), credential });
      if (made.status !== 200) {
        t.fail(`round ${round}, keypair ${i + 1}: POST /keypair answered ${made.status} ${made.text}`);
        continue;
      }
      const keypair = made.json as { id: string; publicKey: string };
      const started = Date.now();
      for (;;) {
        const { res, ok } = await decryptAt(other, keypair);
        if (ok) break;
        const key = `${res.status} ${res.headers.get('strongroom-error-code')}`;
        early[key] = (early[key] ?? 0) + 1;
        if (res.status !== 503 || !res.headers.get('retry-after') || Date.now() - started > 5_000) {
          t.fail(`round ${round}, keypair ${i + 1}: ${key} after ${Date.now() - started} ms`);
          break;
        }
        await sleep(100);
      }
      waits.push(Date.now() - started);
    }
  }
  t.equal(waits.length, ROUNDS * PER_ROUND, `${waits.length} keypairs decrypted at the other instance`);
  t.ok(Math.max(...waits) <= 5_000, `slowest ${Math.max(...waits)} ms; answers before success: ${JSON.stringify(early)}`);
  const stats = await Promise.all(
    instances.map(async (origin) => {
      const res = await send('GET', `${origin}/admin/v1/runtime`, { headers: { authorization: `Bearer ${adminToken}` } });
      return (res.json as { keyStore: { tokenRefreshes: number; sessionsReplaced: number } }).keyStore;
    }),
  );
  t.comment(`token refreshes A/B: ${stats.map((s) => s.tokenRefreshes).join('/')}; sessions replaced: ${stats.map((s) => s.sessionsReplaced).join('/')}`);
  t.ok(a.proc.child.exitCode === null && b.proc.child.exitCode === null, 'both instances still run');
});

t.test('a Hawk header used at A is refused as a replay at B (and at A)', async (t) => {
  const first = await hawkFetch({ method: 'GET', ...at(a.origin, '/keypair'), credential });
  t.equal(first.status, 200, 'accepted at A');
  for (const [name, origin] of [['B', b.origin], ['A', a.origin]] as const) {
    const replay = await send('GET', `${origin}${PREFIX}/keypair`, { headers: { authorization: first.authorization } });
    t.equal(replay.status, 401, `replayed at ${name}: 401`);
    t.equal(replay.headers.get('strongroom-error-code'), 'HAWK_ERR_UNAUTHORIZED');
  }
  // Control: a fresh header from the same credential is accepted at B, so the refusal was the replay.
  t.equal((await hawkFetch({ method: 'GET', ...at(b.origin, '/keypair'), credential })).status, 200);
});

t.test('a credential revoked in the shared database is refused by both instances within 5 s', async (t) => {
  const other = await send('POST', `${b.origin}${PREFIX}/auth`, {
    json: { id: `revoked-${randomBytes(4).toString('hex')}` },
    headers: { authorization: `Bearer ${adminToken}` },
  });
  t.equal(other.status, 200);
  const o = other.json as { id: string; authKey: string };
  const victim: ClientCredential = { id: o.id, key: o.authKey, algorithm: 'sha256' };
  for (const origin of [a.origin, b.origin]) {
    t.equal((await hawkFetch({ method: 'GET', ...at(origin, '/keypair'), credential: victim })).status, 200, 'works before');
  }
  await db.query('UPDATE hawk_credential SET revoked_at = now() WHERE id = $1', [victim.id]);
  const revokedAt = Date.now();
  const refusedAfter: Record<string, number> = {};
  while (Object.keys(refusedAfter).length < 2 && Date.now() - revokedAt < 8_000) {
    for (const [name, origin] of [['A', a.origin], ['B', b.origin]] as const) {
      if (refusedAfter[name] !== undefined) continue;
      const res = await hawkFetch({ method: 'GET', ...at(origin, '/keypair'), credential: victim });
      if (res.status === 401 && res.headers.get('strongroom-error-code') === 'HAWK_ERR_UNAUTHORIZED') {
        refusedAfter[name] = Date.now() - revokedAt;
      }
    }
    await sleep(100);
  }
  for (const name of ['A', 'B']) {
    t.ok(refusedAfter[name] !== undefined && refusedAfter[name] <= 5_000, `${name} refuses it after ${refusedAfter[name]} ms`);
  }
  t.equal((await hawkFetch({ method: 'GET', ...at(a.origin, '/keypair'), credential })).status, 200, 'other credentials unaffected');
});

t.test('both instances are ready', async (t) => {
  for (const origin of [a.origin, b.origin]) {
    const res = await fetch(`${origin}${PREFIX}/ready`);
    t.equal(res.status, 200);
    t.same(await res.json(), { status: 'ready', checks: { database: 'ok', token: 'ok', canary: 'ok' } });
  }
});

t.test('the audit chain stays one unbroken chain across both instances', async (t) => {
  const before = Number((await db.query<{ n: string }>('SELECT count(*) AS n FROM request_log')).rows[0]?.n);
  // Interleaved and concurrent, so both instances append to the chain at the same time.
  const PER_INSTANCE = 20;
  const sent = await Promise.all(
    Array.from({ length: 2 * PER_INSTANCE }, (_, i) =>
      hawkFetch({ method: 'GET', ...at(i % 2 ? b.origin : a.origin, '/keypair'), credential, headers: { 'PureCloud-User-Id': `chain-${i}` } }),
    ),
  );
  t.same(sent.map((r) => r.status).filter((s) => s !== 200), [], 'every request served');
  const burst = await db.query<{ n: string }>("SELECT count(*) AS n FROM request_log WHERE user_id LIKE 'chain-%'");
  t.equal(Number(burst.rows[0]?.n), 2 * PER_INSTANCE, 'one entry per request, from both instances');

  const proc = spawnNode(t, CLI_JS, ['audit', 'verify', '--json'], {
    ...baseEnv(),
    ...tokenEnv(token, writeSecretFile(work, 'pin-cli', `${token.pin}\n`)),
    DATABASE_URL: url,
  });
  const { code } = await waitExit(proc, 60_000);
  t.equal(code, 0, `audit verify exits 0 (${proc.stderr().trim()})`);
  const verdict = JSON.parse(proc.stdout()) as { ok: boolean; checked: number; problem: unknown; head: { seq: number } | null };
  t.equal(verdict.ok, true, 'the chain verifies');
  t.equal(verdict.problem, null, 'no altered or missing entry');
  t.ok(verdict.checked >= before + 2 * PER_INSTANCE, `${verdict.checked} entries checked, at least the ${before + 2 * PER_INSTANCE} requests logged`);
  t.equal(verdict.head?.seq, verdict.checked, 'one chain: seq runs 1..n over both instances');
});
