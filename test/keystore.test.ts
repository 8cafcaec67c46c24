// The PKCS#11 KeyStore against a real SoftHSM token, with Node's crypto, the openssl CLI,
// pkcs11-tool and pkcs11js itself as independent peers. All on a real token.
import { spawnSync } from 'node:child_process';
import { randomBytes, randomUUID, createPublicKey } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { inspect } from 'node:util';
import t from 'tap';
import { HsmError, openPkcs11KeyStore, type HsmErrorCode, type KeyStore, type RsaPublicKey } from '../hsm/index.js';
import {
  countKeyObjects,
  countSecretsKeys,
  fromBigInt,
  nodeEncrypt,
  nodeRsaComponents,
  opensslEncrypt,
  parseObjectList,
  pkcs11Tool,
  readPrivateExponent,
  rawRsaEncrypt,
  toBigInt,
} from './helpers/keystore-util.js';
import { createTestToken, type TestToken } from './helpers/token.js';

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

// SoftHSM scans its token directory at C_Initialize: every token first, then the key stores.
const mainToken = createTestToken();
const freshToken = createTestToken();
const pinToken = createTestToken();

const work = mkdtempSync(join(tmpdir(), 'strongroom-keystore-'));
const open = (token: TestToken, sessions: number) =>
  openPkcs11KeyStore({ modulePath: token.modulePath, tokenLabel: token.label, pin: token.pin, sessions });

const store = await open(mainToken, 4);
t.teardown(async () => {
  await store.close();
  rmSync(work, { recursive: true, force: true });
});

const keyId = randomUUID();
let pub: RsaPublicKey;

/** Await a promise that must reject with an HsmError of `code`; returns the error. */
async function rejectsWith(t: Tap, promise: Promise<unknown>, code: HsmErrorCode, what: string): Promise<HsmError | undefined> {
  try {
    await promise;
  } catch (err) {
    t.ok(err instanceof HsmError, `${what}: rejects with an HsmError`);
    t.equal((err as { code?: unknown }).code, code, `${what}: ${code}`);
    return err instanceof HsmError ? err : undefined;
  }
  t.fail(`${what}: resolved, expected ${code}`);
  return undefined;
}

function samePublicKey(t: Tap, actual: RsaPublicKey | undefined, expected: RsaPublicKey, what: string): void {
  t.ok(actual !== undefined, `${what}: present`);
  t.equal(actual?.modulus.toString('hex'), expected.modulus.toString('hex'), `${what}: same modulus`);
  t.equal(actual?.publicExponent.toString('hex'), expected.publicExponent.toString('hex'), `${what}: same exponent`);
}

/** Ciphertexts whose padding is certainly wrong (a random one would decode by chance ~1/256 for PKCS#1). */
function badOaepCiphertext(): Buffer {
  // RFC 8017 §7.1.2 step 3g: the first octet of EM must be 0x00.
  return rawRsaEncrypt(pub, Buffer.concat([Buffer.from([0x01]), randomBytes(383)]));
}
function badPkcs1Ciphertext(): Buffer {
  // RFC 8017 §7.2.2 step 3: block type 0x01 (signature padding) instead of 0x02. SoftHSM here uses
  // OpenSSL 3.0, which reports this; OpenSSL ≥ 3.2 "implicit rejection" would return a random message.
  return rawRsaEncrypt(pub, Buffer.concat([Buffer.from([0x00, 0x01]), Buffer.alloc(339, 0xff), Buffer.from([0x00]), randomBytes(42)]));
}

