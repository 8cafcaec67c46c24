// The disaster drill with the BUILT `strongroom` CLI as real processes: token A holds keys and
// recordings' ciphertexts; the backup KEK travels to a fresh token B wrapped under B's transport
// key; a backup of A restores into B and a fresh database, and the service on B decrypts every
// ciphertext under the original ids. Also: token list/init, tampered backups, idempotent restore,
// and that a process without the PIN gets nothing out of a backup file.
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import t from 'tap';
import { createTestDatabase } from './helpers/database.js';
import { startHarness } from './helpers/harness.js';
import { hawkFetch, type ClientCredential } from './helpers/hawk-client.js';
import { decodeRsaPublicKey } from '../hsm/index.js';
import { nodeEncrypt, parseObjectList, pkcs11Tool, readPrivateExponent, withTokenSession } from './helpers/keystore-util.js';
import { baseEnv, tempDir, writeSecretFile } from './helpers/process-util.js';
import { secretCheckedCli } from './helpers/cli-run.js';
import { createTestToken, type TestToken } from './helpers/token.js';

// About 30 s of spawned CLI runs and RSA-3072 generations on two cores.
t.setTimeout(120_000);

// SoftHSM scans the token directory at C_Initialize: create every token before anything opens one.
const tokenA = createTestToken();
const tokenB = createTestToken();
const labelC = `c-${randomBytes(4).toString('hex')}`;
const work = tempDir(t, 'custody');
const SECRETS = [tokenA.pin, tokenA.soPin, tokenB.pin, tokenB.soPin];
const cli = secretCheckedCli(SECRETS);

const dbA = await createTestDatabase(t);
const dbB = await createTestDatabase(t);

function envFor(token: TestToken, databaseUrl: string, name: string): Record<string, string> {
  return {
    ...baseEnv(),
    SOFTHSM2_CONF: token.conf,
    PKCS11_MODULE: token.modulePath,
    PKCS11_TOKEN_LABEL: token.label,
    PKCS11_PIN_FILE: writeSecretFile(work, `${name}-pin`, `${token.pin}\n`),
    PKCS11_SO_PIN_FILE: writeSecretFile(work, `${name}-so-pin`, `${token.soPin}\n`),
    DATABASE_URL: databaseUrl,
    KEY_POOL_SIZE: '0',
  };
}
const envA = envFor(tokenA, dbA.url, 'a');
const envB = envFor(tokenB, dbB.url, 'b');

const rsaPrivateKeys = (token: TestToken): number =>
  withTokenSession(token, (p, s) => {
    p.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA }]);
    try {
      return p.C_FindObjects(s, 1000).length;
    } finally {
      p.C_FindObjectsFinal(s);
    }
  });

const keypairRows = async (db: typeof dbB.db): Promise<number> =>
  Number((await db.query<{ n: string }>('SELECT count(*) AS n FROM keypair')).rows[0]?.n ?? -1);

interface Recording {
  keypairId: string;
  padding: 'oaep-sha1' | 'pkcs1';
  ciphertext: Buffer;
  plaintext: Buffer;
}
const recordings: Recording[] = [];
const keypairs: { id: string; publicKey: string; dateCreated: number }[] = [];
let kekIdA = '';

