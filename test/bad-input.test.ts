// Every kind of bad input the LKM face can receive, over a real listening server on a real token
// and a real Postgres: the exact answer (status, body, code header), no internals in it, and no
// side effect (no keypair row, no token object, no credential row).
import { constants, createPublicKey, generateKeyPairSync, publicEncrypt, randomBytes, randomUUID } from 'node:crypto';
import t from 'tap';
import { assertError, assertNoLeak, snapshot, startAppWithoutAdminToken, type Tap } from './helpers/badinput-util.js';
import { startHarness } from './helpers/harness.js';
import { hawkFetch, send, type ClientCredential, type Response } from './helpers/hawk-client.js';

interface Expected {
  status: number;
  code: string;
  message: string;
}

// Messages are spelled out (not read from the catalogue) so a changed reference message fails here.
const FIELDS: Expected = { status: 400, code: 'KEY_ERR_DECRYPT_FIELDS', message: 'Decrypt body and keypairId must be filled out' };
const MALFORMED_JSON: Expected = { status: 400, code: 'REQ_ERR_MALFORMED_JSON', message: 'Request body is not valid JSON' };
const NOT_OBJECT: Expected = { status: 400, code: 'REQ_ERR_BODY_NOT_OBJECT', message: 'Request body must be a JSON object' };
const INVALID_KEYPAIR_ID: Expected = { status: 400, code: 'KEY_ERR_INVALID_KEYPAIR_ID', message: 'keypairId must be a UUID' };
const UNKNOWN_KEYPAIR: Expected = { status: 400, code: 'KEY_ERR_NOT_FOUND', message: 'No key pair found with the id provided' };
const NOT_BASE64: Expected = { status: 400, code: 'KEY_ERR_BODY_NOT_BASE64', message: 'Decrypt body must be standard base64' };
const DECRYPT_TYPE: Expected = {
  status: 400,
  code: 'KEY_ERR_DECRYPT_TYPE',
  message: 'If provided, decryptType must be either "pkcs1" or null',
};
const DECRYPT_FAILED: Expected = { status: 400, code: 'KEY_ERR_DECRYPT_FAILED', message: 'Decryption failed' };
const TOO_LARGE: Expected = { status: 413, code: 'REQ_ERR_BODY_TOO_LARGE', message: 'Request body is too large' };
const UNSUPPORTED_TYPE: Expected = {
  status: 415,
  code: 'REQ_ERR_UNSUPPORTED_MEDIA_TYPE',
  message: 'Content-Type must be application/json',
};
const INVALID_ID: Expected = {
  status: 400,
  code: 'AUTH_ERR_INVALID_ID',
  message: 'id must be 6 to 128 printable ASCII characters, without spaces, quotes or backslashes',
};
const DUPLICATE_ID: Expected = { status: 400, code: 'AUTH_ERR_DUPLICATE_ID', message: 'A credential with this id already exists' };
const ADMIN_UNAUTHORIZED: Expected = {
  status: 401,
  code: 'ADMIN_ERR_UNAUTHORIZED',
  message: 'A valid admin bearer token is required',
};
const ADMIN_DISABLED: Expected = {
  status: 403,
  code: 'ADMIN_ERR_DISABLED',
  message:
    'Credential registration over HTTP is disabled because ADMIN_TOKEN is not configured; ' +
    'run `strongroom auth register <id>` on the server instead',
};
const BAD_QUERY = (message: string): Expected => ({ status: 400, code: 'REQ_ERR_BAD_QUERY', message });
const KEYPAIR_404: Expected = { status: 404, code: 'KEY_ERR_KEYPAIR_NOT_FOUND', message: 'No key pair found with the id provided' };
const ROUTE_404: Expected = { status: 404, code: 'REQ_ERR_NOT_FOUND', message: 'Not Found' };
const wrongLength = (n: number): Expected => ({
  status: 400,
  code: 'KEY_ERR_CIPHERTEXT_LENGTH',
  message: `Decrypt body must be 384 bytes (an RSA-3072 ciphertext), not ${n}`,
});