t.test('generateRsaKeyPair creates one RSA-3072 pair per id, e = 65537', async (t) => {
  pub = await store.generateRsaKeyPair(keyId, 3072);
  t.equal(pub.modulus.length, 384, 'n is 384 bytes');
  t.ok((pub.modulus[0] ?? 0) >= 0x80, 'n has its top bit set: a full 3072-bit modulus');
  t.equal(pub.publicExponent.toString('hex'), '010001', 'e = 65537');
  const details = createPublicKey({
    key: { kty: 'RSA', n: pub.modulus.toString('base64url'), e: pub.publicExponent.toString('base64url') },
    format: 'jwk',
  }).asymmetricKeyDetails;
  t.equal(details?.modulusLength, 3072, 'Node reads a 3072-bit key');
  t.equal(details?.publicExponent, 65537n);

  await rejectsWith(t, store.generateRsaKeyPair(keyId, 3072), 'HSM_ERR_KEY_EXISTS', 'a second generate with the same id');
  t.equal(countKeyObjects(mainToken, keyId), 2, 'the token holds exactly one private and one public object for the id');

  samePublicKey(t, await store.getRsaPublicKey(keyId), pub, 'getRsaPublicKey');
  t.equal(await store.rsaModulusBytes(keyId), 384);
  t.ok((await store.listKeyPairIds()).includes(keyId), 'listKeyPairIds includes it');
  await rejectsWith(t, store.generateRsaKeyPair(randomUUID(), 1000), 'HSM_ERR_INPUT', 'a 1000-bit modulus');
});

t.test('deleteKeyPair removes both halves; a second store sees the deletion', async (t) => {
  const id = randomUUID();
  const tmpPub = await store.generateRsaKeyPair(id, 2048);
  t.equal(countKeyObjects(mainToken, id), 2);
  // A second store that has cached the key's handle before it is destroyed elsewhere.
  const other = await open(mainToken, 1);
  t.teardown(() => other.close());
  const message = randomBytes(24);
  t.same(await other.rsaDecrypt(id, 'oaep-sha1', nodeEncrypt(tmpPub, 'oaep-sha1', message)), message);

  t.equal(await store.deleteKeyPair(id), true, 'deleted');
  t.equal(countKeyObjects(mainToken, id), 0, 'no object with the id is left in the token (private and public)');
  t.equal(await store.deleteKeyPair(id), false, 'a second delete finds nothing');
  t.equal(await store.getRsaPublicKey(id), undefined, 'getRsaPublicKey → undefined');
  t.notOk((await store.listKeyPairIds()).includes(id), 'listKeyPairIds no longer includes it');
  const ciphertext = nodeEncrypt(tmpPub, 'oaep-sha1', message);
  await rejectsWith(t, store.rsaDecrypt(id, 'oaep-sha1', ciphertext), 'HSM_ERR_KEY_NOT_FOUND', 'rsaDecrypt after delete');
  await rejectsWith(t, store.rsaModulusBytes(id), 'HSM_ERR_KEY_NOT_FOUND', 'rsaModulusBytes after delete');
  await rejectsWith(t, other.rsaDecrypt(id, 'oaep-sha1', ciphertext), 'HSM_ERR_KEY_NOT_FOUND', 'the other store (stale cached handle)');
  t.equal(await other.getRsaPublicKey(id), undefined, 'the other store: getRsaPublicKey → undefined');
  await rejectsWith(t, store.rsaDecrypt(randomUUID(), 'oaep-sha1', ciphertext), 'HSM_ERR_KEY_NOT_FOUND', 'a never-created id');
  await rejectsWith(t, store.rsaDecrypt('not-a-uuid', 'oaep-sha1', ciphertext), 'HSM_ERR_KEY_NOT_FOUND', 'an id that is not a UUID');
});

t.test('rsaDecrypt OAEP-SHA1 opens ciphertexts from Node and from openssl', async (t) => {
  const cases: Array<[string, Buffer]> = [
    ['a 32-byte recording key', randomBytes(32)],
    ['the empty message', Buffer.alloc(0)],
    ['the longest message, k - 42 = 342 bytes', randomBytes(342)],
  ];
  for (const [what, message] of cases) {
    const fromNode = await store.rsaDecrypt(keyId, 'oaep-sha1', nodeEncrypt(pub, 'oaep-sha1', message));
    t.equal(fromNode.toString('hex'), message.toString('hex'), `Node ciphertext, ${what}`);
    const fromOpenssl = await store.rsaDecrypt(keyId, 'oaep-sha1', opensslEncrypt(work, pub, 'oaep-sha1', message));
    t.equal(fromOpenssl.toString('hex'), message.toString('hex'), `openssl ciphertext, ${what}`);
  }
});