t.test('token init adopts the empty tokens: A with a backup KEK, B without (it will receive A\'s)', async (t) => {
  const a = await cli(t, ['token', 'init', '--label', tokenA.label, '--json'], envA);
  t.equal(a.code, 0, a.stderr);
  const outA = JSON.parse(a.stdout) as { initialised: boolean; kekId: string; serviceKeys: string[] };
  t.equal(outA.initialised, false, 'an initialised empty token is adopted, not wiped');
  t.match(outA.kekId, /^[0-9a-f]{16}$/);
  t.same(outA.serviceKeys, ['strongroom-backup-kek', 'strongroom-backup-kek-unwrap', 'strongroom-secrets']);
  kekIdA = outA.kekId;

  const b = await cli(t, ['token', 'init', '--label', tokenB.label, '--without-kek', '--json'], envB);
  t.equal(b.code, 0, b.stderr);
  t.equal((JSON.parse(b.stdout) as { kekId: unknown }).kekId, null);

  const objects = parseObjectList(pkcs11Tool(tokenA, ['--list-objects']).toString('utf8'));
  const kek = objects.find((o) => o.fields.label === 'strongroom-backup-kek');
  const unwrap = objects.find((o) => o.fields.label === 'strongroom-backup-kek-unwrap');
  t.equal(kek?.fields.Usage, 'wrap', 'the trusted half only wraps');
  t.equal(unwrap?.fields.Usage, 'unwrap', 'the private half only unwraps');
  t.match(unwrap?.fields.Access ?? '', /sensitive/);
  t.notMatch(unwrap?.fields.Access ?? '', /extractable/, 'the private half is not extractable at all');
});

t.test('token init on the free slot creates a token; token list shows it with its capabilities', async (t) => {
  const env = { ...envB, PKCS11_TOKEN_LABEL: labelC };
  const run = await cli(t, ['token', 'init', '--label', labelC, '--json'], env);
  t.equal(run.code, 0, run.stderr);
  t.equal((JSON.parse(run.stdout) as { initialised: boolean }).initialised, true, 'a free slot was initialised');

  const list = await cli(t, ['token', 'list', '--json'], { ...baseEnv(), SOFTHSM2_CONF: tokenA.conf, PKCS11_MODULE: tokenA.modulePath });
  t.equal(list.code, 0, list.stderr);
  const { slots } = JSON.parse(list.stdout) as { slots: { state: string; label: string | null; serial: string | null; flags: string[]; capabilities: Record<string, boolean | null> }[] };
  const c = slots.find((s) => s.label === labelC);
  t.ok(c, 'the new token is listed');
  t.equal(c?.state, 'used');
  t.match(c?.serial ?? '', /^[0-9a-f]{16}$/);
  t.ok(c?.flags.includes('user-pin-initialized'));
  t.same(c?.capabilities, { rsa3072Generate: true, oaepSha1: true, pkcs1: true, aesKeyWrapPad: true, oaepSha256: false },
    'SoftHSM 2.6.1: OAEP with SHA-1 only');
  t.ok(slots.some((s) => s.state === 'free'), 'SoftHSM keeps one free slot');
  for (const label of [tokenA.label, tokenB.label]) t.ok(slots.some((s) => s.label === label), `${label} listed`);

  const table = await cli(t, ['token', 'list'], { ...baseEnv(), SOFTHSM2_CONF: tokenA.conf, PKCS11_MODULE: tokenA.modulePath });
  t.equal(table.code, 0);
  t.match(table.stdout, /^SLOT\s+STATE\s+LABEL\s+SERIAL\s+RSA-3072\s+OAEP-SHA1\s+PKCS1\s+AES-KWP\s+OAEP-SHA256\s+FLAGS/);
  t.match(table.stdout, new RegExp(`${labelC}\\s+[0-9a-f]{16}\\s+yes\\s+yes\\s+yes\\s+yes\\s+no`));
});

t.test('token A gets keys through the service, and recordings are encrypted to them', async (t) => {
  const h = await startHarness(t, { token: tokenA, databaseUrl: dbA.url, env: { KEY_POOL_SIZE: '0' } });
  const credential = await h.register('genesys-custody');
  for (let i = 0; i < 3; i += 1) {
    const res = await hawkFetch({ method: 'POST', url: `${h.base}/keypair`, credential });
    t.equal(res.status, 200, res.text);
    const kp = res.json as { id: string; publicKey: string; dateCreated: number };
    keypairs.push(kp);
    const pub = decodeRsaPublicKey(Buffer.from(kp.publicKey, 'base64'));
    for (const padding of ['oaep-sha1', 'pkcs1'] as const) {
      const plaintext = randomBytes(32);
      recordings.push({ keypairId: kp.id, padding, plaintext, ciphertext: nodeEncrypt(pub, padding, plaintext) });
    }
  }
  t.equal(recordings.length, 6);
});

