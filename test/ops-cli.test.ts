// Operator commands of the BUILT CLI as real processes against a real token, a real Postgres and
// a running service: `auth list|revoke|rotate` (the service refuses a revoked or rotated key within
// seconds), `encrypt-secret` and CRYPT: configuration values, and `doctor` (healthy, missing
// token, a key dropped from the token, certificates that expire soon or already did).
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import pkcs11js from 'pkcs11js';
import t from 'tap';
import { createTestDatabase } from './helpers/database.js';
import { hawkFetch, send, type ClientCredential } from './helpers/hawk-client.js';
import { withTokenSession } from './helpers/keystore-util.js';
import { secretCheckedCli } from './helpers/cli-run.js';
import { makeCertificateValidity } from './helpers/ops-util.js';
import { SERVER_JS } from './helpers/paths.js';
import { baseEnv, spawnNode, startService, tempDir, tokenEnv, waitExit, writeSecretFile } from './helpers/process-util.js';
import { createTestToken } from './helpers/token.js';

const PREFIX = '/key-management/v1';
const token = createTestToken();
const work = tempDir(t, 'ops');
const pinFile = writeSecretFile(work, 'pin', `${token.pin}\n`);
const adminToken = randomBytes(32).toString('base64url');
const db = await createTestDatabase(t);
const env = { ...baseEnv(), ...tokenEnv(token, pinFile), DATABASE_URL: db.url, KEY_POOL_SIZE: '0', LOG_LEVEL: 'warn' };
const secrets: string[] = [token.pin, token.soPin, adminToken];
/** The built CLI; every run is checked for the secrets above (keys printed later join them). */
const cli = secretCheckedCli(secrets, env);

/** Poll until `fn` answers `status` (the service caches credentials for 2 s). */
async function eventually(fn: () => Promise<number>, status: number, ms = 6_000): Promise<{ status: number; after: number }> {
  const start = Date.now();
  let last = 0;
  while (Date.now() - start < ms) {
    last = await fn();
    if (last === status) return { status: last, after: Date.now() - start };
    await sleep(200);
  }
  return { status: last, after: Date.now() - start };
}

const service = await startService(t, SERVER_JS, { ...env, ADMIN_TOKEN: adminToken });
const base = `${service.origin}${PREFIX}`;
const get = (credential: ClientCredential) => hawkFetch({ method: 'GET', url: `${base}/keypair`, credential }).then((r) => r.status);

t.test('auth list shows credentials without their keys', async (t) => {
  const reg = await cli(t, ['auth', 'register', 'ops-list-1']);
  t.equal(reg.code, 0, reg.stderr);
  const key = (JSON.parse(reg.stdout) as { authKey: string }).authKey;
  secrets.push(key);
  const json = await cli(t, ['auth', 'list', '--json']);
  t.equal(json.code, 0, json.stderr);
  const rows = JSON.parse(json.stdout) as Array<Record<string, unknown>>;
  const row = rows.find((r) => r.id === 'ops-list-1');
  t.ok(row, 'listed');
  t.same(Object.keys(row ?? {}).sort(), ['algorithm', 'createdAt', 'id', 'revokedAt']);
  t.equal(row?.revokedAt, null);
  t.equal(row?.algorithm, 'sha256');
  t.ok(Math.abs(Date.parse(row?.createdAt as string) - Date.now()) < 60_000, 'created just now');
  const table = await cli(t, ['auth', 'list']);
  t.equal(table.code, 0);
  t.match(table.stdout, /^ID\s+ALGORITHM\s+CREATED\s+REVOKED\n/);
  t.match(table.stdout, /ops-list-1\s+sha256\s+\d{4}-\d\d-\d\dT[\d:.]+Z\s+-\n/);
});