t.test('rsaDecrypt PKCS#1 v1.5 opens ciphertexts from Node and from openssl', async (t) => {
  const cases: Array<[string, Buffer]> = [
    ['a 32-byte recording key', randomBytes(32)],
    ['the empty message', Buffer.alloc(0)],
    ['the longest message, k - 11 = 373 bytes', randomBytes(373)],
  ];
  for (const [what, message] of cases) {
    const fromNode = await store.rsaDecrypt(keyId, 'pkcs1', nodeEncrypt(pub, 'pkcs1', message));
    t.equal(fromNode.toString('hex'), message.toString('hex'), `Node ciphertext, ${what}`);
    const fromOpenssl = await store.rsaDecrypt(keyId, 'pkcs1', opensslEncrypt(work, pub, 'pkcs1', message));
    t.equal(fromOpenssl.toString('hex'), message.toString('hex'), `openssl ciphertext, ${what}`);
  }
});

t.test('a ciphertext of the wrong length is refused before the token', async (t) => {
  await store.rsaModulusBytes(keyId);
  const before = store.stats();
  for (const padding of ['oaep-sha1', 'pkcs1'] as const) {
    for (const length of [0, 383, 385]) {
      const what = `${padding}, ${length} bytes`;
      const err = await rejectsWith(t, store.rsaDecrypt(keyId, padding, randomBytes(length)), 'HSM_ERR_INPUT', what);
      t.equal(err?.ckr, undefined, `${padding}, ${length} bytes: no PKCS#11 return value (the token never saw it)`);
    }
  }
  // A token refusal would have replaced a session; a lookup would have searched.
  t.same(store.stats(), before, 'no session replaced, no object search: the token was not touched');
  const message = randomBytes(16);
  t.same(await store.rsaDecrypt(keyId, 'oaep-sha1', nodeEncrypt(pub, 'oaep-sha1', message)), message, 'the store still decrypts');
});

t.test('every token refusal is HSM_ERR_DECRYPT', async (t) => {
  const refusals: Array<[string, 'oaep-sha1' | 'pkcs1', Buffer]> = [
    ['OAEP with a non-zero first octet', 'oaep-sha1', badOaepCiphertext()],
    ['PKCS#1 with block type 1', 'pkcs1', badPkcs1Ciphertext()],
    ['a PKCS#1 ciphertext decrypted as OAEP', 'oaep-sha1', nodeEncrypt(pub, 'pkcs1', randomBytes(32))],
    ['OAEP, ciphertext ≥ n', 'oaep-sha1', Buffer.alloc(384, 0xff)],
    ['PKCS#1, ciphertext ≥ n', 'pkcs1', Buffer.alloc(384, 0xff)],
    ['PKCS#1, ciphertext 0', 'pkcs1', Buffer.alloc(384, 0)],
  ];
  for (const [what, padding, ciphertext] of refusals) {
    await rejectsWith(t, store.rsaDecrypt(keyId, padding, ciphertext), 'HSM_ERR_DECRYPT', what);
  }
  t.equal(store.stats().sessionsOpen, 4, 'the pool is still full');
});

t.test('a refused decrypt keeps its session (the token ended the operation) and the next decrypts succeed', async (t) => {
  // One session: had the refusal left an operation active, the next decrypt would fail on it.
  const single = await open(mainToken, 1);
  t.teardown(() => single.close());
  const message = randomBytes(32);
  const good = nodeEncrypt(pub, 'oaep-sha1', message);
  t.same(await single.rsaDecrypt(keyId, 'oaep-sha1', good), message, 'first decrypt');
  t.same(single.stats().sessionsReplaced, 0);
  for (let i = 1; i <= 3; i += 1) {
    const bad = i % 2 ? single.rsaDecrypt(keyId, 'oaep-sha1', badOaepCiphertext()) : single.rsaDecrypt(keyId, 'pkcs1', badPkcs1Ciphertext());
    await rejectsWith(t, bad, 'HSM_ERR_DECRYPT', `bad decrypt ${i}`);
    t.equal(single.stats().sessionsReplaced, 0, 'no session replaced');
    t.equal(single.stats().sessionsOpen, 1, 'sessionsOpen stays at the pool size (1)');
    t.same(await single.rsaDecrypt(keyId, 'oaep-sha1', good), message, `the decrypt after bad decrypt ${i} succeeds`);
    const pkcs1Message = randomBytes(20);
    t.same(await single.rsaDecrypt(keyId, 'pkcs1', nodeEncrypt(pub, 'pkcs1', pkcs1Message)), pkcs1Message, `and a PKCS#1 one too`);
  }
});