t.test('token init refuses token A now that it holds keys', async (t) => {
  const run = await cli(t, ['token', 'init', '--label', tokenA.label], envA);
  t.equal(run.code, 1);
  t.match(run.stderr, /already holds \d+ objects/);
  t.equal(rsaPrivateKeys(tokenA), 3, 'nothing was touched');
});

const pem = join(work, 'transport.pem');
const wrapped = join(work, 'kek.wrapped.json');
const backupFile = join(work, 'backup.strongroom');

t.test('the KEK ceremony: transport key on B, export on A (SO approves), import on B', async (t) => {
  const tk = await cli(t, ['kek', 'transport-key', '--out', pem], envB);
  t.equal(tk.code, 0, tk.stderr);
  const fingerprint = /SHA-256 fingerprint: ([0-9a-f:]{95})/.exec(tk.stdout)?.[1];
  t.ok(fingerprint, 'the fingerprint is printed');
  const der = execFileSync('openssl', ['pkey', '-pubin', '-in', pem, '-outform', 'DER']);
  t.equal((createHash('sha256').update(der).digest('hex').match(/../g) ?? []).join(':'), fingerprint, 'openssl computes the same fingerprint');
  t.match(execFileSync('openssl', ['pkey', '-pubin', '-in', pem, '-noout', '-text']).toString(), /3072 bit/);

  const unconfirmed = await cli(t, ['kek', 'export', '--to', pem, '--out', wrapped], envA);
  t.equal(unconfirmed.code, 2, 'no terminal and no --yes: the SO approval is not assumed');
  t.match(unconfirmed.stderr, /pass --yes/);
  t.match(unconfirmed.stderr, new RegExp(fingerprint ?? 'x'), 'the fingerprint is shown before asking');

  const exported = await cli(t, ['kek', 'export', '--to', pem, '--out', wrapped, '--yes', '--json'], envA);
  t.equal(exported.code, 0, exported.stderr);
  t.same(JSON.parse(exported.stdout), { token: tokenA.label, kekId: kekIdA, file: wrapped, transportKeyFingerprint: fingerprint });
  const file = JSON.parse(readFileSync(wrapped, 'utf8')) as { wrappedKek: string; mechanism: string };
  t.equal(Buffer.from(file.wrappedKek, 'base64').length, 384, 'one RSA-3072 OAEP block');
  t.equal(file.mechanism, 'CKM_RSA_PKCS_OAEP/SHA-1');

  const wrongSo = await cli(t, ['kek', 'import', '--in', wrapped], { ...envB, PKCS11_SO_PIN_FILE: writeSecretFile(work, 'bad-so', 'wrong-so-pin\n') });
  t.equal(wrongSo.code, 1);
  t.match(wrongSo.stderr, /SO login .* refused \(CKR_PIN_INCORRECT\)/);

  const imported = await cli(t, ['kek', 'import', '--in', wrapped, '--json'], envB);
  t.equal(imported.code, 0, imported.stderr);
  t.same(JSON.parse(imported.stdout), { token: tokenB.label, kekId: kekIdA, alreadyPresent: false }, 'B holds the same KEK as A');
  const objects = parseObjectList(pkcs11Tool(tokenB, ['--list-objects']).toString('utf8'));
  t.notOk(objects.some((o) => o.fields.label === 'strongroom-transport'), 'the transport key is destroyed');
  t.ok(objects.some((o) => o.fields.label === 'strongroom-backup-kek' && o.fields.Usage === 'wrap'));
  t.ok(objects.some((o) => o.fields.label === 'strongroom-backup-kek-unwrap' && o.fields.Usage === 'unwrap'));

  const again = await cli(t, ['kek', 'import', '--in', wrapped, '--json'], envB);
  t.equal(again.code, 0, again.stderr);
  t.equal((JSON.parse(again.stdout) as { alreadyPresent: boolean }).alreadyPresent, true, 'a second import changes nothing');
});