const h = await startHarness(t);
const credential: ClientCredential = await h.register('badinput-caller');
const admin = { authorization: `Bearer ${h.adminToken}` };

const call = (
  method: string,
  path: string,
  extra: { json?: unknown; body?: string; contentType?: string; headers?: Record<string, string> } = {},
) => hawkFetch({ method, url: `${h.base}${path}`, credential, ...extra });

interface KeypairView {
  id: string;
  publicKey: string;
  dateCreated: number;
}

async function createKeypair(): Promise<KeypairView> {
  const res = await call('POST', '/keypair');
  if (res.status !== 200) throw new Error(`POST /keypair answered ${res.status}: ${res.text}`);
  return res.json as KeypairView;
}

// One keypair for every case, and a second one only to make ciphertexts it cannot open.
const keypair = await createKeypair();
const otherKeypair = await createKeypair();

function encryptFor(kp: KeypairView, padding: number, message: Buffer): Buffer {
  const key = createPublicKey({ key: Buffer.from(kp.publicKey, 'base64'), format: 'der', type: 'pkcs1' });
  return publicEncrypt({ key, padding, oaepHash: 'sha1' }, message);
}

const oaep = (message = randomBytes(32)) => encryptFor(keypair, constants.RSA_PKCS1_OAEP_PADDING, message).toString('base64');

/** The RSA modulus of the keypair, from its PKCS#1 public key. */
function modulusOf(kp: KeypairView): Buffer {
  const jwk = createPublicKey({ key: Buffer.from(kp.publicKey, 'base64'), format: 'der', type: 'pkcs1' }).export({ format: 'jwk' });
  return Buffer.from(jwk.n as string, 'base64url');
}

/** Run a batch of refused requests and prove none of them changed anything. */
async function withoutSideEffects(tt: Tap, label: string, fn: () => Promise<void>): Promise<void> {
  const before = await snapshot(h.db, h.app);
  await fn();
  const after = await snapshot(h.db, h.app);
  tt.same(after.keypairRows, before.keypairRows, `${label}: no keypair row was added`);
  tt.same(after.tokenKeys, before.tokenKeys, `${label}: no key object was added to the token`);
  tt.same(after.credentialRows, before.credentialRows, `${label}: no credential row was added or changed`);
}

t.test('sanity: the keypair decrypts a valid request (so every refusal below is about its input)', async (tt) => {
  const message = randomBytes(32);
  const res = await call('POST', '/decrypt', { json: { keypairId: keypair.id, body: oaep(message) } });
  tt.equal(res.status, 200, res.text);
  tt.same(res.json, { body: message.toString('base64') });
  const before = await snapshot(h.db, h.app);
  tt.same(before.keypairRows, [keypair.id, otherKeypair.id].sort(), 'two keypair rows');
  tt.same(before.tokenKeys, [keypair.id, otherKeypair.id].sort(), 'two keys in the token');
  tt.equal(before.credentialRows.length, 1, 'one credential row');
});

t.test('POST /decrypt without both fields filled out answers the reference message', async (tt) => {
  const ct = oaep();
  const cases: Array<[string, unknown]> = [
    ['empty object', {}],
    ['JSON null', null],
    ['missing keypairId', { body: ct }],
    ['missing body', { keypairId: keypair.id }],
    ['empty keypairId', { keypairId: '', body: ct }],
    ['empty body', { keypairId: keypair.id, body: '' }],
    ['both empty', { keypairId: '', body: '' }],
    ['null keypairId', { keypairId: null, body: ct }],
    ['null body', { keypairId: keypair.id, body: null }],
    ['numeric keypairId', { keypairId: 12345, body: ct }],
    ['numeric body', { keypairId: keypair.id, body: 12345 }],
    ['object keypairId', { keypairId: { id: keypair.id }, body: ct }],
    ['object body', { keypairId: keypair.id, body: { data: ct } }],
    ['array body field', { keypairId: keypair.id, body: [ct] }],
    ['boolean keypairId', { keypairId: true, body: ct }],
  ];
  await withoutSideEffects(tt, 'unfilled fields', async () => {
    for (const [name, json] of cases) {
      assertError(tt, await call('POST', '/decrypt', { body: JSON.stringify(json), contentType: 'application/json' }), FIELDS, name);
    }
    assertError(tt, await call('POST', '/decrypt'), FIELDS, 'no request body at all');
    assertError(tt, await call('POST', '/decrypt', { body: '', contentType: 'application/json' }), FIELDS, 'empty JSON request body');
  });
});