t.test('200 alternating bad and good decrypts at once: every answer right', async (t) => {
  const before = store.stats();
  const jobs = Array.from({ length: 200 }, (_, i) => {
    if (i % 2 === 0) {
      const message = randomBytes(32);
      const padding = i % 4 === 0 ? 'oaep-sha1' : 'pkcs1';
      return { bad: false, message, padding, ciphertext: nodeEncrypt(pub, padding, message) } as const;
    }
    return i % 4 === 1
      ? ({ bad: true, message: undefined, padding: 'oaep-sha1', ciphertext: badOaepCiphertext() } as const)
      : ({ bad: true, message: undefined, padding: 'pkcs1', ciphertext: badPkcs1Ciphertext() } as const);
  });
  const results = await Promise.allSettled(jobs.map((j) => store.rsaDecrypt(keyId, j.padding, j.ciphertext)));
  let goodRight = 0;
  let badRefused = 0;
  results.forEach((r, i) => {
    const job = jobs[i];
    if (!job) return;
    if (!job.bad && r.status === 'fulfilled' && r.value.equals(job.message)) goodRight += 1;
    if (job.bad && r.status === 'rejected' && r.reason instanceof HsmError && r.reason.code === 'HSM_ERR_DECRYPT') badRefused += 1;
  });
  t.equal(goodRight, 100, 'all 100 good decrypts returned their plaintext');
  t.equal(badRefused, 100, 'all 100 bad decrypts were refused with HSM_ERR_DECRYPT');
  t.equal(store.stats().sessionsReplaced - before.sessionsReplaced, 0, 'no session replaced by a refusal');
  t.equal(store.stats().sessionsOpen, 4, 'sessionsOpen stays at the pool size (4)');
});

t.test('the key handle is cached: warm decrypts search no objects', async (t) => {
  const fresh = await open(mainToken, 2);
  t.teardown(() => fresh.close());
  t.equal(fresh.stats().objectSearches, 1, 'a new store has searched once: the key index built at open');
  const message = randomBytes(32);
  const ciphertext = nodeEncrypt(pub, 'oaep-sha1', message);
  t.same(await fresh.rsaDecrypt(keyId, 'oaep-sha1', ciphertext), message);
  t.equal(fresh.stats().objectSearches, 1, 'the first decrypt found the key in the index, no search');
  const results = await Promise.all(Array.from({ length: 100 }, () => fresh.rsaDecrypt(keyId, 'oaep-sha1', ciphertext)));
  t.ok(results.every((r) => r.equals(message)), '100 more decrypts are right');
  t.equal(fresh.stats().objectSearches, 1, '100 more decrypts performed no object search');

  const before = store.stats().objectSearches;
  for (let i = 0; i < 100; i += 1) await store.rsaDecrypt(keyId, 'pkcs1', nodeEncrypt(pub, 'pkcs1', message));
  t.equal(store.stats().objectSearches, before, 'the same on the main store, one after another');
});

