// End to end over a real listening server: the @hapi/hawk client, Node's crypto and the openssl
// CLI as independent peers; a real SoftHSM token and a real Postgres behind it.
import { execFileSync } from 'node:child_process';
import { constants, createPublicKey, publicEncrypt, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { hawkFetch, send, type ClientCredential } from './helpers/hawk-client.js';
import { startHarness } from './helpers/harness.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const h = await startHarness(t);
const work = mkdtempSync(join(tmpdir(), 'strongroom-e2e-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

let credential: ClientCredential;
let keypair: { id: string; publicKey: string; dateCreated: number };

const call = (method: string, path: string, extra: { json?: unknown; headers?: Record<string, string> } = {}) =>
  hawkFetch({ method, url: `${h.base}${path}`, credential, ...extra });

t.test('POST /auth registers a credential with the admin token', async (t) => {
  const res = await send('POST', `${h.base}/auth`, {
    json: { id: 'genesys-cloud-1' },
    headers: { authorization: `Bearer ${h.adminToken}` },
  });
  t.equal(res.status, 200);
  const body = res.json as Record<string, unknown>;
  t.same(Object.keys(body).sort(), ['algorithm', 'authKey', 'id']);
  t.equal(body.id, 'genesys-cloud-1');
  t.equal(body.algorithm, 'sha256');
  t.type(body.authKey, 'string');
  t.ok((body.authKey as string).length >= 43, 'the key carries at least 256 bits');
  t.match(res.headers.get('cache-control') ?? '', /no-store/);
  credential = { id: 'genesys-cloud-1', key: body.authKey as string, algorithm: 'sha256' };
});

t.test('POST /keypair creates an RSA-3072 keypair in the token', async (t) => {
  const before = Date.now();
  const res = await call('POST', '/keypair');
  t.equal(res.status, 200, res.text);
  keypair = res.json as typeof keypair;
  t.same(Object.keys(keypair).sort(), ['dateCreated', 'id', 'publicKey']);
  t.match(keypair.id, UUID);
  t.type(keypair.dateCreated, 'number');
  t.ok(keypair.dateCreated >= before - 1000 && keypair.dateCreated <= Date.now() + 1000, 'dateCreated is now, in ms');

  const der = Buffer.from(keypair.publicKey, 'base64');
  // PKCS#1 RSAPublicKey: SEQUENCE { INTEGER n, INTEGER e } with no AlgorithmIdentifier.
  t.equal(der[0], 0x30, 'outer SEQUENCE');
  t.equal(der[4], 0x02, 'first element is the modulus INTEGER, not an AlgorithmIdentifier');
  const key = createPublicKey({ key: der, format: 'der', type: 'pkcs1' });
  t.equal(key.asymmetricKeyDetails?.modulusLength, 3072);
  t.equal(key.asymmetricKeyDetails?.publicExponent, 65537n);

  const text = execFileSync('openssl', ['rsa', '-RSAPublicKey_in', '-inform', 'DER', '-noout', '-text'], { input: der }).toString();
  t.match(text, /Public-Key: \(3072 bit\)/, 'openssl parses it as PKCS#1 RSAPublicKey');
  t.match(text, /Exponent: 65537/);
});

t.test('GET /keypair lists it and GET /keypair/{id} returns it', async (t) => {
  const list = await call('GET', '/keypair');
  t.equal(list.status, 200);
  t.same(list.json, [keypair]);
  const one = await call('GET', `/keypair/${keypair.id}`);
  t.equal(one.status, 200);
  t.same(one.json, keypair);
  const unknown = await call('GET', `/keypair/${crypto.randomUUID()}`);
  t.equal(unknown.status, 404);
  t.same(unknown.json, { message: 'No key pair found with the id provided', status: 404 });
});

function nodeEncrypt(padding: number, message: Buffer): string {
  const key = createPublicKey({ key: Buffer.from(keypair.publicKey, 'base64'), format: 'der', type: 'pkcs1' });
  return publicEncrypt({ key, padding, oaepHash: 'sha1' }, message).toString('base64');
}

function opensslEncrypt(padding: 'oaep' | 'pkcs1', message: Buffer): string {
  const der = join(work, 'pub.der');
  const pem = join(work, 'pub.pem');
  const input = join(work, 'msg.bin');
  const out = join(work, 'ct.bin');
  writeFileSync(der, Buffer.from(keypair.publicKey, 'base64'));
  writeFileSync(input, message);
  execFileSync('openssl', ['rsa', '-RSAPublicKey_in', '-inform', 'DER', '-in', der, '-pubout', '-out', pem], { stdio: 'pipe' });
  const opts = padding === 'oaep' ? ['-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', 'rsa_oaep_md:sha1', '-pkeyopt', 'rsa_mgf1_md:sha1'] : ['-pkeyopt', 'rsa_padding_mode:pkcs1'];
  execFileSync('openssl', ['pkeyutl', '-encrypt', '-pubin', '-inkey', pem, ...opts, '-in', input, '-out', out], { stdio: 'pipe' });
  return readFileSync(out).toString('base64');
}

t.test('POST /decrypt: OAEP-SHA1 by default, PKCS#1 v1.5 with decryptType=pkcs1', async (t) => {
  const cases = [
    { name: 'Node OAEP-SHA1, no decryptType', padding: 'oaep', make: (m: Buffer) => nodeEncrypt(constants.RSA_PKCS1_OAEP_PADDING, m), query: '', body: {} },
    { name: 'openssl OAEP-SHA1', padding: 'oaep', make: (m: Buffer) => opensslEncrypt('oaep', m), query: '', body: {} },
    { name: 'Node PKCS#1 v1.5, decryptType in query', padding: 'pkcs1', make: (m: Buffer) => nodeEncrypt(constants.RSA_PKCS1_PADDING, m), query: '?decryptType=pkcs1', body: {} },
    { name: 'openssl PKCS#1 v1.5, decryptType in query', padding: 'pkcs1', make: (m: Buffer) => opensslEncrypt('pkcs1', m), query: '?decryptType=pkcs1', body: {} },
    { name: 'openssl PKCS#1 v1.5, decryptType in body', padding: 'pkcs1', make: (m: Buffer) => opensslEncrypt('pkcs1', m), query: '', body: { decryptType: 'pkcs1' } },
    { name: 'Node OAEP-SHA1, decryptType null in body', padding: 'oaep', make: (m: Buffer) => nodeEncrypt(constants.RSA_PKCS1_OAEP_PADDING, m), query: '', body: { decryptType: null } },
  ];
  for (const c of cases) {
    const message = randomBytes(32); // a recording's AES-256 key, as Genesys Cloud wraps it
    const res = await call('POST', `/decrypt${c.query}`, { json: { keypairId: keypair.id, body: c.make(message), ...c.body } });
    t.equal(res.status, 200, `${c.name}: ${res.text}`);
    t.same(res.json, { body: message.toString('base64') }, c.name);
    t.match(res.headers.get('cache-control') ?? '', /no-store/, `${c.name}: plaintext is not cacheable`);
  }
});

t.test('the wrong padding for a ciphertext fails like any other decryption failure', async (t) => {
  const oaep = nodeEncrypt(constants.RSA_PKCS1_OAEP_PADDING, randomBytes(32));
  const res = await call('POST', '/decrypt?decryptType=pkcs1', { json: { keypairId: keypair.id, body: oaep } });
  t.equal(res.status, 400);
  t.same(res.json, { message: 'Decryption failed', status: 400 });
  t.equal(res.headers.get('strongroom-error-code'), 'KEY_ERR_DECRYPT_FAILED');
});

t.test('OPTIONS /decrypt answers the reference shape', async (t) => {
  const res = await call('OPTIONS', '/decrypt');
  t.equal(res.status, 200);
  t.same(res.json, {
    encryptBody: { keypairId: null, body: null, decryptType: null },
    decryptResponse: { body: 'Decrypted Response' },
  });
});

t.test('GET /health needs no credentials', async (t) => {
  const res = await send('GET', `${h.base}/health`);
  t.equal(res.status, 200);
  t.equal(res.text, 'OK');
  t.match(res.headers.get('content-type') ?? '', /^text\/plain/);
});

t.test('request log: reference shape, newest first, filters, and DELETE', async (t) => {
  await call('DELETE', '/request-log');
  const first = await call('GET', '/keypair', { headers: { 'PureCloud-User-Id': 'user-a' } });
  t.equal(first.status, 200);
  await sleep(30);
  const between = new Date();
  await sleep(30);
  await call('GET', `/keypair/${keypair.id}`);
  await call('POST', '/decrypt', { json: { keypairId: keypair.id, body: nodeEncrypt(constants.RSA_PKCS1_OAEP_PADDING, randomBytes(16)) } });

  const all = await call('GET', '/request-log');
  t.equal(all.status, 200);
  const entries = all.json as Array<Record<string, unknown>>;
  // DELETE itself is logged after it ran: it is the oldest visible entry.
  t.same(
    entries.map((e) => [e.requestMethod, e.requestUri]),
    [
      ['POST', '/key-management/v1/decrypt'],
      ['GET', `/key-management/v1/keypair/${keypair.id}`],
      ['GET', '/key-management/v1/keypair'],
      ['DELETE', '/key-management/v1/request-log'],
    ],
    'newest first',
  );
  const e = entries[2] as Record<string, unknown>;
  t.same(Object.keys(e).sort(), ['id', 'requestMethod', 'requestUri', 'timestamp', 'timestampString', 'userId']);
  t.equal(e.userId, 'user-a');
  t.equal(entries[0]?.userId, 'NO-USER-ID');
  // The reference service's documented example shows a UUID string here (issue 9, item 7).
  t.match(e.id, /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'id is a UUID string');
  t.equal(new Set(entries.map((x) => x.id)).size, entries.length, 'ids are distinct');
  const ts = e.timestamp as number[];
  t.equal(ts.length, 7);
  t.match(e.timestampString as string, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}$/);
  const [y, mo, d, hh, mi, s, nanos] = ts as [number, number, number, number, number, number, number];
  const fromArray = Date.UTC(y, mo - 1, d, hh, mi, s, nanos / 1e6);
  t.equal(new Date(fromArray).toISOString().replace('Z', ''), e.timestampString, 'array and string agree (UTC)');

  const limited = await call('GET', '/request-log?maxEntries=2');
  t.same((limited.json as unknown[]).length, 2);
  // The GET /request-log above was logged too: it is now the newest.
  t.same(
    (limited.json as Array<Record<string, unknown>>).map((x) => x.requestUri),
    ['/key-management/v1/request-log', '/key-management/v1/decrypt'],
    'maxEntries keeps the newest',
  );
  t.same((limited.json as unknown[])[1], entries[0]);

  const later = await call('GET', `/request-log?earliestTime=${between.toISOString()}`);
  t.same(
    (later.json as Array<Record<string, unknown>>).map((x) => x.requestUri),
    [
      '/key-management/v1/request-log?maxEntries=2',
      '/key-management/v1/request-log',
      '/key-management/v1/decrypt',
      `/key-management/v1/keypair/${keypair.id}`,
    ],
    'earliestTime keeps entries at or after it (including the earlier GETs of the log)',
  );
  const earlier = await call('GET', `/request-log?latestTime=${encodeURIComponent(between.toISOString().replace('Z', ''))}`);
  t.same(
    (earlier.json as Array<Record<string, unknown>>).map((x) => x.requestUri),
    ['/key-management/v1/keypair', '/key-management/v1/request-log'],
    'latestTime without an offset is read as UTC',
  );

  const del = await call('DELETE', '/request-log');
  t.equal(del.status, 200);
  const after = await call('GET', '/request-log');
  t.same(
    (after.json as Array<Record<string, unknown>>).map((x) => [x.requestMethod, x.requestUri]),
    [['DELETE', '/key-management/v1/request-log']],
    'DELETE hides what came before it',
  );
  const { rows } = await h.db.query<{ n: string }>('SELECT count(*) AS n FROM request_log');
  t.ok(Number(rows[0]?.n) >= 9, 'nothing was destroyed: the entries stay in the database');

  const extra = await h.db.query<{ hawk_id: string; status_code: number; keypair_id: string; client_address: string }>(
    `SELECT hawk_id, status_code, keypair_id, client_address FROM request_log WHERE request_uri = $1`,
    ['/key-management/v1/decrypt'],
  );
  const decryptRow = extra.rows.at(-1);
  t.equal(decryptRow?.hawk_id, credential.id, 'extra columns: hawk id');
  t.equal(decryptRow?.status_code, 200, 'extra columns: status');
  t.equal(decryptRow?.keypair_id, keypair.id, 'extra columns: keypair');
  t.equal(decryptRow?.client_address, '127.0.0.1', 'extra columns: client address');
});

t.test('shutdown finishes requests in flight and writes their request-log entries', async (t) => {
  const before = await h.db.query<{ n: string }>('SELECT count(*) AS n FROM request_log');
  const keysBefore = (await h.db.query('SELECT id FROM keypair')).rowCount;
  // Key generation takes 300-800 ms in SoftHSM: these are still running when close() starts.
  const inFlight = [call('POST', '/keypair'), call('POST', '/keypair')];
  await sleep(150);
  await h.app.close();
  const answers = await Promise.all(inFlight);
  t.same(
    answers.map((a) => a.status),
    [200, 200],
    'requests being served when shutdown began were completed',
  );
  const created = answers.map((a) => (a.json as { id: string }).id);
  const rows = await h.db.query<{ id: string }>('SELECT id FROM keypair');
  t.equal(rows.rowCount, keysBefore + 2, 'their keypairs were recorded');
  for (const id of created) t.ok(rows.rows.some((r) => r.id === id), `keypair ${id} is in the database`);
  const after = await h.db.query<{ n: string }>('SELECT count(*) AS n FROM request_log');
  t.equal(Number(after.rows[0]?.n) - Number(before.rows[0]?.n), 2, 'and logged before the database closed');
});
