// Secrets stay where they belong: not in the log, not in the database, and private keys not
// readable or exportable from the token. A real SoftHSM token and a real Postgres throughout.
import { execFileSync } from 'node:child_process';
import { constants, createPublicKey, publicEncrypt, randomBytes, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import pkcs11js from 'pkcs11js';
import type * as P11 from 'pkcs11js';
import t from 'tap';
import { encodeRsaPublicKey, modulusBits, openPkcs11KeyStore } from '../hsm/index.js';
import { KeypairRepository } from '../src/db/keypairs.js';
import { dumpDatabase, type Tap } from './helpers/badinput-util.js';
import { startHarness } from './helpers/harness.js';
import { hawkFetch, send, type ClientCredential, type Response } from './helpers/hawk-client.js';
import { nodeRsaComponents, withTokenSession } from './helpers/keystore-util.js';

const h = await startHarness(t, { captureLog: true });

interface KeypairView {
  id: string;
  publicKey: string;
  dateCreated: number;
}

function encryptFor(publicKeyB64: string, padding: number, message: Buffer): string {
  const key = createPublicKey({ key: Buffer.from(publicKeyB64, 'base64'), format: 'der', type: 'pkcs1' });
  return publicEncrypt({ key, padding, oaepHash: 'sha1' }, message).toString('base64');
}

/** The `mac` attribute of a Hawk Authorization header. */
function macOf(authorization: string): string {
  const mac = /mac="([^"]+)"/.exec(authorization)?.[1];
  if (!mac) throw new Error(`no mac in ${authorization}`);
  return mac;
}

// Shared by the subtests: one credential and one keypair made over HTTP.
const credential: ClientCredential = await h.register('secrets-caller');
const call = (method: string, path: string, extra: { json?: unknown; headers?: Record<string, string> } = {}) =>
  hawkFetch({ method, url: `${h.base}${path}`, credential, ...extra });
const created = await call('POST', '/keypair');
if (created.status !== 200) throw new Error(`POST /keypair answered ${created.status}: ${created.text}`);
const keypair = created.json as KeypairView;