t.test('400 concurrent decrypts on 4 sessions do not block the event loop', async (t) => {
  const messages = Array.from({ length: 400 }, () => randomBytes(32));
  const ciphertexts = messages.map((m) => nodeEncrypt(pub, 'oaep-sha1', m));
  await store.rsaModulusBytes(keyId);
  const histogram = monitorEventLoopDelay({ resolution: 10 });
  histogram.enable();
  // Prime the monitor: its first timer firing records nothing, only later (late) firings do.
  await sleep(50);
  const started = performance.now();
  const results = await Promise.all(ciphertexts.map((c) => store.rsaDecrypt(keyId, 'oaep-sha1', c)));
  const elapsed = performance.now() - started;
  // Let the sampling timer fire once more: after a blocked loop, that late firing records the block.
  await sleep(50);
  histogram.disable();
  t.equal(results.filter((r, i) => r.equals(messages[i] as Buffer)).length, 400, 'all 400 plaintexts are right');
  t.equal(store.stats().sessionsOpen, 4, 'still 4 sessions');
  const maxMs = histogram.max / 1e6;
  t.ok(
    maxMs < 200,
    `event-loop delay peaked at ${maxMs.toFixed(1)} ms while 400 RSA-3072 decrypts took ${elapsed.toFixed(0)} ms: ` +
      'C_Decrypt must run on the libuv thread pool (C_DecryptAsync). A synchronous C_Decrypt blocks the loop ' +
      'for the whole batch (> 1 s at ~360 decrypts/s per session), so the peak must stay under 200 ms',
  );
});

t.test('importRsaKeyPair takes a Node-generated key and refuses broken ones', async (t) => {
  const components = nodeRsaComponents(3072);
  const importedPub = { modulus: components.modulus, publicExponent: components.publicExponent };
  const importId = randomUUID();
  samePublicKey(t, await store.importRsaKeyPair(importId, components), importedPub, 'import returns the public half');
  samePublicKey(t, await store.getRsaPublicKey(importId), importedPub, 'getRsaPublicKey');
  t.equal(await store.rsaModulusBytes(importId), 384);
  t.ok((await store.listKeyPairIds()).includes(importId), 'listKeyPairIds includes it');
  t.equal(countKeyObjects(mainToken, importId), 2, 'private and public objects in the token');
  t.equal(readPrivateExponent(mainToken, importId), 'CKR_ATTRIBUTE_SENSITIVE', 'the imported private exponent is sensitive');
  for (const padding of ['oaep-sha1', 'pkcs1'] as const) {
    const message = randomBytes(32);
    const plain = await store.rsaDecrypt(importId, padding, nodeEncrypt(importedPub, padding, message));
    t.equal(plain.toString('hex'), message.toString('hex'), `decrypts a Node ${padding} ciphertext`);
  }
  await rejectsWith(t, store.importRsaKeyPair(importId, components), 'HSM_ERR_KEY_EXISTS', 'a second import under the same id');
  await rejectsWith(
    t,
    store.rsaDecrypt(keyId, 'oaep-sha1', nodeEncrypt(importedPub, 'oaep-sha1', randomBytes(32))),
    'HSM_ERR_DECRYPT',
    'a ciphertext for the imported key, decrypted with the generated one (wrong key)',
  );

  const flip = (b: Buffer, at: number): Buffer => {
    const copy = Buffer.from(b);
    copy[at] = (copy[at] ?? 0) ^ 0x10;
    return copy;
  };
  const d = flip(components.privateExponent, 100);
  const p = toBigInt(components.prime1);
  const q = toBigInt(components.prime2);
  const broken: Array<[string, typeof components]> = [
    ['a flipped byte in the private exponent', { ...components, privateExponent: d }],
    ['a flipped byte in prime1', { ...components, prime1: flip(components.prime1, 50) }],
    [
      // Passes every arithmetic check (CRT exponents recomputed from the bad d): only the round trip catches it.
      'a wrong private exponent with matching CRT exponents',
      {
        ...components,
        privateExponent: d,
        exponent1: fromBigInt(toBigInt(d) % (p - 1n)),
        exponent2: fromBigInt(toBigInt(d) % (q - 1n)),
      },
    ],
  ];
  for (const [what, key] of broken) {
    const id = randomUUID();
    await rejectsWith(t, store.importRsaKeyPair(id, key), 'HSM_ERR_KEY_INVALID', what);
    t.equal(countKeyObjects(mainToken, id), 0, `${what}: nothing left in the token under the id`);
    t.equal(await store.getRsaPublicKey(id), undefined, `${what}: getRsaPublicKey → undefined`);
    t.notOk((await store.listKeyPairIds()).includes(id), `${what}: not listed`);
  }

  const small = randomUUID();
  await rejectsWith(t, store.importRsaKeyPair(small, nodeRsaComponents(1024)), 'HSM_ERR_INPUT', 'a 1024-bit key');
  t.equal(countKeyObjects(mainToken, small), 0, 'the 1024-bit key left nothing in the token');
});