t.test('auth rotate: new key printed once, the running service refuses the old one within seconds', async (t) => {
  const reg = await cli(t, ['auth', 'register', 'ops-rotate-1']);
  const old: ClientCredential = { id: 'ops-rotate-1', key: (JSON.parse(reg.stdout) as { authKey: string }).authKey, algorithm: 'sha256' };
  secrets.push(old.key);
  t.equal(await get(old), 200, 'the old key works before rotation');

  const noYes = await cli(t, ['auth', 'rotate', 'ops-rotate-1']);
  t.equal(noYes.code, 2, 'without a terminal and without --yes it refuses');
  t.match(noYes.stderr, /pass --yes/);
  t.equal(await get(old), 200, 'nothing changed');

  const rot = await cli(t, ['auth', 'rotate', 'ops-rotate-1', '--yes']);
  t.equal(rot.code, 0, rot.stderr);
  const body = JSON.parse(rot.stdout) as { id: string; authKey: string; algorithm: 'sha256' };
  t.same(Object.keys(body).sort(), ['algorithm', 'authKey', 'id']);
  t.equal(body.id, 'ops-rotate-1');
  t.not(body.authKey, old.key);
  secrets.push(body.authKey);
  const fresh: ClientCredential = { id: body.id, key: body.authKey, algorithm: body.algorithm };
  const refused = await eventually(() => get(old), 401);
  t.equal(refused.status, 401, `old key refused after ${refused.after} ms`);
  t.ok(refused.after < 4_000, 'within the 2 s cache (plus polling)');
  t.equal(await get(fresh), 200, 'the new key works');

  const unknown = await cli(t, ['auth', 'rotate', 'ops-nobody-1', '--yes']);
  t.equal(unknown.code, 1);
  t.match(unknown.stderr, /no credential "ops-nobody-1"/);
});

t.test('auth revoke: confirmation, then the running service refuses it within seconds', async (t) => {
  const reg = await cli(t, ['auth', 'register', 'ops-revoke-1']);
  const cred: ClientCredential = { id: 'ops-revoke-1', key: (JSON.parse(reg.stdout) as { authKey: string }).authKey, algorithm: 'sha256' };
  secrets.push(cred.key);
  t.equal(await get(cred), 200);
  const noYes = await cli(t, ['auth', 'revoke', 'ops-revoke-1']);
  t.equal(noYes.code, 2);
  t.equal(await get(cred), 200, 'not revoked without confirmation');

  const r = await cli(t, ['auth', 'revoke', 'ops-revoke-1', '--yes', '--json']);
  t.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { id: string; revoked: boolean; revokedAt: string; alreadyRevoked: boolean };
  t.equal(out.id, 'ops-revoke-1');
  t.equal(out.alreadyRevoked, false);
  const refused = await eventually(() => get(cred), 401);
  t.equal(refused.status, 401, `refused after ${refused.after} ms`);
  t.ok(refused.after < 4_000);

  const list = JSON.parse((await cli(t, ['auth', 'list', '--json'])).stdout) as Array<{ id: string; revokedAt: string | null }>;
  t.equal(list.find((x) => x.id === 'ops-revoke-1')?.revokedAt, out.revokedAt, 'auth list shows the revocation');
  const again = await cli(t, ['auth', 'revoke', 'ops-revoke-1', '--yes']);
  t.equal(again.code, 0);
  t.match(again.stderr, /already revoked/);
  const rotateRevoked = await cli(t, ['auth', 'rotate', 'ops-revoke-1', '--yes']);
  t.equal(rotateRevoked.code, 1, 'a revoked credential cannot be rotated back to life');
  t.equal(rotateRevoked.stdout, '');
  const { rows } = await db.db.query<{ event: string }>("SELECT 1 FROM hawk_credential WHERE id = 'ops-revoke-1' AND revoked_at IS NOT NULL");
  t.equal(rows.length, 1, 'revoked_at is set in the database');
});

