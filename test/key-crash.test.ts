// Crash consistency (issue 4 item 2): the built service is SIGKILLed at random moments while
// keys are generated (POST /keypair in a loop and the key pool refilling), many times over.
// After a restart every keypair ever returned is listed and decrypts, the token holds the key of
// every row, and no key in the token lacks a row. Real processes, real SoftHSM, real Postgres.
import { constants, createPublicKey, publicEncrypt, randomBytes, randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { encodeRsaPublicKey, openPkcs11KeyStore } from '../hsm/index.js';
import { KeypairRepository } from '../src/db/keypairs.js';
import { GENERATING_GRACE_MS } from '../src/keys/generator.js';
import { findKeyInconsistencies, reconcileKeys } from '../src/keys/reconcile.js';
import { createTestDatabase } from './helpers/database.js';
import { hawkFetch, send, type ClientCredential } from './helpers/hawk-client.js';
import { SERVER_JS } from './helpers/paths.js';
import { baseEnv, startService, tempDir, tokenEnv, waitExit, writeSecretFile, type Proc } from './helpers/process-util.js';
import { createTestToken } from './helpers/token.js';

t.setTimeout(180_000);
/** Wall-clock budget for the kill loop (the issue asks for many iterations; the file stays < 90 s). */
const LOOP_MS = 40_000;

const token = createTestToken();
// A second token for the in-process checks (SoftHSM sees only tokens present at C_Initialize).
const token2 = createTestToken();
const work = tempDir(t, 'crash');
const adminToken = randomBytes(32).toString('base64url');
const env = {
  ...baseEnv(),
  ...tokenEnv(token, writeSecretFile(work, 'pin', token.pin)),
  ADMIN_TOKEN_FILE: writeSecretFile(work, 'admin', adminToken),
  DATABASE_URL: (await createTestDatabase(t)).url,
  // The service's default (startService turns the pool off unless told).
  KEY_POOL_SIZE: '4',
  LOG_LEVEL: 'info',
};

type Keypair = { id: string; publicKey: string };

function logLines(proc: Proc): { msg?: string; keypairIds?: string[] }[] {
  return proc
    .stdout()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg?: string; keypairIds?: string[] });
}

t.test('SIGKILL at random points while keys are generated never loses or half-makes a key', async (t) => {
  let credential: ClientCredential | undefined;
  const returned = new Map<string, Keypair>();
  let completed = 0;
  let removed = 0;
  let iterations = 0;
  // A second instance with the default key pool runs through every kill: it reconciles, refills
  // and searches the token beside the instance that dies (issue 9: visibility, reconciliation).
  const peer = await startService(t, SERVER_JS, { ...env, AUDIT_SPOOL_DIR: `${work}/spool-peer` });
  const deadline = Date.now() + LOOP_MS;

  while (Date.now() < deadline) {
    iterations += 1;
    const { proc, origin } = await startService(t, SERVER_JS, env);
    for (const line of logLines(proc)) {
      if (line.msg?.startsWith('interrupted key generations completed')) completed += line.keypairIds?.length ?? 0;
      if (line.msg?.startsWith('interrupted key generations without a key')) removed += line.keypairIds?.length ?? 0;
    }
    if (!credential) {
      const res = await send('POST', `${origin}/key-management/v1/auth`, {
        json: { id: 'crash-client' },
        headers: { authorization: `Bearer ${adminToken}` },
      });
      t.equal(res.status, 200, res.text);
      const body = res.json as { id: string; authKey: string };
      credential = { id: body.id, key: body.authKey, algorithm: 'sha256' };
    }
    const cred = credential;
    let killed = false;
    // Two clients creating keypairs back to back, beside the pool's own refilling.
    const client = async () => {
      while (!killed) {
        try {
          const res = await hawkFetch({ method: 'POST', url: `${origin}/key-management/v1/keypair`, credential: cred });
          if (res.status === 200) {
            const k = res.json as Keypair;
            returned.set(k.id, k);
          }
        } catch {
          return; // the connection died with the process
        }
      }
    };
    const clients = [client(), client()];
    // Mostly early kills (inside a generation), every third one later (some keys finish).
    await sleep(iterations % 3 === 0 ? randomInt(1_500, 6_000) : randomInt(50, 2_000));
    proc.child.kill('SIGKILL');
    killed = true;
    await waitExit(proc, 10_000);
    await Promise.all(clients);
  }
  t.ok(iterations >= 8, `${iterations} kills`);
  t.ok(returned.size > 0, 'some keypairs were created between the kills');
  t.comment(`${iterations} kills; ${returned.size} keypairs returned; at restarts ${completed} interrupted generations completed, ${removed} removed`);

  // The last start settles what the last kill left.
  const { proc, origin } = await startService(t, SERVER_JS, env);
  if (!credential) throw new Error('no credential');
  const list = await hawkFetch({ method: 'GET', url: `${origin}/key-management/v1/keypair`, credential });
  t.equal(list.status, 200);
  const listed = list.json as Keypair[];
  const listedIds = new Set(listed.map((k) => k.id));
  t.same([...returned.keys()].filter((id) => !listedIds.has(id)), [], 'every keypair ever returned is listed');
  t.ok(listed.length >= returned.size, `${listed.length} listed`);

  let decrypted = 0;
  for (const k of listed) {
    const key = createPublicKey({ key: Buffer.from(k.publicKey, 'base64'), format: 'der', type: 'pkcs1' });
    const plaintext = randomBytes(32);
    const body = publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, plaintext).toString('base64');
    const res = await hawkFetch({ method: 'POST', url: `${origin}/key-management/v1/decrypt`, credential, json: { keypairId: k.id, body } });
    if (res.status === 200 && (res.json as { body: string }).body === plaintext.toString('base64')) decrypted += 1;
    else t.fail(`${k.id} does not decrypt: ${res.status} ${res.text}`);
  }
  t.equal(decrypted, listed.length, 'every listed keypair decrypts');

  proc.child.kill('SIGTERM');
  t.equal((await waitExit(proc, 20_000)).code, 0, 'clean shutdown');
  peer.proc.child.kill('SIGTERM');
  t.equal((await waitExit(peer.proc, 20_000)).code, 0, 'the second instance never died and shuts down cleanly');

  const created = await createTestDatabaseHandle(env.DATABASE_URL);
  t.teardown(() => created.close());
  const keyStore = await openPkcs11KeyStore({ modulePath: token.modulePath, tokenLabel: token.label, pin: token.pin, sessions: 1 });
  t.teardown(() => keyStore.close());
  t.same(await findKeyInconsistencies(created, keyStore), { rowsWithoutKey: [], keysWithoutRow: [] }, 'database and token agree');
  // What the kills left in `generating` is settled once past the grace period, by the token's word.
  const log = { info: () => undefined, error: () => undefined };
  const settled = await reconcileKeys(created, keyStore, { log, clock: () => Date.now() + GENERATING_GRACE_MS + 60_000 });
  t.ok(settled.removed.length + settled.completed.length + removed + completed > 0, `kills landed inside generations: ${settled.removed.length} removed, ${settled.completed.length} completed after the grace period`);
  t.same([settled.rowsWithoutKey, settled.keysWithoutRow], [[], []], 'no lost row, no orphan key');
  const { rows } = await created.query<{ state: string; n: number }>('SELECT state, count(*)::int AS n FROM keypair GROUP BY state ORDER BY state');
  t.notOk(rows.some((r) => r.state === 'generating'), `no generation left unsettled (${JSON.stringify(rows)})`);
});