t.test('sealSecret/openSecret: AES-GCM under the token key, bound to its context', async (t) => {
  await store.ensureServiceKeys();
  const secret = randomBytes(32);
  const sealed = await store.sealSecret(secret, 'hawk:genesys-cloud-1');
  t.equal(sealed.length, 1 + 12 + 32 + 16, 'version ‖ 12-byte IV ‖ ciphertext ‖ 16-byte tag');
  t.equal(sealed[0], 0x01, 'version 1');
  t.notOk(sealed.includes(secret), 'the secret does not appear in the blob');
  t.equal((await store.openSecret(sealed, 'hawk:genesys-cloud-1')).toString('hex'), secret.toString('hex'), 'round trip');

  const again = await store.sealSecret(secret, 'hawk:genesys-cloud-1');
  t.notOk(again.equals(sealed), 'two seals of the same secret differ');
  t.notOk(again.subarray(1, 13).equals(sealed.subarray(1, 13)), 'because the IV is random');
  t.equal((await store.openSecret(again, 'hawk:genesys-cloud-1')).toString('hex'), secret.toString('hex'), 'the second opens too');

  await rejectsWith(t, store.openSecret(sealed, 'hawk:genesys-cloud-2'), 'HSM_ERR_SECRET_INVALID', 'wrong context');
  await rejectsWith(t, store.openSecret(sealed, ''), 'HSM_ERR_SECRET_INVALID', 'empty context');
  let refused = 0;
  for (let at = 0; at < sealed.length; at += 1) {
    const tampered = Buffer.from(sealed);
    tampered[at] = (tampered[at] ?? 0) ^ 0x01;
    try {
      await store.openSecret(tampered, 'hawk:genesys-cloud-1');
    } catch (err) {
      if (err instanceof HsmError && err.code === 'HSM_ERR_SECRET_INVALID') refused += 1;
    }
  }
  t.equal(refused, sealed.length, `a flipped bit in any of the ${sealed.length} bytes (version, IV, body, tag) is refused`);
  const malformed: Array<[string, Buffer]> = [
    ['truncated below IV + tag', sealed.subarray(0, 28)],
    ['one byte short', sealed.subarray(0, sealed.length - 1)],
    ['empty', Buffer.alloc(0)],
  ];
  for (const [what, blob] of malformed) {
    await rejectsWith(t, store.openSecret(blob, 'hawk:genesys-cloud-1'), 'HSM_ERR_SECRET_INVALID', what);
  }
  t.equal(store.stats().sessionsOpen, 4, 'the pool is still full');
  const reopened = await store.openSecret(sealed, 'hawk:genesys-cloud-1');
  t.equal(reopened.toString('hex'), secret.toString('hex'), 'and still opens the good blob');
});

t.test('service keys: missing on a fresh token, created once by ensureServiceKeys', async (t) => {
  const blobFromMain = await store.sealSecret(Buffer.from('config value'), 'crypt:db-password');
  const fresh = await open(freshToken, 2);
  t.teardown(() => fresh.close());
  t.equal(countSecretsKeys(freshToken), 0, 'a fresh token has no secrets key');
  await rejectsWith(t, fresh.sealSecret(Buffer.from('x'), 'ctx'), 'HSM_ERR_KEY_NOT_FOUND', 'sealSecret before ensureServiceKeys');
  await rejectsWith(
    t,
    fresh.openSecret(blobFromMain, 'crypt:db-password'),
    'HSM_ERR_KEY_NOT_FOUND',
    'openSecret before ensureServiceKeys',
  );

  await fresh.ensureServiceKeys();
  t.equal(countSecretsKeys(freshToken), 1, 'one secrets key after ensureServiceKeys');
  await fresh.ensureServiceKeys();
  t.equal(countSecretsKeys(freshToken), 1, 'still one after a second ensureServiceKeys');
  const second = await open(freshToken, 1);
  t.teardown(() => second.close());
  await second.ensureServiceKeys();
  t.equal(countSecretsKeys(freshToken), 1, 'still one after another store ensures it');

  const sealed = await fresh.sealSecret(Buffer.from('config value'), 'crypt:db-password');
  const opened = await second.openSecret(sealed, 'crypt:db-password');
  t.equal(opened.toString(), 'config value', 'sealed by one store, opened by another on the same token');
  await rejectsWith(t, fresh.openSecret(blobFromMain, 'crypt:db-password'), 'HSM_ERR_SECRET_INVALID', 'a blob from another token');
});