t.test('the log never carries a key, a MAC, a token, a PIN or a plaintext', async (tt) => {
  const secrets: Array<[string, string]> = [
    ['the harness credential authKey', credential.key],
    ['the admin token', h.adminToken],
    ['the admin Authorization header', `Bearer ${h.adminToken}`],
    ['the user PIN', h.token.pin],
    ['the SO PIN', h.token.soPin],
  ];
  const sent: Response[] = [];
  const track = (res: Response) => {
    sent.push(res);
    return res;
  };

  // POST /auth, as the admin would.
  const reg = track(await send('POST', `${h.base}/auth`, { json: { id: 'secrets-second' }, headers: { authorization: `Bearer ${h.adminToken}` } }));
  tt.equal(reg.status, 200, reg.text);
  const second: ClientCredential = { id: 'secrets-second', key: (reg.json as { authKey: string }).authKey, algorithm: 'sha256' };
  secrets.push(['the second credential authKey', second.key]);

  // A keypair, and decryption with both paddings, by the second credential.
  const kp = track(await hawkFetch({ method: 'POST', url: `${h.base}/keypair`, credential: second }));
  tt.equal(kp.status, 200, kp.text);
  const made = kp.json as KeypairView;
  for (const [padding, query] of [
    [constants.RSA_PKCS1_OAEP_PADDING, ''],
    [constants.RSA_PKCS1_PADDING, '?decryptType=pkcs1'],
  ] as const) {
    const message = randomBytes(32);
    const res = track(
      await hawkFetch({
        method: 'POST',
        url: `${h.base}/decrypt${query}`,
        credential: second,
        json: { keypairId: made.id, body: encryptFor(made.publicKey, padding, message) },
      }),
    );
    tt.same([res.status, res.json], [200, { body: message.toString('base64') }], `decrypt${query}`);
    secrets.push([`plaintext${query} (base64)`, message.toString('base64')], [`plaintext${query} (hex)`, message.toString('hex')]);
  }

  // A failed decrypt.
  const failed = track(await call('POST', '/decrypt', { json: { keypairId: keypair.id, body: randomBytes(384).toString('base64') } }));
  tt.equal(failed.status, 400);

  // Failed Hawk checks: a bad MAC (wrong key), a replay, a stale timestamp.
  const badMac = track(
    await hawkFetch({ method: 'GET', url: `${h.base}/keypair`, credential: { ...credential, key: randomBytes(32).toString('base64url') } }),
  );
  tt.equal(badMac.status, 401, 'bad MAC refused');
  const original = track(await call('GET', '/keypair'));
  tt.equal(original.status, 200);
  const replay = track(await send('GET', `${h.base}/keypair`, { headers: { authorization: original.authorization } }));
  tt.equal(replay.status, 401, 'replay refused');
  const stale = track(
    await hawkFetch({ method: 'GET', url: `${h.base}/keypair`, credential, timestamp: Math.floor(Date.now() / 1000) - 3600 }),
  );
  tt.equal(stale.status, 401, 'stale timestamp refused');

  // A failed admin call, with a wrong token that must not be logged either.
  const wrongToken = randomBytes(32).toString('base64url');
  secrets.push(['the wrong admin token', wrongToken]);
  const adminFail = track(await send('POST', `${h.base}/auth`, { json: { id: 'never-registered' }, headers: { authorization: `Bearer ${wrongToken}` } }));
  tt.equal(adminFail.status, 401);

  for (const res of sent) {
    if (!res.authorization) continue;
    secrets.push(['an Authorization header', res.authorization]);
    if (res.authorization.startsWith('Hawk ')) secrets.push(['a Hawk MAC', macOf(res.authorization)]);
  }

  await sleep(100); // onResponse lines are written after the client has its answer
  const log = h.logs.join('');
  const lines = log.split('\n').filter((l) => l.trim() !== '');

  // The capture works: every line is JSON, and the events above are there.
  tt.ok(lines.length >= sent.length, `the log has lines (${lines.length})`);
  tt.ok(lines.every((l) => { try { JSON.parse(l); return true; } catch { return false; } }), 'every line is JSON');
  const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  tt.ok(parsed.some((l) => l.msg === 'hawk credential registered' && l.hawkId === 'secrets-second'), 'the registration is logged');
  tt.ok(parsed.some((l) => l.msg === 'keypair created' && l.keypairId === made.id), 'the keypair creation is logged');
  for (const code of ['KEY_ERR_DECRYPT_FAILED', 'HAWK_ERR_UNAUTHORIZED', 'HAWK_ERR_STALE_TIMESTAMP', 'ADMIN_ERR_UNAUTHORIZED']) {
    tt.ok(parsed.some((l) => l.code === code), `the refusal ${code} is logged`);
  }
  tt.ok(parsed.some((l) => (l.req as { url?: string } | undefined)?.url === '/key-management/v1/decrypt?decryptType=pkcs1'), 'requests are logged');

  const lower = log.toLowerCase();
  for (const [name, value] of secrets) {
    tt.ok(value.length >= 16, `${name} is long enough to search for`);
    const found = /^[0-9a-f]+$/i.test(value) ? lower.includes(value.toLowerCase()) : log.includes(value);
    tt.notOk(found, `the log does not contain ${name}`);
  }
  // The authKeys' raw bytes too, in the forms a careless serializer would print.
  for (const key of [credential.key, second.key]) {
    const raw = Buffer.from(key, 'base64url');
    tt.notOk(lower.includes(raw.toString('hex')), 'no authKey bytes as hex');
    tt.notOk(log.includes(raw.toString('base64')), 'no authKey bytes as base64');
    tt.notOk(log.includes(Buffer.from(key).toString('base64')), 'no authKey text as base64');
  }
});