t.test('keys backup on A', async (t) => {
  const run = await cli(t, ['keys', 'backup', '--out', backupFile, '--json'], envA);
  t.equal(run.code, 0, run.stderr);
  const out = JSON.parse(run.stdout) as { keys: number; kekId: string; failures: unknown[] };
  t.equal(out.keys, 3);
  t.equal(out.kekId, kekIdA);
  t.same(out.failures, []);
  const [body, macLine] = readFileSync(backupFile, 'utf8').split('\n');
  const parsed = JSON.parse(body ?? '') as { keys: { id: string; publicKey: string; wrappedPrivateKey: string }[]; token: { serial: string } };
  t.same(parsed.keys.map((k) => k.id).sort(), keypairs.map((k) => k.id).sort());
  for (const k of parsed.keys) {
    t.equal(k.publicKey, keypairs.find((kp) => kp.id === k.id)?.publicKey, 'metadata carries the public key');
  }
  t.match(macLine ?? '', /^\{"mac":"[A-Za-z0-9+/]{43}="\}$/);
  t.equal(readFileSync(backupFile).subarray(-1).toString(), '\n');
});

t.test('a backup file with one flipped byte is refused before anything is written', async (t) => {
  const good = readFileSync(backupFile);
  const text = good.toString('latin1');
  const at = (needle: string, offset: number): number => {
    const i = text.indexOf(needle);
    if (i < 0) throw new Error(`${needle} not in the backup`);
    return i + offset;
  };
  const positions: [string, number][] = [
    ['a date in the metadata', at('"dateCreated":"20', 17)],
    ['inside a wrapped key', at('"wrappedPrivateKey":"', 200)],
    ['the MAC', text.length - 10],
  ];
  for (const [where, index] of positions) {
    const bad = Buffer.from(good);
    bad[index] = (bad[index] as number) ^ 0x01;
    const file = join(work, 'tampered.strongroom');
    writeFileSync(file, bad);
    const run = await cli(t, ['keys', 'restore', '--in', file], envB);
    t.equal(run.code, 1, `${where}: refused`);
    t.match(run.stderr, /integrity check|not a valid strongroom backup/, where);
    t.equal(rsaPrivateKeys(tokenB), 0, `${where}: no key entered token B`);
    t.equal(await keypairRows(dbB.db), 0, `${where}: no row entered database B`);
  }
});

t.test('without the PIN, the public KEK half cannot open a backup', async (t) => {
  const [body] = readFileSync(backupFile, 'utf8').split('\n');
  const blob = Buffer.from((JSON.parse(body ?? '') as { keys: { wrappedPrivateKey: string }[] }).keys[0]?.wrappedPrivateKey ?? '', 'base64');
  const p = new pkcs11js.PKCS11();
  p.load(tokenB.modulePath);
  p.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  try {
    const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === tokenB.label);
    if (slot === undefined) throw new Error('token B not found');
    const session = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    p.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY }]);
    const visible = p.C_FindObjects(session, 100);
    p.C_FindObjectsFinal(session);
    t.equal(visible.length, 1, 'only the trusted wrap half is visible without a login');
    const kek = visible[0] as Buffer;
    let refused = '';
    try {
      p.C_UnwrapKey(session, { mechanism: pkcs11js.CKM_AES_KEY_WRAP_PAD }, kek, blob, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
        { type: pkcs11js.CKA_TOKEN, value: false },
        { type: pkcs11js.CKA_PRIVATE, value: false },
        { type: pkcs11js.CKA_SENSITIVE, value: false },
        { type: pkcs11js.CKA_EXTRACTABLE, value: true },
      ]);
    } catch (err) {
      refused = err instanceof pkcs11js.Pkcs11Error ? String(err.code) : 'other';
    }
    t.equal(refused, String(pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED), 'the wrap half refuses to unwrap');
    let modified = '';
    try {
      p.C_SetAttributeValue(session, kek, [{ type: pkcs11js.CKA_UNWRAP, value: true }]);
    } catch (err) {
      modified = err instanceof pkcs11js.Pkcs11Error ? 'refused' : `other: ${(err as Error).message}`;
    }
    t.not(modified, '', 'and cannot be given CKA_UNWRAP (CKA_MODIFIABLE=false)');
    p.C_CloseSession(session);
  } finally {
    p.C_Finalize();
    p.close();
  }
});