t.test('opening: unknown label, wrong PIN and missing module are reported by code', async (t) => {
  const unknown = await rejectsWith(
    t,
    openPkcs11KeyStore({ modulePath: mainToken.modulePath, tokenLabel: 'no-such-token', pin: mainToken.pin, sessions: 1 }),
    'HSM_ERR_TOKEN_NOT_FOUND',
    'unknown token label',
  );
  for (const label of [mainToken.label, freshToken.label, pinToken.label]) {
    t.ok(unknown?.message.includes(label), `the message lists the token present: ${label}`);
  }

  // A token of its own: a wrong PIN counts against the token's retry counter on real HSMs.
  const wrongPin = randomBytes(8).toString('hex');
  const login = await rejectsWith(
    t,
    openPkcs11KeyStore({ modulePath: pinToken.modulePath, tokenLabel: pinToken.label, pin: wrongPin, sessions: 2 }),
    'HSM_ERR_LOGIN',
    'wrong PIN',
  );
  t.equal(login?.ckr, 'CKR_PIN_INCORRECT');
  t.notOk(login?.message.includes(wrongPin), 'the message does not contain the PIN');
  t.notOk(inspect(login, { depth: 10 }).includes(wrongPin), 'nor does the error object, its stack or its cause');
  const right = await open(pinToken, 1);
  t.equal(right.token.label, pinToken.label, 'the right PIN still opens the token afterwards');
  await right.close();

  await rejectsWith(
    t,
    openPkcs11KeyStore({
      modulePath: join(work, 'no-such-libsofthsm2.so'),
      tokenLabel: mainToken.label,
      pin: mainToken.pin,
      sessions: 1,
    }),
    'HSM_ERR_MODULE',
    'missing module path',
  );

  const message = randomBytes(16);
  const plain = await store.rsaDecrypt(keyId, 'oaep-sha1', nodeEncrypt(pub, 'oaep-sha1', message));
  t.same(plain, message, 'the failed opens (module references released) left the open store working');
});

t.test('close(): later calls fail with HSM_ERR_UNAVAILABLE; another store on the token keeps working', async (t) => {
  const sealed = await store.sealSecret(Buffer.from('s'), 'ctx');
  const closing: KeyStore = await open(mainToken, 2);
  const message = randomBytes(16);
  t.same(await closing.rsaDecrypt(keyId, 'oaep-sha1', nodeEncrypt(pub, 'oaep-sha1', message)), message, 'works before close');
  t.equal((await closing.openSecret(sealed, 'ctx')).toString(), 's');
  await closing.close();
  t.equal(closing.stats().sessionsOpen, 0, 'every session closed');

  const calls: Array<[string, () => Promise<unknown>]> = [
    ['rsaDecrypt', () => closing.rsaDecrypt(keyId, 'oaep-sha1', nodeEncrypt(pub, 'oaep-sha1', message))],
    ['getRsaPublicKey', () => closing.getRsaPublicKey(keyId)],
    ['rsaModulusBytes', () => closing.rsaModulusBytes(keyId)],
    ['listKeyPairIds', () => closing.listKeyPairIds()],
    ['generateRsaKeyPair', () => closing.generateRsaKeyPair(randomUUID(), 2048)],
    ['importRsaKeyPair', () => closing.importRsaKeyPair(randomUUID(), nodeRsaComponents(2048))],
    ['deleteKeyPair', () => closing.deleteKeyPair(keyId)],
    ['ensureServiceKeys', () => closing.ensureServiceKeys()],
    ['sealSecret', () => closing.sealSecret(Buffer.from('s'), 'ctx')],
    ['openSecret', () => closing.openSecret(sealed, 'ctx')],
  ];
  for (const [name, call] of calls) await rejectsWith(t, call(), 'HSM_ERR_UNAVAILABLE', `${name} after close`);
  await closing.close();
  t.pass('a second close() resolves');

  t.same(await store.rsaDecrypt(keyId, 'oaep-sha1', nodeEncrypt(pub, 'oaep-sha1', message)), message, 'the other store still decrypts');
  t.equal((await store.openSecret(sealed, 'ctx')).toString(), 's', 'and still opens secrets');
  t.equal(store.stats().sessionsOpen, 4);
  t.equal(countKeyObjects(mainToken, keyId), 2, 'the deleteKeyPair after close destroyed nothing');
});