t.test('the database holds no key material', async (tt) => {
  const reg = await send('POST', `${h.base}/auth`, { json: { id: 'dump-caller' }, headers: { authorization: `Bearer ${h.adminToken}` } });
  tt.equal(reg.status, 200, reg.text);
  const authKey = (reg.json as { authKey: string }).authKey;

  // A private key made here, put into the token as an operator's import would, with its row.
  const components = nodeRsaComponents(3072);
  const publicKey = createPublicKey({
    key: { kty: 'RSA', n: components.modulus.toString('base64url'), e: components.publicExponent.toString('base64url') },
    format: 'jwk',
  });
  const importedId = randomUUID();
  const store = await openPkcs11KeyStore({ modulePath: h.token.modulePath, tokenLabel: h.token.label, pin: h.token.pin, sessions: 1 });
  try {
    const pub = await store.importRsaKeyPair(importedId, components);
    await new KeypairRepository(h.db).insert({
      id: importedId,
      publicKey: encodeRsaPublicKey(pub),
      modulusBits: modulusBits(pub.modulus),
      dateCreated: new Date(),
      owner: null,
    });
  } finally {
    await store.close();
  }
  // The import is real: the service decrypts with it, and shows Node's own public key.
  const pkcs1Der = publicKey.export({ type: 'pkcs1', format: 'der' });
  const shown = await call('GET', `/keypair/${importedId}`);
  tt.equal(shown.status, 200, shown.text);
  tt.equal((shown.json as KeypairView).publicKey, pkcs1Der.toString('base64'), 'the row carries the public key');
  const message = randomBytes(32);
  const dec = await call('POST', '/decrypt', {
    json: { keypairId: importedId, body: encryptFor(pkcs1Der.toString('base64'), constants.RSA_PKCS1_OAEP_PADDING, message) },
  });
  tt.same([dec.status, dec.json], [200, { body: message.toString('base64') }], 'the imported key decrypts');

  const viaHttp = await call('POST', '/keypair');
  tt.equal(viaHttp.status, 200);
  const httpKeypair = viaHttp.json as KeypairView;

  const dump = await dumpDatabase(h.db);
  for (const table of ['hawk_credential', 'hawk_nonce', 'keypair', 'request_log', 'request_log_clear', 'schema_migration']) {
    tt.ok(dump.tables.includes(table), `the dump covers ${table}`);
  }
  // The dump is complete enough to catch a leak: public values and byteas are in it.
  tt.ok(dump.text.includes('dump-caller'), 'the dump shows credential ids');
  tt.ok(dump.text.includes(httpKeypair.id) && dump.text.includes(importedId), 'the dump shows keypair ids');
  tt.ok(dump.text.includes(components.modulus.toString('hex')), 'the dump shows the imported modulus (bytea as hex)');
  tt.ok(dump.blobs.some((x) => x.includes(components.modulus)), 'the dump keeps bytea bytes');
  tt.ok(dump.text.includes(Buffer.from(httpKeypair.publicKey, 'base64').toString('base64')), 'the dump shows bytea as base64');

  const text = dump.text;
  const lower = text.toLowerCase();
  const keyBytes = Buffer.from(authKey, 'base64url');
  const authForms: Array<[string, Buffer | string]> = [
    ['the authKey', authKey],
    ['the authKey as base64 of its text', Buffer.from(authKey).toString('base64')],
    ['the authKey as hex of its text', Buffer.from(authKey).toString('hex')],
    ['the authKey bytes as hex', keyBytes.toString('hex')],
    ['the authKey bytes as base64', keyBytes.toString('base64')],
    ['the authKey text as bytes', Buffer.from(authKey, 'utf8')],
    ['the authKey bytes', keyBytes],
  ];
  const privateForms: Array<[string, Buffer]> = [
    ['private exponent', components.privateExponent],
    ['prime1', components.prime1],
    ['prime2', components.prime2],
    ['exponent1', components.exponent1],
    ['exponent2', components.exponent2],
    ['coefficient', components.coefficient],
  ];
  const checks: Array<[string, Buffer | string]> = [...authForms];
  for (const [name, value] of privateForms) {
    checks.push([`the ${name} (hex)`, value.toString('hex')], [`the ${name} (base64)`, value.toString('base64')], [`the ${name} (bytes)`, value]);
  }
  for (const [name, needle] of checks) {
    if (typeof needle === 'string') {
      const hit = /^[0-9a-f]+$/.test(needle) ? lower.includes(needle) : text.includes(needle);
      tt.notOk(hit, `the dump does not contain ${name}`);
    } else {
      tt.notOk(dump.blobs.some((blob) => blob.includes(needle)), `no bytea contains ${name}`);
    }
  }

  const { rows } = await h.db.query<{ sealed_key: Buffer }>(`SELECT sealed_key FROM hawk_credential WHERE id = 'dump-caller'`);
  const sealed = Buffer.from(rows[0]?.sealed_key ?? Buffer.alloc(0));
  tt.equal(sealed.length, 1 + 12 + authKey.length + 16, 'sealed_key is version ‖ IV ‖ ciphertext ‖ tag');
  tt.equal(sealed[0], 0x01, 'sealed_key starts with its format version');
  tt.notOk(sealed.equals(Buffer.from(authKey)), 'sealed_key is not the key text');
  tt.notOk(sealed.equals(keyBytes), 'sealed_key is not the key bytes');
  tt.notOk(sealed.includes(Buffer.from(authKey)) || sealed.includes(keyBytes), 'sealed_key does not contain the key');
  tt.notOk(sealed.toString('latin1').includes(authKey.slice(0, 8)), 'not even a prefix of the key shows through');
});