t.test('encrypt-secret and CRYPT: values in the configuration', async (t) => {
  const enc = await cli(t, ['encrypt-secret'], env, `${adminToken}\n`);
  t.equal(enc.code, 0, enc.stderr);
  t.match(enc.stdout, /^CRYPT:[A-Za-z0-9_-]+\n$/);
  const crypt = enc.stdout.trim();
  const again = await cli(t, ['encrypt-secret'], env, adminToken);
  t.not(again.stdout.trim(), crypt, 'a fresh IV each time');

  const onArgv = await cli(t, ['encrypt-secret', 'hunter2-on-argv']);
  t.equal(onArgv.code, 2, 'a secret on the command line is refused');
  t.notMatch(onArgv.stderr, /hunter2-on-argv/, 'and not echoed');
  const empty = await cli(t, ['encrypt-secret'], env, '');
  t.equal(empty.code, 2);

  const svc = await startService(t, SERVER_JS, { ...env, ADMIN_TOKEN: crypt });
  const res = await send('POST', `${svc.origin}${PREFIX}/auth`, { json: { id: 'ops-crypt-1' }, headers: { authorization: `Bearer ${adminToken}` } });
  t.equal(res.status, 200, `the service decrypted ADMIN_TOKEN: ${res.text}`);
  secrets.push((res.json as { authKey: string }).authKey);
  const wrong = await send('POST', `${svc.origin}${PREFIX}/auth`, { json: { id: 'ops-crypt-2' }, headers: { authorization: `Bearer ${crypt}` } });
  t.equal(wrong.status, 401, 'the CRYPT: text itself is not the token');
  t.equal(wrong.headers.get('strongroom-error-code'), 'ADMIN_ERR_UNAUTHORIZED');
  svc.proc.child.kill('SIGTERM');
  await waitExit(svc.proc, 10_000);

  const dbCrypt = (await cli(t, ['encrypt-secret'], env, db.url)).stdout.trim();
  const viaCrypt = await cli(t, ['auth', 'list', '--json'], { ...env, DATABASE_URL: dbCrypt });
  t.equal(viaCrypt.code, 0, `DATABASE_URL as CRYPT: works for the CLI: ${viaCrypt.stderr}`);

  // Flip one character in the middle of the sealed blob.
  const i = 20;
  const tampered = `${crypt.slice(0, i)}${crypt[i] === 'A' ? 'B' : 'A'}${crypt.slice(i + 1)}`;
  const proc = spawnNode(t, SERVER_JS, [], { ...env, ADMIN_TOKEN: tampered, PORT: '0' });
  const exit = await waitExit(proc, 30_000);
  t.equal(exit.code, 2, 'the service refuses to start: configuration error');
  t.match(proc.stderr(), /ADMIN_TOKEN: the CRYPT: value does not decrypt/);
  t.notOk(proc.output().includes(tampered) || proc.output().includes(adminToken), 'neither the value nor the secret is printed');
  const cliTampered = await cli(t, ['auth', 'list'], { ...env, ADMIN_TOKEN: tampered });
  t.equal(cliTampered.code, 2);
  t.match(cliTampered.stderr, /ADMIN_TOKEN: the CRYPT: value/);
  t.notOk(cliTampered.stderr.includes(tampered));
  const pinCrypt = await cli(t, ['auth', 'list'], { ...env, PKCS11_PIN_FILE: '', PKCS11_PIN: crypt });
  t.equal(pinCrypt.code, 2);
  t.match(pinCrypt.stderr, /PKCS11_PIN: cannot be a CRYPT: value/);
});

interface DoctorOut {
  ok: boolean;
  checks: { check: string; ok: boolean; detail: string }[];
}