t.test('keys restore on B: every key, verified, recorded; a second run changes nothing', async (t) => {
  const run = await cli(t, ['keys', 'restore', '--in', backupFile, '--json'], envB);
  t.equal(run.code, 0, run.stderr);
  t.same(JSON.parse(run.stdout), { file: backupFile, token: tokenB.label, kekId: kekIdA, restored: 3, alreadyPresent: 0, failures: [] });
  t.equal(rsaPrivateKeys(tokenB), 3);
  t.equal(await keypairRows(dbB.db), 3);

  const again = await cli(t, ['keys', 'restore', '--in', backupFile, '--json'], envB);
  t.equal(again.code, 0, again.stderr);
  t.match(JSON.parse(again.stdout), { restored: 0, alreadyPresent: 3, failures: [] });
  t.equal(rsaPrivateKeys(tokenB), 3, 'no duplicate keys');
  t.equal(await keypairRows(dbB.db), 3, 'no duplicate rows');

  const human = await cli(t, ['keys', 'restore', '--in', backupFile], envB);
  t.equal(human.code, 0);
  t.match(human.stdout, /^restored 0, already present 3, failed 0 /);
  t.match(human.stderr, /restore: 3\/3/, 'progress on stderr');

  const objects = parseObjectList(pkcs11Tool(tokenB, ['--list-objects']).toString('utf8'));
  for (const kp of keypairs) {
    const priv = objects.find((o) => o.kind.startsWith('Private Key Object') && o.fields.label === kp.id);
    t.match(priv?.fields.Access ?? '', /sensitive/, 'restored key is sensitive');
    t.notMatch(priv?.fields.Access ?? '', /always sensitive/, 'an unwrapped key was not always sensitive: honest attributes');
    t.equal(priv?.fields.Usage, 'decrypt', 'decrypt only');
    t.equal(readPrivateExponent(tokenB, kp.id), 'CKR_ATTRIBUTE_SENSITIVE', 'the private exponent cannot be read');
    t.ok(objects.some((o) => o.kind.startsWith('Public Key Object') && o.fields.label === kp.id), 'its public object exists');
    const trusted = withTokenSession(tokenB, (p, s) => {
      p.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_LABEL, value: kp.id }]);
      const [h] = p.C_FindObjects(s, 1);
      p.C_FindObjectsFinal(s);
      return p.C_GetAttributeValue(s, h as Buffer, [{ type: pkcs11js.CKA_WRAP_WITH_TRUSTED }])[0]?.value as Buffer;
    });
    t.same([...trusted], [1], 'CKA_WRAP_WITH_TRUSTED, like a generated key');
  }
});

t.test('the service on token B decrypts every recording under the original ids', async (t) => {
  const h = await startHarness(t, { token: tokenB, databaseUrl: dbB.url, env: { KEY_POOL_SIZE: '0' } });
  const credential: ClientCredential = await h.register('genesys-after-disaster');
  const list = await hawkFetch({ method: 'GET', url: `${h.base}/keypair`, credential });
  t.equal(list.status, 200, list.text);
  t.same(
    (list.json as typeof keypairs).map((k) => [k.id, k.publicKey, k.dateCreated]).sort(),
    keypairs.map((k) => [k.id, k.publicKey, k.dateCreated]).sort(),
    'same ids, public keys and creation dates',
  );
  for (const r of recordings) {
    const res = await hawkFetch({
      method: 'POST',
      url: `${h.base}/decrypt${r.padding === 'pkcs1' ? '?decryptType=pkcs1' : ''}`,
      credential,
      json: { keypairId: r.keypairId, body: r.ciphertext.toString('base64') },
    });
    t.equal(res.status, 200, `${r.padding} ${r.keypairId}: ${res.text}`);
    t.equal((res.json as { body: string }).body, r.plaintext.toString('base64'));
  }
});
