// Issue 9 item 2 over HTTP: a keypair the database lists but the token does not show this instance
// (another instance's key not yet visible, or a key really lost) is a 503 with Retry-After and the
// catalogue code KEY_ERR_NOT_YET_VISIBLE, never a 500. The miss is answered from memory for about
// a second (each miss is a token search and may re-initialise the library) and logged once per
// window. A row without its key is what a lost key looks like, so it is made that way here.
import { constants, createPublicKey, generateKeyPairSync, publicEncrypt, randomBytes, randomUUID } from 'node:crypto';
import t from 'tap';
import { KeypairRepository } from '../src/db/keypairs.js';
import { hawkFetch, send, type ClientCredential } from './helpers/hawk-client.js';
import { startHarness } from './helpers/harness.js';

t.setTimeout(120_000);
const h = await startHarness(t, { captureLog: true });
const credential: ClientCredential = await h.register('key-not-visible');

const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 3072 });
const id = randomUUID();
await new KeypairRepository(h.db).insert({
  id,
  publicKey: publicKey.export({ format: 'der', type: 'pkcs1' }),
  modulusBits: 3072,
  dateCreated: new Date(),
  owner: credential.id,
});
const ciphertext = () =>
  publicEncrypt({ key: publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, randomBytes(32)).toString('base64');
const decrypt = () => hawkFetch({ method: 'POST', url: `${h.base}/decrypt`, credential, json: { keypairId: id, body: ciphertext() } });
const runtime = async () =>
  (await send('GET', `${h.origin}/admin/v1/runtime`, { headers: { authorization: `Bearer ${h.adminToken}` } })).json as {
    keyStore: { tokenRefreshes: number };
  };
const missLines = () => h.logs.filter((l) => l.includes('KEY_ERR_NOT_YET_VISIBLE') && l.includes(id) && l.includes('"level":40')).length;

t.test('a listed keypair whose key the token does not show: 503, Retry-After, catalogue code', async (t) => {
  const res = await decrypt();
  t.equal(res.status, 503, res.text);
  t.equal(res.headers.get('strongroom-error-code'), 'KEY_ERR_NOT_YET_VISIBLE');
  t.ok(Number(res.headers.get('retry-after')) >= 1, 'Retry-After in whole seconds');
  t.same(res.json, { message: 'The key pair is not yet available here; retry shortly', status: 503 });
  t.equal(missLines(), 1, 'the miss is logged once');
});

t.test('within the miss window: answered from memory, no token refresh, no further log line', async (t) => {
  const before = (await runtime()).keyStore.tokenRefreshes;
  const statuses = [];
  for (let i = 0; i < 20; i++) statuses.push((await decrypt()).status);
  t.same(new Set(statuses), new Set([503]));
  const after = (await runtime()).keyStore.tokenRefreshes;
  // 20 requests in well under the 1 s window, but a loaded machine may cross one boundary.
  t.ok(after - before <= 1, `token refreshes during 20 misses: ${after - before}`);
  t.ok(missLines() <= 2, `miss log lines: ${missLines()}`);
});

t.test('GET /keypair/{id} still lists it (the database is the source of truth for metadata)', async (t) => {
  const res = await hawkFetch({ method: 'GET', url: `${h.base}/keypair/${id}`, credential });
  t.equal(res.status, 200, res.text);
});

t.test('the other keypairs are unaffected', async (t) => {
  const created = await hawkFetch({ method: 'POST', url: `${h.base}/keypair`, credential });
  t.equal(created.status, 200, created.text);
  const kp = created.json as { id: string; publicKey: string };
  const msg = randomBytes(32);
  const key = createPublicKey({ key: Buffer.from(kp.publicKey, 'base64'), format: 'der', type: 'pkcs1' });
  const ct = publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, msg).toString('base64');
  const res = await hawkFetch({ method: 'POST', url: `${h.base}/decrypt`, credential, json: { keypairId: kp.id, body: ct } });
  t.equal(res.status, 200, res.text);
  t.equal((res.json as { body: string }).body, msg.toString('base64'));
});