t.test('each kill point, made on purpose: reconciliation at start', async (t) => {
  const { db } = await createTestDatabase(t);
  const keyStore = await openPkcs11KeyStore({ modulePath: token2.modulePath, tokenLabel: token2.label, pin: token2.pin, sessions: 1 });
  t.teardown(() => keyStore.close());
  const repo = new KeypairRepository(db);
  const logged: string[] = [];
  const log = { info: (_o: object, msg: string) => logged.push(msg), error: (_o: object, msg: string) => logged.push(msg) };
  const id = () => crypto.randomUUID();

  // Killed before the token generated: a generating row, no key.
  const before = id();
  await repo.insertGenerating(before, new Date());
  // Killed after the token generated, before the row was completed.
  const after = id();
  await repo.insertGenerating(after, new Date());
  const pub = await keyStore.generateRsaKeyPair(after, 3072);
  // An import killed after the key entered the token: its id and original date must survive.
  const imported = id();
  const legacyDate = new Date(Date.UTC(2019, 4, 6, 7, 8, 9));
  await repo.insertGenerating(imported, legacyDate, 'imported', 'legacy-owner');
  await keyStore.generateRsaKeyPair(imported, 3072);
  // A key with no row at all (e.g. an import interrupted elsewhere).
  const stray = id();
  await keyStore.generateRsaKeyPair(stray, 3072);

  // Rows younger than the grace period may be live generations elsewhere: look from later on.
  const later = () => Date.now() + GENERATING_GRACE_MS + 60_000;
  const young = await reconcileKeys(db, keyStore, { log });
  t.same(young.removed, [], 'young generating rows are left alone (another instance may be generating them)');
  // An import's intent row carries the key's original date, so it is never young.
  t.same(young.completed, [imported], 'only the import (dated 2019) is settled at once');
  const first = await reconcileKeys(db, keyStore, { log, clock: later });
  t.same(first.removed, [before], 'the generation that never reached the token is removed');
  t.same(first.completed, [after], 'the generation the token finished is completed');
  t.match(await repo.find(imported), { state: 'enabled', origin: 'imported', owner: 'legacy-owner', dateCreated: legacyDate },
    'an interrupted import becomes its keypair, with its id, owner and date');
  t.same(first.keysWithoutRow, [stray], 'the key without a row is reported');
  t.same(first.rowsWithoutKey, []);
  const done = await repo.find(after);
  t.equal(done?.state, 'pool', 'nobody was given it: it joins the pool');
  t.ok(done?.publicKey.equals(encodeRsaPublicKey(pub)), 'with the public key the token holds');
  t.ok(logged.some((m) => /never reused/.test(m)), 'the stray key is logged');

  const second = await reconcileKeys(db, keyStore, { log, clock: later });
  t.same(second.keysWithoutRow, [stray], 'the stray key is kept (reported again, never deleted)');
  t.ok(await keyStore.getRsaPublicKey(stray), 'still in the token');
  t.same(await repo.takeFromPool('someone', new Date()).then((r) => r?.id), after, 'the completed key is handed out');
  t.equal(await repo.takeFromPool('someone', new Date()), undefined, 'and the stray key never is');
  await keyStore.deleteKeyPair(stray);
});

async function createTestDatabaseHandle(url: string) {
  const { openPostgres } = await import('../src/db/postgres.js');
  return openPostgres({ url, poolSize: 2 });
}
