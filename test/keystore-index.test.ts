// The key index built at open: no decrypt searches the token for a key that was there at open,
// and a key another instance creates later is still found (by one search, then cached).
import { randomBytes, randomUUID } from 'node:crypto';
import t from 'tap';
import { openPkcs11KeyStore, type Pkcs11KeyStore } from '../hsm/index.js';
import { nodeEncrypt, nodeRsaComponents } from './helpers/keystore-util.js';
import { createTestToken } from './helpers/token.js';

const token = createTestToken();
const open = (): Promise<Pkcs11KeyStore> =>
  openPkcs11KeyStore({ modulePath: token.modulePath, tokenLabel: token.label, pin: token.pin, sessions: 2 });

const writer = await open();
t.teardown(() => writer.close());
const before = Array.from({ length: 3 }, () => randomUUID());
const pubs = new Map<string, Awaited<ReturnType<Pkcs11KeyStore['importRsaKeyPair']>>>();
for (const id of before) pubs.set(id, await writer.importRsaKeyPair(id, nodeRsaComponents(2048)));

t.test('keys present at open are decrypted without any object search', async (t) => {
  const reader = await open();
  t.teardown(() => reader.close());
  t.equal(reader.stats().objectSearches, 1, 'one search at open: the index');
  for (const id of before) {
    const message = randomBytes(32);
    const pub = pubs.get(id);
    if (!pub) throw new Error('missing public key');
    t.same(await reader.rsaDecrypt(id, 'oaep-sha1', nodeEncrypt(pub, 'oaep-sha1', message)), message, `key ${id} decrypts`);
  }
  t.equal(reader.stats().objectSearches, 1, 'first decrypts of three keys searched nothing');
  t.equal(await reader.rsaModulusBytes(before[0] as string), 256, 'the index holds the modulus length');
});

t.test('a key created by another instance after open is found by one search, then cached', async (t) => {
  const reader = await open();
  t.teardown(() => reader.close());
  const later = randomUUID();
  const pub = await writer.importRsaKeyPair(later, nodeRsaComponents(2048));
  const message = randomBytes(32);
  const ciphertext = nodeEncrypt(pub, 'oaep-sha1', message);
  const searches = reader.stats().objectSearches;
  t.same(await reader.rsaDecrypt(later, 'oaep-sha1', ciphertext), message, 'the later key decrypts');
  t.equal(reader.stats().objectSearches, searches + 1, 'the index missed: one search');
  t.same(await reader.rsaDecrypt(later, 'oaep-sha1', ciphertext), message, 'and again');
  t.equal(reader.stats().objectSearches, searches + 1, 'then it is cached: no further search');

  const unknown = randomUUID();
  await t.rejects(reader.rsaDecrypt(unknown, 'oaep-sha1', ciphertext), { code: 'HSM_ERR_KEY_NOT_FOUND' }, 'an unknown id is not found');
});

t.test('a key this instance creates is added to the index', async (t) => {
  const own = await open();
  t.teardown(() => own.close());
  const id = randomUUID();
  const pub = await own.importRsaKeyPair(id, nodeRsaComponents(2048));
  const searches = own.stats().objectSearches;
  const message = randomBytes(32);
  t.same(await own.rsaDecrypt(id, 'oaep-sha1', nodeEncrypt(pub, 'oaep-sha1', message)), message, 'it decrypts');
  t.equal(own.stats().objectSearches, searches, 'without a search');
});