t.test('close() with decrypts in flight: no crash, each one answers or is UNAVAILABLE', async (t) => {
  const child = join(dirname(fileURLToPath(import.meta.url)), 'helpers', 'keystore-close-child.js');
  // The child's token directory goes under TMPDIR: inside `work`, so it is removed even after a crash.
  const childTmp = mkdtempSync(join(work, 'child-'));
  const run = spawnSync(process.execPath, ['--enable-source-maps', child], {
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, TMPDIR: childTmp },
  });
  t.equal(
    run.signal,
    null,
    `the process was not killed by a signal (got ${run.signal}): close() must not finalise the module under running operations`,
  );
  t.equal(run.status, 0, `exit code 0; stderr: ${run.stderr.slice(0, 2000)}`);
  const lastLine = run.stdout.trim().split('\n').pop() ?? '';
  let report: { rounds: number; ok: number; unavailable: number; other: string[]; sessionsOpenAfter: number[] } | undefined;
  try {
    report = JSON.parse(lastLine) as typeof report;
  } catch {
    report = undefined;
  }
  t.ok(report, 'the child reported its results');
  if (!report) return;
  t.equal(
    report.ok + report.unavailable,
    report.rounds * 40,
    'every in-flight decrypt either returned the right plaintext or HSM_ERR_UNAVAILABLE',
  );
  t.same(report.other, [], 'no other outcome');
  t.same(report.sessionsOpenAfter, Array(report.rounds).fill(0), 'no session left open once everything settled');
});

t.test('pkcs11-tool sees the key under its UUID and reads the same public key', async (t) => {
  const hexId = keyId.replace(/-/g, '');
  const privs = parseObjectList(pkcs11Tool(mainToken, ['--list-objects', '--type', 'privkey']).toString());
  const priv = privs.find((o) => o.fields.label === keyId);
  t.ok(priv, 'a private key labelled with the UUID');
  t.match(priv?.kind ?? '', /^Private Key Object; RSA/);
  t.equal(priv?.fields.ID, hexId, 'its ID is the UUID in hex');
  t.equal(priv?.fields.Usage, 'decrypt', 'decrypt is its only usage');
  t.match(priv?.fields.Access ?? '', /\bsensitive\b/, 'sensitive');
  t.match(priv?.fields.Access ?? '', /\blocal\b/, 'generated in the token (local)');

  const pubs = parseObjectList(pkcs11Tool(mainToken, ['--list-objects', '--type', 'pubkey']).toString());
  const pubObject = pubs.find((o) => o.fields.label === keyId);
  t.match(pubObject?.kind ?? '', /^Public Key Object; RSA 3072 bits/);
  t.equal(pubObject?.fields.ID, hexId);

  const out = join(work, 'pub.der');
  pkcs11Tool(mainToken, ['--read-object', '--type', 'pubkey', '--id', hexId, '--output-file', out]);
  const jwk = createPublicKey({ key: readFileSync(out), format: 'der', type: 'spki' }).export({ format: 'jwk' });
  t.equal(jwk.n, pub.modulus.toString('base64url'), 'pkcs11-tool reads the modulus the KeyStore returned');
  t.equal(jwk.e, pub.publicExponent.toString('base64url'), 'and the public exponent');

  // pkcs11-tool cannot read private keys at all, so ask the token directly, logged in as the user.
  t.equal(readPrivateExponent(mainToken, keyId), 'CKR_ATTRIBUTE_SENSITIVE', 'the private exponent cannot be read out of the token');
});