// --- Token objects, read with pkcs11js directly (not through the product's key store) ---

/** A CK_ULONG attribute (8 bytes on 64-bit Linux, native byte order). */
const ulong = (value: Buffer | undefined) =>
  value === undefined ? undefined : value.length === 8 ? Number(value.readBigUInt64LE(0)) : value.readUInt32LE(0);
const bool = (attr: P11.AttributeResult | undefined) => (attr?.value as Buffer | undefined)?.[0] === 1;

function ckrOf(fn: () => unknown): number | 'ok' | 'other' {
  try {
    fn();
    return 'ok';
  } catch (err) {
    return err instanceof pkcs11js.Pkcs11Error ? err.code : 'other';
  }
}

interface TokenSession {
  p11: P11.PKCS11;
  session: P11.Handle;
}

function findObjects(ts: TokenSession, template: P11.Template): P11.Handle[] {
  ts.p11.C_FindObjectsInit(ts.session, template);
  try {
    return ts.p11.C_FindObjects(ts.session, 16);
  } finally {
    ts.p11.C_FindObjectsFinal(ts.session);
  }
}

/** A session AES key that may wrap: an ordinary key, not CKA_TRUSTED (only the SO can set that). */
function sessionWrappingKey(ts: TokenSession): P11.Handle {
  return ts.p11.C_GenerateKey(ts.session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    { type: pkcs11js.CKA_TOKEN, value: false },
    { type: pkcs11js.CKA_WRAP, value: true },
    { type: pkcs11js.CKA_UNWRAP, value: true },
  ]);
}

function checkRsaPrivateKey(tt: Tap, ts: TokenSession, keyId: string, generated: boolean): void {
  const handles = findObjects(ts, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
    { type: pkcs11js.CKA_LABEL, value: keyId },
  ]);
  tt.equal(handles.length, 1, `${keyId}: one private key labelled with the keypair UUID`);
  const key = handles[0] as P11.Handle;
  const attrs = ts.p11.C_GetAttributeValue(ts.session, key, [
    { type: pkcs11js.CKA_SENSITIVE },
    { type: pkcs11js.CKA_PRIVATE },
    { type: pkcs11js.CKA_TOKEN },
    { type: pkcs11js.CKA_WRAP_WITH_TRUSTED },
    { type: pkcs11js.CKA_EXTRACTABLE },
    { type: pkcs11js.CKA_DECRYPT },
    { type: pkcs11js.CKA_SIGN },
    { type: pkcs11js.CKA_SIGN_RECOVER },
    { type: pkcs11js.CKA_UNWRAP },
    { type: pkcs11js.CKA_DERIVE },
    { type: pkcs11js.CKA_ALWAYS_SENSITIVE },
    { type: pkcs11js.CKA_LABEL },
    { type: pkcs11js.CKA_ID },
    { type: pkcs11js.CKA_KEY_TYPE },
  ]);
  const [sensitive, priv, token, wrapWithTrusted, extractable, decrypt, sign, signRecover, unwrap, derive, alwaysSensitive, label, id, keyType] =
    attrs;
  for (const [name, attr] of [
    ['CKA_SENSITIVE', sensitive],
    ['CKA_PRIVATE', priv],
    ['CKA_TOKEN', token],
    ['CKA_WRAP_WITH_TRUSTED', wrapWithTrusted],
    ['CKA_EXTRACTABLE', extractable],
    ['CKA_DECRYPT', decrypt],
  ] as const) {
    tt.ok(bool(attr), `${keyId}: ${name} is true`);
  }
  for (const [name, attr] of [
    ['CKA_SIGN', sign],
    ['CKA_SIGN_RECOVER', signRecover],
    ['CKA_UNWRAP', unwrap],
    ['CKA_DERIVE', derive],
  ] as const) {
    tt.notOk(bool(attr), `${keyId}: ${name} is false`);
  }
  if (generated) tt.ok(bool(alwaysSensitive), `${keyId}: CKA_ALWAYS_SENSITIVE (generated in the token, never seen outside)`);
  tt.equal(label?.value.toString('utf8'), keyId, `${keyId}: CKA_LABEL is the UUID`);
  tt.same(id?.value, Buffer.from(keyId.replace(/-/g, ''), 'hex'), `${keyId}: CKA_ID is the UUID's 16 bytes`);
  tt.equal(ulong(keyType?.value), pkcs11js.CKK_RSA, `${keyId}: an RSA key`);

  for (const [name, type] of [
    ['CKA_PRIVATE_EXPONENT', pkcs11js.CKA_PRIVATE_EXPONENT],
    ['CKA_PRIME_1', pkcs11js.CKA_PRIME_1],
    ['CKA_PRIME_2', pkcs11js.CKA_PRIME_2],
  ] as const) {
    tt.equal(
      ckrOf(() => ts.p11.C_GetAttributeValue(ts.session, key, [{ type }])),
      pkcs11js.CKR_ATTRIBUTE_SENSITIVE,
      `${keyId}: reading ${name} fails with CKR_ATTRIBUTE_SENSITIVE`,
    );
  }
  // The modulus stays readable: the public half is public.
  const [modulus] = ts.p11.C_GetAttributeValue(ts.session, key, [{ type: pkcs11js.CKA_MODULUS }]);
  tt.equal(modulus?.value.length, 384, `${keyId}: CKA_MODULUS is readable (3072 bits)`);

  const wrappingKey = sessionWrappingKey(ts);
  try {
    const [trusted] = ts.p11.C_GetAttributeValue(ts.session, wrappingKey, [{ type: pkcs11js.CKA_TRUSTED }]);
    tt.notOk(bool(trusted), 'the wrapping key is not CKA_TRUSTED');
    tt.equal(
      ckrOf(() => ts.p11.C_WrapKey(ts.session, { mechanism: pkcs11js.CKM_AES_KEY_WRAP_PAD }, wrappingKey, key, Buffer.alloc(4096))),
      pkcs11js.CKR_KEY_NOT_WRAPPABLE,
      `${keyId}: wrapping under an ordinary AES key fails with CKR_KEY_NOT_WRAPPABLE`,
    );
  } finally {
    ts.p11.C_DestroyObject(ts.session, wrappingKey);
  }
}