t.test('POST /decrypt refuses a body that is not a JSON object, before looking at any field', async (tt) => {
  await withoutSideEffects(tt, 'not an object', async () => {
    const raw = (body: string) => call('POST', '/decrypt', { body, contentType: 'application/json' });
    assertError(tt, await raw('{"keypairId":'), MALFORMED_JSON, 'truncated JSON');
    assertError(tt, await raw(`{"keypairId":"${keypair.id}","body":"${oaep()}",}`), MALFORMED_JSON, 'trailing comma');
    assertError(tt, await raw(`{'keypairId':'${keypair.id}'}`), MALFORMED_JSON, 'single quotes');
    assertError(tt, await raw(JSON.stringify([keypair.id, oaep()])), NOT_OBJECT, 'JSON array');
    assertError(tt, await raw(JSON.stringify(oaep())), NOT_OBJECT, 'JSON string');
    assertError(tt, await raw('42'), NOT_OBJECT, 'JSON number');
  });
});

t.test('POST /decrypt refuses a keypairId that is not a UUID', async (tt) => {
  const ct = oaep();
  const ids = [
    'not-a-uuid',
    '1234',
    keypair.id.replace(/-/g, ''),
    `{${keypair.id}}`,
    `${keypair.id}\n`,
    ` ${keypair.id}`,
    `${keypair.id}0`,
    '../../etc/passwd',
    "' OR 1=1 --",
  ];
  await withoutSideEffects(tt, 'not a UUID', async () => {
    for (const id of ids) {
      assertError(tt, await call('POST', '/decrypt', { json: { keypairId: id, body: ct } }), INVALID_KEYPAIR_ID, JSON.stringify(id));
    }
  });
});

t.test('POST /decrypt with an unknown keypair answers the reference message', async (tt) => {
  await withoutSideEffects(tt, 'unknown keypair', async () => {
    const unknown = randomUUID();
    assertError(tt, await call('POST', '/decrypt', { json: { keypairId: unknown, body: oaep() } }), UNKNOWN_KEYPAIR, 'unknown UUID');
    assertError(
      tt,
      await call('POST', '/decrypt?decryptType=pkcs1', { json: { keypairId: unknown, body: randomBytes(16).toString('base64') } }),
      UNKNOWN_KEYPAIR,
      'unknown UUID, short body, pkcs1',
    );
    assertError(
      tt,
      await call('POST', '/decrypt', { json: { keypairId: '00000000-0000-0000-0000-000000000000', body: oaep() } }),
      UNKNOWN_KEYPAIR,
      'nil UUID',
    );
  });
});

t.test('POST /decrypt refuses a body that is not standard base64', async (tt) => {
  const good = oaep();
  const bodies = [
    '!!!',
    'abc$',
    'AAAA AAAA',
    `${good.slice(0, 100)} ${good.slice(100)}`,
    `${good.slice(0, 76)}\n${good.slice(76)}`,
    `${good.slice(0, 76)}\t${good.slice(76)}`,
    `${good.slice(0, 8)}-_${good.slice(10)}`, // the base64url alphabet
    'A',
    'AAA==',
    'A=AA',
    '====',
  ];
  await withoutSideEffects(tt, 'not base64', async () => {
    for (const body of bodies) {
      assertError(tt, await call('POST', '/decrypt', { json: { keypairId: keypair.id, body } }), NOT_BASE64, JSON.stringify(body.slice(0, 20)));
    }
  });
});