t.test('doctor', async (t) => {
  const healthy = await cli(t, ['doctor']);
  t.equal(healthy.code, 0, healthy.stdout + healthy.stderr);
  const lines = healthy.stdout.trim().split('\n');
  t.same(lines.map((l) => l.split(/\s+/)[1]), ['config', 'module', 'token', 'mechanisms', 'custody', 'database', 'tls', 'keys'], 'one line per check');
  t.ok(lines.every((l) => l.startsWith('ok ')), 'all pass');

  const good = makeCertificateValidity(work, 'good', new Date(Date.now() - 86_400_000), new Date(Date.now() + 400 * 86_400_000));
  const withTls = await cli(t, ['doctor', '--json'], { ...env, TLS_CERT: good.certPath, TLS_KEY: good.keyPath });
  t.equal(withTls.code, 0, withTls.stdout);
  t.match((JSON.parse(withTls.stdout) as DoctorOut).checks.find((c) => c.check === 'tls')?.detail, /valid until/);

  const soon = makeCertificateValidity(work, 'soon', new Date(Date.now() - 86_400_000), new Date(Date.now() + 10 * 86_400_000));
  const expiring = await cli(t, ['doctor', '--json'], { ...env, TLS_CERT: soon.certPath, TLS_KEY: soon.keyPath });
  t.equal(expiring.code, 1);
  const e1 = JSON.parse(expiring.stdout) as DoctorOut;
  t.equal(e1.ok, false);
  t.match(e1.checks.find((c) => c.check === 'tls'), { ok: false, detail: /expires in (9|10) days/ });
  t.same(e1.checks.filter((c) => !c.ok).map((c) => c.check), ['tls'], 'only TLS fails');

  const old = makeCertificateValidity(work, 'old', new Date('2020-01-01T00:00:00Z'), new Date('2020-02-01T00:00:00Z'));
  const expired = await cli(t, ['doctor'], { ...env, TLS_CERT: old.certPath, TLS_KEY: old.keyPath });
  t.equal(expired.code, 1);
  t.match(expired.stdout, /^FAIL\s+tls\s+.*expired 2020-02-01T00:00:00.000Z$/m);

  const missing = await cli(t, ['doctor', '--json'], { ...env, PKCS11_TOKEN_LABEL: 'no-such-token' });
  t.equal(missing.code, 1, missing.stderr);
  t.equal(missing.stderr, '', 'no crash, no stack');
  const m = JSON.parse(missing.stdout) as DoctorOut;
  t.match(m.checks.find((c) => c.check === 'token'), { ok: false, detail: /no token labelled "no-such-token"/ });
  t.match(m.checks.find((c) => c.check === 'module'), { ok: true });
  t.match(m.checks.find((c) => c.check === 'database'), { ok: true });
  t.match(m.checks.find((c) => c.check === 'keys'), { ok: false, detail: /not checked/ });

  // A keypair made by the service, then its private key destroyed behind strongroom's back.
  const reg = await cli(t, ['auth', 'register', 'ops-doctor-1']);
  const cred: ClientCredential = { id: 'ops-doctor-1', key: (JSON.parse(reg.stdout) as { authKey: string }).authKey, algorithm: 'sha256' };
  secrets.push(cred.key);
  const created = await hawkFetch({ method: 'POST', url: `${base}/keypair`, credential: cred });
  t.equal(created.status, 200, created.text);
  const keypairId = (created.json as { id: string }).id;
  const destroyed = withTokenSession(token, (p11, session) => {
    p11.C_FindObjectsInit(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
      { type: pkcs11js.CKA_ID, value: Buffer.from(keypairId.replace(/-/g, ''), 'hex') },
    ]);
    const handles = p11.C_FindObjects(session, 10);
    p11.C_FindObjectsFinal(session);
    for (const h of handles) p11.C_DestroyObject(session, h);
    return handles.length;
  });
  t.equal(destroyed, 1, 'the private key was removed from the token');
  const dropped = await cli(t, ['doctor']);
  t.equal(dropped.code, 1);
  t.match(dropped.stdout, new RegExp(`^FAIL\\s+keys\\s+1 keypair without a key in the token: ${keypairId}$`, 'm'));
  t.match(dropped.stdout, /^ok\s+token/m, 'the other checks still pass');
});

t.test('no secret reached the service output', async (t) => {
  const leaked = secrets.filter((s) => service.proc.output().includes(s));
  t.same(leaked, []);
});
