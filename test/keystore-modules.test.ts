// One KeyStore contract, run against every PKCS#11 module we know: SoftHSM2 (development, CI)
// and NSS softoken (a second, independent implementation). It also proves the custody probe
// tells them apart: NSS keeps CKA_WRAP_WITH_TRUSTED but does not enforce it, and the service
// refuses such a token.
import { execFileSync } from 'node:child_process';
import { constants, createPublicKey, publicEncrypt, randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { encodeRsaPublicKey, HsmError, openPkcs11KeyStore, type KeyStore, type Pkcs11KeyStoreOptions } from '../hsm/index.js';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { createTestDatabase } from './helpers/database.js';
import { nodeRsaComponents } from './helpers/keystore-util.js';
import { createTestToken } from './helpers/token.js';

const NSS_CANDIDATES = [
  '/usr/lib/x86_64-linux-gnu/libsoftokn3.so',
  '/usr/lib/aarch64-linux-gnu/libsoftokn3.so',
  '/usr/lib64/libsoftokn3.so',
  '/usr/lib/libsoftokn3.so',
];

/** A fresh NSS database (certutil, from libnss3-tools) opened through softoken's PKCS#11 interface. */
function nssModule(): Pkcs11KeyStoreOptions {
  const modulePath = NSS_CANDIDATES.find((p) => existsSync(p));
  if (!modulePath) throw new Error(`NSS softoken not found in ${NSS_CANDIDATES.join(', ')} (scripts/test.sh installs libnss3)`);
  const dir = mkdtempSync(join(tmpdir(), 'strongroom-nss-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const pin = randomBytes(8).toString('hex');
  writeFileSync(join(dir, 'pin'), `${pin}\n`, { mode: 0o600 });
  execFileSync('certutil', ['-N', '-d', `sql:${dir}`, '-f', join(dir, 'pin')], { stdio: 'pipe' });
  return {
    modulePath,
    tokenLabel: 'NSS Certificate DB',
    pin,
    sessions: 2,
    libraryParameters: `configdir='sql:${dir}' certPrefix='' keyPrefix='' secmod='secmod.db' flags=`,
  };
}

const softhsmToken = createTestToken();
const modules: Array<{ name: string; options: Pkcs11KeyStoreOptions; custody: 'enforced' | 'not-enforced' }> = [
  {
    name: 'SoftHSM2',
    options: { modulePath: softhsmToken.modulePath, tokenLabel: softhsmToken.label, pin: softhsmToken.pin, sessions: 2 },
    custody: 'enforced',
  },
  { name: 'NSS softoken', options: nssModule(), custody: 'not-enforced' },
];

function encrypt(store: { modulus: Buffer; publicExponent: Buffer }, padding: number, message: Buffer): Buffer {
  const key = createPublicKey({ key: encodeRsaPublicKey(store), format: 'der', type: 'pkcs1' });
  return publicEncrypt({ key, padding, oaepHash: 'sha1' }, message);
}

async function contract(t: Test, ks: KeyStore): Promise<void> {
  await ks.ensureServiceKeys();

  const id = randomUUID();
  const pub = await ks.generateRsaKeyPair(id, 3072);
  t.equal(pub.modulus.length, 384, 'a 3072-bit modulus');
  t.same(pub.publicExponent, Buffer.from([1, 0, 1]), 'e = 65537');
  for (const [name, padding, scheme] of [
    ['OAEP-SHA1', constants.RSA_PKCS1_OAEP_PADDING, 'oaep-sha1'],
    ['PKCS#1 v1.5', constants.RSA_PKCS1_PADDING, 'pkcs1'],
  ] as const) {
    const message = randomBytes(32);
    t.same(await ks.rsaDecrypt(id, scheme, encrypt(pub, padding, message)), message, `generated key: ${name}`);
  }
  const refused = await ks.rsaDecrypt(id, 'oaep-sha1', randomBytes(384)).then(
    () => undefined,
    (err: unknown) => err,
  );
  t.ok(refused instanceof HsmError && refused.code === 'HSM_ERR_DECRYPT', 'a random ciphertext is refused as HSM_ERR_DECRYPT');

  const imported = randomUUID();
  const components = nodeRsaComponents(3072);
  const importedPub = await ks.importRsaKeyPair(imported, components);
  t.same(importedPub.modulus, components.modulus, 'import keeps the modulus');
  const message = randomBytes(32);
  t.same(
    await ks.rsaDecrypt(imported, 'oaep-sha1', encrypt(importedPub, constants.RSA_PKCS1_OAEP_PADDING, message)),
    message,
    'imported key decrypts',
  );

  const ids = await ks.listKeyPairIds();
  t.ok(ids.includes(id) && ids.includes(imported), 'both keys are listed');

  const sealed = await ks.sealSecret(Buffer.from('hawk key'), 'ctx-a');
  t.equal((await ks.openSecret(sealed, 'ctx-a')).toString(), 'hawk key', 'sealed secret opens');
  const wrongContext = await ks.openSecret(sealed, 'ctx-b').then(
    () => undefined,
    (err: unknown) => err,
  );
  t.ok(wrongContext instanceof HsmError && wrongContext.code === 'HSM_ERR_SECRET_INVALID', 'not under another context');

  t.equal(await ks.deleteKeyPair(id), true, 'delete');
  t.equal(await ks.deleteKeyPair(imported), true, 'delete imported');
  t.equal(await ks.getRsaPublicKey(id), undefined, 'gone');
}

for (const m of modules) {
  t.test(m.name, async (t) => {
    const ks = await openPkcs11KeyStore(m.options);
    t.teardown(() => ks.close());
    await t.test('key store contract', (tt) => contract(tt, ks));
    await t.test('custody probe', async (tt) => {
      const custody = await ks.checkCustody();
      tt.equal(custody.wrapWithTrusted, m.custody, `${m.name}: CKA_WRAP_WITH_TRUSTED ${m.custody}`);
    });
  });
}

t.test('the service refuses a token that does not enforce CKA_WRAP_WITH_TRUSTED', async (t) => {
  const nss = modules[1] as (typeof modules)[number];
  const ks = await openPkcs11KeyStore(nss.options);
  t.teardown(() => ks.close());
  const { db } = await createTestDatabase(t);
  const config = loadConfig({
    PKCS11_MODULE: nss.options.modulePath,
    PKCS11_TOKEN_LABEL: nss.options.tokenLabel,
    PKCS11_PIN: nss.options.pin,
    DATABASE_URL: 'postgres://unused.invalid/db',
    LOG_LEVEL: 'silent',
  });
  const err = await buildApp({ config, keyStore: ks, db }).then(
    (app) => app.close().then(() => undefined),
    (e: unknown) => e,
  );
  t.ok(err instanceof HsmError, 'start-up fails with an HsmError');
  t.equal((err as HsmError).code, 'HSM_ERR_CUSTODY');
  t.match((err as HsmError).message, /does not enforce CKA_WRAP_WITH_TRUSTED/);
  t.equal(
    (await db.query("SELECT count(*)::int AS n FROM keypair")).rows[0]?.n,
    0,
    'nothing was created',
  );
});