t.test('POST /decrypt refuses a ciphertext of the wrong length and names the expected 384 bytes', async (tt) => {
  await withoutSideEffects(tt, 'wrong length', async () => {
    for (const n of [383, 385, 256, 1, 383 + 384]) {
      const body = randomBytes(n).toString('base64');
      const res = await call('POST', '/decrypt', { json: { keypairId: keypair.id, body } });
      assertError(tt, res, wrongLength(n), `${n} bytes`);
      tt.match((res.json as { message?: string } | undefined)?.message ?? '', /\b384\b/, `${n} bytes: the message names 384`);
    }
    // A real RSA-2048 ciphertext (256 bytes) is refused by length, before the token sees it.
    const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const small = publicEncrypt({ key: publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, randomBytes(32));
    assertError(tt, await call('POST', '/decrypt', { json: { keypairId: keypair.id, body: small.toString('base64') } }), wrongLength(256), 'RSA-2048 ciphertext');
    // Unpadded base64 of 383 bytes is still base64: refused by length, not by alphabet.
    const unpadded = randomBytes(383).toString('base64').replace(/=+$/, '');
    assertError(tt, await call('POST', '/decrypt', { json: { keypairId: keypair.id, body: unpadded } }), wrongLength(383), '383 bytes, unpadded');
  });
});

t.test('POST /decrypt refuses any decryptType but "pkcs1" or null, in the body or the query', async (tt) => {
  // A valid OAEP ciphertext: the refusal must come from decryptType alone.
  const body = oaep();
  const inBody: unknown[] = ['PKCS1', 'oaep', '', 5, 'pkcs1 ', 'pkcs#1', true, ['pkcs1'], { type: 'pkcs1' }];
  const inQuery = ['foo', 'PKCS1', 'oaep', '', 'pkcs1%00', 'pkcs1&decryptType=pkcs1'];
  await withoutSideEffects(tt, 'decryptType', async () => {
    for (const decryptType of inBody) {
      const res = await call('POST', '/decrypt', { json: { keypairId: keypair.id, body, decryptType } });
      assertError(tt, res, DECRYPT_TYPE, `body decryptType ${JSON.stringify(decryptType)}`);
    }
    for (const q of inQuery) {
      const res = await call('POST', `/decrypt?decryptType=${q}`, { json: { keypairId: keypair.id, body } });
      assertError(tt, res, DECRYPT_TYPE, `?decryptType=${q}`);
    }
    const conflicts: Array<[string, unknown]> = [
      ['pkcs1', 'oaep'],
      ['foo', 'pkcs1'],
      ['', 'pkcs1'],
      ['pkcs1', 'PKCS1'],
    ];
    for (const [q, b] of conflicts) {
      const res = await call('POST', `/decrypt?decryptType=${q}`, { json: { keypairId: keypair.id, body, decryptType: b } });
      assertError(tt, res, DECRYPT_TYPE, `query ${JSON.stringify(q)} against body ${JSON.stringify(b)}`);
    }
  });
});

t.test('POST /decrypt over the body limit answers 413 without reading the rest', async (tt) => {
  tt.equal(h.config.server.bodyLimit, 16384, 'the default BODY_LIMIT');
  await withoutSideEffects(tt, 'too large', async () => {
    const big = JSON.stringify({ keypairId: keypair.id, body: 'A'.repeat(20_000) });
    assertError(tt, await call('POST', '/decrypt', { body: big, contentType: 'application/json' }), TOO_LARGE, '20 kB body');

    // At the limit exactly the body is read (and refused for its content); one byte more is not.
    const json = JSON.stringify({ keypairId: keypair.id, body: 'A'.repeat(4000) });
    const atLimit = json + ' '.repeat(16384 - Buffer.byteLength(json));
    tt.equal(Buffer.byteLength(atLimit), 16384);
    assertError(tt, await call('POST', '/decrypt', { body: atLimit, contentType: 'application/json' }), wrongLength(3000), '16384 bytes');
    assertError(tt, await call('POST', '/decrypt', { body: `${atLimit} `, contentType: 'application/json' }), TOO_LARGE, '16385 bytes');
  });
});

t.test('POST /decrypt and POST /auth refuse a body that is not application/json with 415', async (tt) => {
  const json = JSON.stringify({ keypairId: keypair.id, body: oaep() });
  await withoutSideEffects(tt, 'media type', async () => {
    for (const contentType of ['text/plain', 'text/plain; charset=utf-8', 'application/x-www-form-urlencoded', 'application/xml']) {
      assertError(tt, await call('POST', '/decrypt', { body: json, contentType }), UNSUPPORTED_TYPE, contentType);
    }
    const auth = await send('POST', `${h.base}/auth`, { body: '{"id":"text-plain-id"}', contentType: 'text/plain', headers: admin });
    assertError(tt, auth, UNSUPPORTED_TYPE, 'POST /auth as text/plain');
  });
});

t.test('every decryption failure answers exactly the same thing', async (tt) => {
  const other = encryptFor(otherKeypair, constants.RSA_PKCS1_OAEP_PADDING, randomBytes(32));
  const cases: Array<[string, Buffer, string]> = [
    ['random 384 bytes', randomBytes(384), ''],
    ['a ciphertext made for another keypair', other, ''],
    ['all 0xFF (≥ modulus: out of range)', Buffer.alloc(384, 0xff), ''],
    ['the modulus itself (out of range)', modulusOf(keypair), ''],
    ['zero', Buffer.alloc(384, 0), ''],
    ['zero, pkcs1', Buffer.alloc(384, 0), '?decryptType=pkcs1'],
    ['a valid OAEP ciphertext sent with decryptType=pkcs1', Buffer.from(oaep(), 'base64'), '?decryptType=pkcs1'],
    ['a valid PKCS#1 v1.5 ciphertext sent as OAEP', encryptFor(keypair, constants.RSA_PKCS1_PADDING, randomBytes(32)), ''],
    ['a ciphertext for another keypair, pkcs1', encryptFor(otherKeypair, constants.RSA_PKCS1_PADDING, randomBytes(32)), '?decryptType=pkcs1'],
  ];
  tt.equal(modulusOf(keypair).length, 384);
  const responses: Array<[string, Response]> = [];
  await withoutSideEffects(tt, 'decryption failures', async () => {
    for (const [name, ct, query] of cases) {
      tt.equal(ct.length, 384, `${name}: 384 bytes, so the token sees it`);
      const res = await call('POST', `/decrypt${query}`, { json: { keypairId: keypair.id, body: ct.toString('base64') } });
      assertError(tt, res, DECRYPT_FAILED, name);
      responses.push([name, res]);
    }
  });
  const shape = (res: Response) => ({
    status: res.status,
    text: res.text,
    headers: [...res.headers.entries()].filter(([k]) => k !== 'date').sort(),
  });
  const [, first] = responses[0] as [string, Response];
  for (const [name, res] of responses.slice(1)) {
    tt.same(shape(res), shape(first), `${name}: identical to the first failure, byte for byte (but Date)`);
  }
  tt.equal(first.text, '{"message":"Decryption failed","status":400}', 'the exact bytes');

  // The failures left no session stuck in an operation: both paddings still work.
  const message = randomBytes(32);
  const ok = await call('POST', '/decrypt', { json: { keypairId: keypair.id, body: oaep(message) } });
  tt.same([ok.status, ok.json], [200, { body: message.toString('base64') }], 'OAEP works after the failures');
  const pkcs1 = encryptFor(keypair, constants.RSA_PKCS1_PADDING, message).toString('base64');
  const ok2 = await call('POST', '/decrypt?decryptType=pkcs1', { json: { keypairId: keypair.id, body: pkcs1 } });
  tt.same([ok2.status, ok2.json], [200, { body: message.toString('base64') }], 'PKCS#1 v1.5 works after the failures');
});

t.test('POST /auth refuses an id that is not 6-128 printable ASCII without space, quote or backslash', async (tt) => {
  const ids: Array<[string, unknown]> = [
    ['5 characters', 'abcde'],
    ['empty', ''],
    ['a space', 'genesys cloud'],
    ['a double quote', 'genesys"cloud'],
    ['a backslash', 'genesys\\cloud'],
    ['a tab', 'genesys\tcloud'],
    ['a newline', 'genesys\ncloud'],
    ['non-ASCII', 'génésys-cloud'],
    ['129 characters', 'a'.repeat(129)],
    ['a number', 1234567],
    ['an object', { id: 'genesys-cloud' }],
    ['an array', ['genesys-cloud']],
    ['null', null],
    ['true', true],
  ];
  await withoutSideEffects(tt, 'invalid ids', async () => {
    for (const [name, id] of ids) {
      assertError(tt, await send('POST', `${h.base}/auth`, { json: { id }, headers: admin }), INVALID_ID, name);
    }
    assertError(tt, await send('POST', `${h.base}/auth`, { json: {}, headers: admin }), INVALID_ID, 'missing id');
    assertError(tt, await send('POST', `${h.base}/auth`, { headers: admin }), INVALID_ID, 'no body');
    assertError(
      tt,
      await send('POST', `${h.base}/auth`, { body: '{"id":', contentType: 'application/json', headers: admin }),
      MALFORMED_JSON,
      'malformed JSON',
    );
    assertError(tt, await send('POST', `${h.base}/auth`, { json: ['genesys-cloud'], headers: admin }), NOT_OBJECT, 'JSON array');
  });

  // The edges are accepted, and the credentials they give work.
  for (const id of ['abcdef', 'b'.repeat(128), "a!#$%&'()*+,-./:;<=>?@[]^_`{|}~"]) {
    const res = await send('POST', `${h.base}/auth`, { json: { id }, headers: admin });
    tt.equal(res.status, 200, `${id.length} characters: ${res.text}`);
    const body = res.json as { id: string; authKey: string };
    const cred: ClientCredential = { id, key: body.authKey, algorithm: 'sha256' };
    const list = await hawkFetch({ method: 'GET', url: `${h.base}/keypair`, credential: cred });
    tt.equal(list.status, 200, `the ${id.length}-character credential authenticates`);
  }
});

t.test('POST /auth refuses a duplicate id and the first credential keeps working', async (tt) => {
  const first = await send('POST', `${h.base}/auth`, { json: { id: 'genesys-dup-1' }, headers: admin });
  tt.equal(first.status, 200, first.text);
  const cred: ClientCredential = { id: 'genesys-dup-1', key: (first.json as { authKey: string }).authKey, algorithm: 'sha256' };
  await withoutSideEffects(tt, 'duplicate id', async () => {
    const again = await send('POST', `${h.base}/auth`, { json: { id: 'genesys-dup-1' }, headers: admin });
    assertError(tt, again, DUPLICATE_ID, 'second registration');
    tt.notMatch(again.text, /authKey/, 'no key is handed out');
  });
  const res = await hawkFetch({ method: 'GET', url: `${h.base}/keypair`, credential: cred });
  tt.equal(res.status, 200, 'the first credential still authenticates');
  tt.same((res.json as KeypairView[]).map((k) => k.id).sort(), [keypair.id, otherKeypair.id].sort(), 'and sees both keypairs');
});

t.test('POST /auth without the admin bearer token answers 401 and registers nothing', async (tt) => {
  const swapCase = (s: string) => s.replace(/[a-z]/gi, (c) => (c === c.toLowerCase() ? c.toUpperCase() : c.toLowerCase()));
  const hawkForAuth = hawkFetch({ method: 'POST', url: `${h.base}/auth`, credential, json: { id: 'hawk-registers' } });
  const cases: Array<[string, Record<string, string>]> = [
    ['no Authorization header', {}],
    ['a wrong token', { authorization: `Bearer ${randomBytes(32).toString('base64url')}` }],
    ['the token with its letters in the wrong case', { authorization: `Bearer ${swapCase(h.adminToken)}` }],
    ['the token less its last character', { authorization: `Bearer ${h.adminToken.slice(0, -1)}` }],
    ['the token with one character more', { authorization: `Bearer ${h.adminToken}x` }],
    ['"Bearer" alone', { authorization: 'Bearer' }],
    ['"Bearer " and nothing', { authorization: 'Bearer ' }],
    ['the token without the scheme', { authorization: h.adminToken }],
    ['the token as Basic credentials', { authorization: `Basic ${Buffer.from(`admin:${h.adminToken}`).toString('base64')}` }],
  ];
  await withoutSideEffects(tt, 'no admin token', async () => {
    for (const [name, headers] of cases) {
      const res = await send('POST', `${h.base}/auth`, { json: { id: 'should-not-exist' }, headers });
      assertError(tt, res, ADMIN_UNAUTHORIZED, name);
      tt.equal(res.headers.get('www-authenticate'), 'Bearer', `${name}: WWW-Authenticate`);
    }
    const res = await hawkForAuth;
    assertError(tt, res, ADMIN_UNAUTHORIZED, 'a valid Hawk header instead of the admin token');
    tt.equal(res.headers.get('www-authenticate'), 'Bearer');
  });
  const { rows } = await h.db.query<{ id: string }>(
    `SELECT id FROM hawk_credential WHERE id IN ('should-not-exist', 'hawk-registers')`,
  );
  tt.same(rows, [], 'no credential row for the refused ids');
});

t.test('POST /auth on an app started without ADMIN_TOKEN answers 403 and points to the CLI', async (tt) => {
  const other = await startAppWithoutAdminToken(tt, h.token, h.databaseUrl);
  try {
    await withoutSideEffects(tt, 'admin disabled', async () => {
      const attempts: Array<[string, Record<string, string>]> = [
        ['no Authorization header', {}],
        ['the other app’s admin token', admin],
        ['any bearer token', { authorization: `Bearer ${randomBytes(32).toString('base64url')}` }],
      ];
      for (const [name, headers] of attempts) {
        const res = await send('POST', `${other.base}/auth`, { json: { id: 'not-without-admin' }, headers });
        assertError(tt, res, ADMIN_DISABLED, name);
        tt.match((res.json as { message: string }).message, /`strongroom auth register <id>`/, `${name}: names the CLI command`);
        tt.equal(res.headers.get('www-authenticate'), null, `${name}: no challenge: no token would help`);
      }
    });
    // The rest of that app works: a Hawk credential registered on the shared database authenticates there.
    const res = await hawkFetch({ method: 'GET', url: `${other.base}/keypair`, credential });
    tt.equal(res.status, 200, 'Hawk routes still work without ADMIN_TOKEN');
  } finally {
    await other.close();
  }
  const { rows } = await h.db.query(`SELECT id FROM hawk_credential WHERE id = 'not-without-admin'`);
  tt.same(rows, [], 'no credential row');
});

t.test('GET /request-log refuses bad query parameters', async (tt) => {
  const maxEntries = 'maxEntries must be an integer from 1 to 10000';
  const cases: Array<[string, Expected]> = [
    ['maxEntries=0', BAD_QUERY(maxEntries)],
    ['maxEntries=-1', BAD_QUERY(maxEntries)],
    ['maxEntries=abc', BAD_QUERY(maxEntries)],
    ['maxEntries=10001', BAD_QUERY(maxEntries)],
    ['maxEntries=1.5', BAD_QUERY(maxEntries)],
    ['maxEntries=1e3', BAD_QUERY(maxEntries)],
    ['maxEntries=99999999999999999999', BAD_QUERY(maxEntries)],
    ['maxEntries=5&maxEntries=6', BAD_QUERY(maxEntries)],
    ['earliestTime=yesterday', BAD_QUERY('earliestTime must be an ISO-8601 date-time, e.g. 2015-08-31T13:49:22.444Z')],
    ['latestTime=2020-13-45T99:00', BAD_QUERY('latestTime is not a valid date-time')],
    ['latestTime=1440000000000', BAD_QUERY('latestTime must be an ISO-8601 date-time, e.g. 2015-08-31T13:49:22.444Z')],
    ['earliestTime=2015-08-31 13:49:22', BAD_QUERY('earliestTime must be an ISO-8601 date-time, e.g. 2015-08-31T13:49:22.444Z')],
  ];
  for (const [query, expected] of cases) {
    assertError(tt, await call('GET', `/request-log?${query.replace(/ /g, '%20')}`), expected, query);
  }
  // The edges of maxEntries are accepted.
  for (const q of ['maxEntries=1', 'maxEntries=10000', 'earliestTime=2015-08-31T13:49:22.444']) {
    const res = await call('GET', `/request-log?${q}`);
    tt.equal(res.status, 200, `${q}: ${res.text}`);
  }
});

t.test('GET /request-log refuses a calendar date that does not exist instead of rolling it over', async (tt) => {
  // new Date('2021-02-30T10:00Z') is 2 March in V8; Java's LocalDateTime.parse refuses it.
  for (const q of ['earliestTime=2021-02-30T10:00', 'latestTime=2021-04-31T00:00:00Z', 'earliestTime=2021-02-29']) {
    const name = q.split('=')[0] as string;
    // maxEntries=1 keeps the answer short if the date is (wrongly) accepted.
    assertError(tt, await call('GET', `/request-log?maxEntries=1&${q}`), BAD_QUERY(`${name} is not a valid date-time`), q);
  }
});

t.test('GET /keypair/{id} with a malformed or unknown id answers 404 with the error body', async (tt) => {
  const paths = [
    '/keypair/not-a-uuid',
    `/keypair/${randomUUID()}`,
    `/keypair/${keypair.id}0`,
    `/keypair/${keypair.id.replace(/-/g, '')}`,
    '/keypair/%27%20OR%201%3D1',
    '/keypair/..%2F..%2Fetc%2Fpasswd',
  ];
  await withoutSideEffects(tt, 'unknown keypair', async () => {
    for (const path of paths) assertError(tt, await call('GET', path), KEYPAIR_404, path);
  });
});

t.test('unknown routes answer 404 Not Found in the contract shape', async (tt) => {
  const cases: Array<[string, string, boolean]> = [
    ['GET', '/key-management/v1/nope', false],
    ['GET', '/key-management/v1/nope', true],
    ['GET', '/key-management/v2/keypair', false],
    ['GET', '/', false],
    ['GET', '/key-management/v1/decrypt', true],
    ['PUT', '/key-management/v1/decrypt', true],
    ['DELETE', '/key-management/v1/keypair', true],
    ['DELETE', `/key-management/v1/keypair/${keypair.id}`, true],
    ['PATCH', '/key-management/v1/auth', false],
  ];
  await withoutSideEffects(tt, 'unknown routes', async () => {
    for (const [method, path, signed] of cases) {
      const res = signed
        ? await hawkFetch({ method, url: `${h.origin}${path}`, credential })
        : await send(method, `${h.origin}${path}`);
      assertError(tt, res, ROUTE_404, `${method} ${path}${signed ? ' (Hawk)' : ''}`);
      tt.equal(res.text, '{"message":"Not Found","status":404}', `${method} ${path}: exact bytes`);
    }
  });
  // The keypair a DELETE was aimed at is still there and still decrypts.
  const message = randomBytes(32);
  const res = await call('POST', '/decrypt', { json: { keypairId: keypair.id, body: oaep(message) } });
  tt.same([res.status, res.json], [200, { body: message.toString('base64') }]);
});

t.test('a Hawk failure on a bad-input route tells nothing more than any other Hawk failure', async (tt) => {
  const stranger: ClientCredential = { id: 'badinput-caller', key: randomBytes(32).toString('base64url'), algorithm: 'sha256' };
  const res = await hawkFetch({ method: 'POST', url: `${h.base}/decrypt`, credential: stranger, json: { keypairId: 'x', body: '!!!' } });
  assertError(tt, res, { status: 401, code: 'HAWK_ERR_UNAUTHORIZED', message: 'Hawk authentication failed' }, 'bad MAC');
  assertNoLeak(tt, res, 'bad MAC');
});