t.test('token objects: private keys are sensitive, decrypt-only and export only under a trusted key', async (tt) => {
  // A second keypair imported above exists too; check it by its row.
  const { rows } = await h.db.query<{ id: string }>('SELECT id FROM keypair WHERE owner IS NULL');
  const imported = rows.map((r) => r.id);
  tt.equal(imported.length, 1, 'the imported keypair from the previous test');

  // A session of our own, next to the app's (never C_Logout or C_Finalize: that would end its login too).
  withTokenSession(h.token, (p11, session) => {
    const ts: TokenSession = { p11, session };
    checkRsaPrivateKey(tt, ts, keypair.id, true);
    for (const id of imported) checkRsaPrivateKey(tt, ts, id, false);

    // The control: the same mechanism and wrapping key do wrap a key that allows it.
    const wrappingKey = sessionWrappingKey(ts);
    const plain = ts.p11.C_GenerateKey(ts.session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
      { type: pkcs11js.CKA_VALUE_LEN, value: 16 },
      { type: pkcs11js.CKA_TOKEN, value: false },
      { type: pkcs11js.CKA_EXTRACTABLE, value: true },
    ]);
    try {
      const wrapped = ts.p11.C_WrapKey(ts.session, { mechanism: pkcs11js.CKM_AES_KEY_WRAP_PAD }, wrappingKey, plain, Buffer.alloc(256));
      tt.equal(wrapped.length, 24, 'CKM_AES_KEY_WRAP_PAD works on an extractable key (so the refusals above are about the keys)');
    } finally {
      ts.p11.C_DestroyObject(ts.session, plain);
      ts.p11.C_DestroyObject(ts.session, wrappingKey);
    }

    // The public half sits next to it: encrypt-only, public.
    const pubs = findObjects(ts, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
      { type: pkcs11js.CKA_LABEL, value: keypair.id },
    ]);
    tt.equal(pubs.length, 1, 'one public key object with the same label');
    const [pubPrivate, pubEncrypt, pubWrap] = ts.p11.C_GetAttributeValue(ts.session, pubs[0] as P11.Handle, [
      { type: pkcs11js.CKA_PRIVATE },
      { type: pkcs11js.CKA_ENCRYPT },
      { type: pkcs11js.CKA_WRAP },
    ]);
    tt.notOk(bool(pubPrivate), 'the public key is not CKA_PRIVATE');
    tt.ok(bool(pubEncrypt), 'the public key encrypts');
    tt.notOk(bool(pubWrap), 'the public key does not wrap');

    // The secrets key: sensitive, never extractable, not readable, not wrappable.
    const secretsKeys = findObjects(ts, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      { type: pkcs11js.CKA_LABEL, value: 'strongroom-secrets' },
    ]);
    tt.equal(secretsKeys.length, 1, 'one secrets key');
    const secretsKey = secretsKeys[0] as P11.Handle;
    const [sensitive, extractable, neverExtractable, token, priv, wrap, unwrap] = ts.p11.C_GetAttributeValue(ts.session, secretsKey, [
      { type: pkcs11js.CKA_SENSITIVE },
      { type: pkcs11js.CKA_EXTRACTABLE },
      { type: pkcs11js.CKA_NEVER_EXTRACTABLE },
      { type: pkcs11js.CKA_TOKEN },
      { type: pkcs11js.CKA_PRIVATE },
      { type: pkcs11js.CKA_WRAP },
      { type: pkcs11js.CKA_UNWRAP },
    ]);
    tt.ok(bool(sensitive), 'secrets key: CKA_SENSITIVE');
    tt.notOk(bool(extractable), 'secrets key: not CKA_EXTRACTABLE');
    tt.ok(bool(neverExtractable), 'secrets key: CKA_NEVER_EXTRACTABLE');
    tt.ok(bool(token), 'secrets key: CKA_TOKEN');
    tt.ok(bool(priv), 'secrets key: CKA_PRIVATE');
    tt.notOk(bool(wrap), 'secrets key: cannot wrap');
    tt.notOk(bool(unwrap), 'secrets key: cannot unwrap');
    tt.equal(
      ckrOf(() => ts.p11.C_GetAttributeValue(ts.session, secretsKey, [{ type: pkcs11js.CKA_VALUE }])),
      pkcs11js.CKR_ATTRIBUTE_SENSITIVE,
      'secrets key: reading CKA_VALUE fails with CKR_ATTRIBUTE_SENSITIVE',
    );
    const wrapper = sessionWrappingKey(ts);
    try {
      tt.equal(
        ckrOf(() => ts.p11.C_WrapKey(ts.session, { mechanism: pkcs11js.CKM_AES_KEY_WRAP_PAD }, wrapper, secretsKey, Buffer.alloc(256))),
        pkcs11js.CKR_KEY_UNEXTRACTABLE,
        'secrets key: wrapping fails with CKR_KEY_UNEXTRACTABLE',
      );
    } finally {
      ts.p11.C_DestroyObject(ts.session, wrapper);
    }
  });

  // The app's login and sessions survived this outside session: it still decrypts.
  const message = randomBytes(32);
  const res = await call('POST', '/decrypt', {
    json: { keypairId: keypair.id, body: encryptFor(keypair.publicKey, constants.RSA_PKCS1_OAEP_PADDING, message) },
  });
  tt.same([res.status, res.json], [200, { body: message.toString('base64') }], 'the service still decrypts');
});

t.test('pkcs11-tool lists the keypair by its UUID label, as a sensitive decrypt-only key', async (tt) => {
  const out = execFileSync(
    'pkcs11-tool',
    ['--module', h.token.modulePath, '--token-label', h.token.label, '--login', '--pin', h.token.pin, '--list-objects'],
    { env: { ...process.env, SOFTHSM2_CONF: h.token.conf }, stdio: ['ignore', 'pipe', 'pipe'] },
  ).toString();
  // Objects are separated by their headers ("Private Key Object; RSA", "Public Key Object; RSA 3072 bits", ...).
  const objects = out.split(/\n(?=\S)/);
  const priv = objects.find((o) => o.startsWith('Private Key Object') && o.includes(`label:      ${keypair.id}`));
  tt.ok(priv, `a private key object labelled ${keypair.id}`, { diagnostic: priv === undefined, found: out });
  tt.match(priv ?? '', new RegExp(`ID:\\s+${keypair.id.replace(/-/g, '')}`), 'its ID is the UUID bytes');
  tt.match(priv ?? '', /Usage:\s+decrypt\s*\n/, 'its usage is decrypt alone');
  tt.match(priv ?? '', /Access:.*\bsensitive\b/, 'it is sensitive');
  tt.notMatch(priv ?? '', /Usage:.*\b(sign|unwrap|derive)\b/, 'it does not sign, unwrap or derive');
  const pub = objects.find((o) => o.startsWith('Public Key Object') && o.includes(`label:      ${keypair.id}`));
  tt.ok(pub, 'and its public key object');
  tt.ok(objects.some((o) => o.startsWith('Secret Key Object') && o.includes('label:      strongroom-secrets')), 'the secrets key is listed');
});
