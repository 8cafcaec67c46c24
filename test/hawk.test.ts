// Hawk authentication against independent peers: the spec vectors of ../shared/vectors/hawk.md
// (MACs recomputed here with node:crypto), the @hapi/hawk reference client, and hand-built
// headers. Nonces live in a real Postgres; the full app runs on a real SoftHSM token.
import { constants, createPublicKey, publicEncrypt, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import Hawk from '@hapi/hawk';
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';
import type { LightMyRequestResponse } from 'fastify';
import t from 'tap';
import errorHandler from '../plugins/error-handler.js';
import hawkAuth from '../plugins/hawk-auth.js';
import rawJson from '../plugins/raw-json.js';
import type { Database } from '../src/db/database.js';
import { NonceRepository } from '../src/db/nonces.js';
import { createTestDatabase } from './helpers/database.js';
import { PREFIX, startHarness, type Harness } from './helpers/harness.js';
import { hawkFetch, hawkHeader, send, type ClientCredential, type Response } from './helpers/hawk-client.js';
import {
  buildHeader,
  hmacBase64,
  loadHawkVectors,
  normalizedString,
  payloadHash,
  timestampMac,
  type HeaderVector,
  type ServerVector,
} from './helpers/hawk-vectors.js';

type Test = Pick<typeof t, 'equal' | 'same' | 'ok' | 'match' | 'notMatch'>;

const UNAUTHORIZED_BODY = { message: 'Hawk authentication failed', status: 401 };
const STALE_BODY = { message: 'Stale timestamp', status: 401 };
const STALE_HEADER = /^Hawk ts="(\d+)", tsm="([^"]+)", error="Stale timestamp"$/;

/** What a caller can see of a refusal; every non-stale 401 must produce the same one. */
interface Fingerprint {
  status: number;
  body: string;
  wwwAuthenticate: string | undefined;
  errorCode: string | undefined;
  contentType: string | undefined;
}

async function eventually<T>(read: () => Promise<T>, done: (v: T) => boolean, ms = 3000): Promise<T> {
  const end = Date.now() + ms;
  let value = await read();
  while (!done(value) && Date.now() < end) {
    await sleep(25);
    value = await read();
  }
  return value;
}

// ---------------------------------------------------------------------------------------------
// Part 1: the spec vectors, on a small app holding only the real Hawk, raw-body and error plugins.
// ---------------------------------------------------------------------------------------------

const vectors = loadHawkVectors();
const vectorDb = await createTestDatabase(t);

interface VectorApp {
  app: FastifyInstance;
  setClock(ms: number): void;
}

/** An app with the vector credentials, a Postgres nonce store and an injected clock. */
async function vectorApp(db: Database): Promise<VectorApp> {
  let now = 0;
  const nonceRepo = new NonceRepository(db);
  const app = Fastify({ logger: false }) as unknown as FastifyInstance;
  await app.register(errorHandler);
  await app.register(rawJson);
  // V2 signs a text/plain payload: keep it raw, as raw-json does for JSON.
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser('text/plain', { parseAs: 'string' }, (request: FastifyRequest, body, done) => {
    request.rawBody = body as string;
    done(null, body);
  });
  await app.register(async (scope) => {
    await scope.register(hawkAuth, {
      credentials: async (id: string) => vectors.credentials.get(id),
      nonces: {
        claim: (hawkId: string, nonce: string) => nonceRepo.claim(hawkId, nonce, new Date(now), new Date(now + 120_000)),
      },
      clock: () => now,
    });
    const handler = async (request: FastifyRequest) => ({ hawkId: request.hawk?.id ?? null, body: request.body ?? null });
    for (const path of ['/resource/1', '/resource/4']) {
      scope.get(path, handler);
      scope.post(path, handler);
    }
  });
  await app.ready();
  t.teardown(() => app.close());
  return { app, setClock: (ms) => (now = ms) };
}

const va = await vectorApp(vectorDb.db);
// The real app for part 2 is booted now: tap ends the file once its queued subtests are done.
const h = await startHarness(t);
const credential = await h.register();

function injectVector(
  v: Pick<HeaderVector, 'method' | 'resource' | 'host' | 'port'>,
  opts: { authorization?: string; body?: string; contentType?: string; host?: string; app?: FastifyInstance } = {},
): Promise<LightMyRequestResponse> {
  const headers: Record<string, string> = { host: opts.host ?? `${v.host}:${v.port}` };
  if (opts.authorization !== undefined) headers.authorization = opts.authorization;
  if (opts.contentType !== undefined) headers['content-type'] = opts.contentType;
  return (opts.app ?? va.app).inject({
    method: v.method as 'GET' | 'POST',
    url: v.resource,
    headers,
    ...(opts.body !== undefined && { payload: opts.body }),
  });
}

const clearNonces = () => vectorDb.db.query('DELETE FROM hawk_nonce');
const nonceRows = async (db: Database, hawkId: string, nonce: string) =>
  Number((await db.query<{ n: string }>('SELECT count(*) AS n FROM hawk_nonce WHERE hawk_id = $1 AND nonce = $2', [hawkId, nonce])).rows[0]?.n);

const vectorRefusals: Array<{ label: string; print: Fingerprint }> = [];

function injectPrint(res: LightMyRequestResponse): Fingerprint {
  const h = (name: string) => {
    const v = res.headers[name];
    return v === undefined ? undefined : String(v);
  };
  return {
    status: res.statusCode,
    body: res.body,
    wwwAuthenticate: h('www-authenticate'),
    errorCode: h('strongroom-error-code'),
    contentType: h('content-type'),
  };
}

function expectVectorUnauthorized(t: Test, res: LightMyRequestResponse, label: string): void {
  t.equal(res.statusCode, 401, `${label}: 401`);
  t.same(res.json(), UNAUTHORIZED_BODY, `${label}: body`);
  t.equal(res.headers['www-authenticate'], 'Hawk', `${label}: WWW-Authenticate is bare Hawk`);
  t.equal(res.headers['strongroom-error-code'], 'HAWK_ERR_UNAUTHORIZED', `${label}: error code`);
  vectorRefusals.push({ label, print: injectPrint(res) });
}

function expectAccepted(t: Test, res: LightMyRequestResponse, id: string, label: string): void {
  t.equal(res.statusCode, 200, `${label}: ${res.body}`);
  t.equal((res.json() as { hawkId: unknown }).hawkId, id, `${label}: authenticated as ${id}`);
}

const row = (name: RegExp): ServerVector => {
  const found = vectors.server.find((v) => name.test(v.name));
  if (!found) throw new Error(`hawk.md has no V3-V8 row matching ${name}`);
  return found;
};
const sha1Row = row(/^sha1 /);
const sha256Row = row(/^sha256 /);
const replayRow = row(/^replay/);
const collisionRow = row(/^nonce collision/);
const postHashRow = row(/^POST with hash/);
const staleRow = row(/^stale/);

t.test('hawk.md parses, and every vector MAC recomputes with node:crypto alone', async (t) => {
  const { v1, v2, credentials } = vectors;
  t.same([...credentials.keys()].sort(), ['1', '123', '123456', '456', 'dh37fgj492je']);
  t.equal(credentials.get('1')?.algorithm, 'sha1');
  t.equal(credentials.get('dh37fgj492je')?.algorithm, 'sha256');
  t.not(credentials.get('456')?.key, credentials.get('123')?.key, 'id 456 has its own key');

  const key = credentials.get(v1.id)!;
  t.equal(normalizedString(v1), v1.normalized, 'V1 normalized string');
  t.equal(hmacBase64(key.algorithm, key.key, v1.normalized), v1.mac, 'V1 mac');
  t.equal(buildHeader(v1), v1.header, 'V1 header');

  t.equal(payloadHash(key.algorithm, v2.contentType, v2.payload), v2.hash, 'V2 payload hash');
  t.equal(normalizedString(v2), v2.normalized, 'V2 normalized string');
  t.equal(hmacBase64(key.algorithm, key.key, v2.normalized), v2.mac, 'V2 mac');
  t.equal(buildHeader(v2), v2.header, 'V2 header');

  t.equal(vectors.server.length, 6, 'six V3-V8 rows');
  t.same(
    vectors.server.map((v) => v.expect),
    ['accept', 'accept', 'accept', 'accept', 'accept', 'stale'],
  );
  for (const v of vectors.server) {
    const c = credentials.get(v.id)!;
    t.equal(hmacBase64(c.algorithm, c.key, normalizedString(v)), v.mac, `${v.name}: mac`);
  }
  t.ok(vectors.badMac.length > 0, 'bad-MAC vector present');
  t.same(vectors.errors.missing, ['id', 'ts', 'nonce', 'mac']);
});

t.test('V1 (API.md protocol example) is accepted and its nonce is recorded in Postgres', async (t) => {
  await clearNonces();
  const { v1 } = vectors;
  va.setClock(Number(v1.ts) * 1000);
  expectAccepted(t, await injectVector(v1, { authorization: v1.header }), v1.id, 'V1');
  t.equal(await nonceRows(vectorDb.db, v1.id, v1.nonce), 1);
  // Same id, same nonce, different request (the sha256 row): still a reused nonce.
  expectVectorUnauthorized(t, await injectVector(sha256Row, { authorization: sha256Row.header }), 'nonce reused by another request');
});

t.test('V2 (payload validation): the signed body is accepted, any other body is refused', async (t) => {
  const { v2 } = vectors;
  va.setClock(Number(v2.ts) * 1000);

  await clearNonces();
  const other = await injectVector(v2, { authorization: v2.header, body: `${v2.payload}!`, contentType: v2.contentType });
  expectVectorUnauthorized(t, other, 'V2 header, different body');

  await clearNonces();
  expectVectorUnauthorized(t, await injectVector(v2, { authorization: v2.header }), 'V2 header, no body');

  await clearNonces();
  const ok = await injectVector(v2, { authorization: v2.header, body: v2.payload, contentType: v2.contentType });
  expectAccepted(t, ok, v2.id, 'V2 header, signed body');
  t.equal((ok.json() as { body: unknown }).body, v2.payload, 'the handler saw the body');

  // The hash covers the media type without its parameters.
  await clearNonces();
  const withParams = await injectVector(v2, { authorization: v2.header, body: v2.payload, contentType: `${v2.contentType}; charset=utf-8` });
  expectAccepted(t, withParams, v2.id, 'V2 with content-type parameters');
});

t.test('V3-V8: accepted rows are accepted at their own time', async (t) => {
  for (const v of [sha1Row, sha256Row, replayRow, collisionRow]) {
    await clearNonces();
    va.setClock(Number(v.ts) * 1000);
    expectAccepted(t, await injectVector(v, { authorization: v.header }), v.id, v.name);
  }
});

t.test('V3-V8: POST with hash passes MAC and time, then the body is checked against the hash', async (t) => {
  // hawk.md (like upstream test/server.js) gives no payload for this hash, so no body can match:
  // the server must refuse the body, but only after the MAC and timestamp passed (nonce claimed).
  const v = postHashRow;
  t.ok(v.hash, 'the row carries a payload hash');
  va.setClock(Number(v.ts) * 1000);
  await clearNonces();
  expectVectorUnauthorized(t, await injectVector(v, { authorization: v.header }), 'POST with hash, empty body');
  t.equal(await nonceRows(vectorDb.db, v.id, v.nonce), 1, 'MAC and timestamp passed: the nonce was claimed');
  await clearNonces();
  const tampered = buildHeader({ ...v, mac: vectors.badMac });
  expectVectorUnauthorized(t, await injectVector(v, { authorization: tampered }), 'POST with hash, bad mac');
  t.equal(await nonceRows(vectorDb.db, v.id, v.nonce), 0, 'a bad MAC claims no nonce');
});

t.test('V3-V8: the stale row answers ts and a verifiable tsm, and claims no nonce', async (t) => {
  const v = staleRow;
  const key = vectors.credentials.get(v.id)!;
  const vts = Number(v.ts);
  for (const offset of [61, -61, 3600]) {
    await clearNonces();
    va.setClock((vts + offset) * 1000 + 500);
    const res = await injectVector(v, { authorization: v.header });
    t.equal(res.statusCode, 401, `server ${offset} s off: 401`);
    t.same(res.json(), STALE_BODY);
    t.equal(res.headers['strongroom-error-code'], 'HAWK_ERR_STALE_TIMESTAMP');
    const m = STALE_HEADER.exec(String(res.headers['www-authenticate']));
    t.ok(m, `WWW-Authenticate carries ts and tsm: ${res.headers['www-authenticate']}`);
    t.equal(m?.[1], String(vts + offset), 'ts is the server clock, in seconds');
    t.equal(m?.[2], timestampMac(key.algorithm, key.key, m?.[1] ?? ''), 'tsm = HMAC(key, "hawk.1.ts\\n<ts>\\n")');
    t.equal(await nonceRows(vectorDb.db, v.id, v.nonce), 0, 'a stale request claims no nonce');
  }
  // The same header within the skew is fine: only time made it fail.
  await clearNonces();
  va.setClock((vts + 59) * 1000);
  expectAccepted(t, await injectVector(v, { authorization: v.header }), v.id, 'stale row 59 s later');
});

t.test('replay: the same header twice is refused; the same nonce under another credential is not', async (t) => {
  await clearNonces();
  va.setClock(Number(replayRow.ts) * 1000);
  expectAccepted(t, await injectVector(replayRow, { authorization: replayRow.header }), replayRow.id, 'first use');
  expectVectorUnauthorized(t, await injectVector(replayRow, { authorization: replayRow.header }), 'replay, same app');

  // A second app instance sharing only the database sees the nonce too.
  const second = await vectorApp(vectorDb.db);
  second.setClock(Number(replayRow.ts) * 1000);
  expectVectorUnauthorized(t, await injectVector(replayRow, { authorization: replayRow.header, app: second.app }), 'replay, second app');

  t.equal(collisionRow.nonce, replayRow.nonce, 'the collision vector reuses the nonce');
  expectAccepted(t, await injectVector(collisionRow, { authorization: collisionRow.header }), collisionRow.id, 'id 456, same nonce');
  t.equal(sha1Row.nonce, replayRow.nonce);
  expectAccepted(t, await injectVector(sha1Row, { authorization: sha1Row.header }), sha1Row.id, 'id 1, same nonce');
  expectVectorUnauthorized(t, await injectVector(collisionRow, { authorization: collisionRow.header }), 'id 456 replayed');
  const { rows } = await vectorDb.db.query<{ hawk_id: string }>('SELECT hawk_id FROM hawk_nonce WHERE nonce = $1 ORDER BY hawk_id', [replayRow.nonce]);
  t.same(rows.map((r) => r.hawk_id), ['1', '123', '456'], 'one record per credential');
});

t.test('the bad-MAC vector is refused and claims no nonce', async (t) => {
  await clearNonces();
  va.setClock(Number(replayRow.ts) * 1000);
  const header = buildHeader({ ...replayRow, mac: vectors.badMac });
  expectVectorUnauthorized(t, await injectVector(replayRow, { authorization: header }), 'bad mac');
  t.equal(await nonceRows(vectorDb.db, replayRow.id, replayRow.nonce), 0);
});

t.test('malformed headers from the error tests are refused (built around a valid MAC)', async (t) => {
  await clearNonces();
  va.setClock(Number(replayRow.ts) * 1000);
  const v = replayRow;
  const attrs: Array<[string, string]> = [
    ['id', `id="${v.id}"`],
    ['ts', `ts="${v.ts}"`],
    ['nonce', `nonce="${v.nonce}"`],
    ['ext', `ext="${v.ext}"`],
    ['mac', `mac="${v.mac}"`],
  ];
  const join = (list: string[]) => `Hawk ${list.join(', ')}`;
  const plain = attrs.map(([, a]) => a);
  const cases: Array<[string, string]> = [
    ['duplicate attribute', join([vectors.errors.duplicate, ...plain.slice(1)])],
    ['unknown attribute', join([...plain.slice(0, 3), vectors.errors.unknown, ...plain.slice(3)])],
    ['empty id', join([vectors.errors.empty, ...plain.slice(1)])],
    ...vectors.errors.missing.map((name): [string, string] => [`missing ${name}`, join(attrs.filter(([n]) => n !== name).map(([, a]) => a))]),
    ['Basic scheme', 'Basic xyz'],
    ['garbage', '!@#'],
    ['scheme only', 'Hawk'],
  ];
  for (const [label, header] of cases) {
    expectVectorUnauthorized(t, await injectVector(v, { authorization: header }), label);
  }
  expectVectorUnauthorized(t, await injectVector(v, {}), 'no Authorization header');
  expectVectorUnauthorized(t, await injectVector(v, { authorization: v.header, host: 'example.com:8080:1' }), 'invalid Host header');
  // None of them claimed the nonce: the well-formed header still works.
  expectAccepted(t, await injectVector(v, { authorization: v.header }), v.id, 'the valid header afterwards');
});

t.test('every refusal but the stale one is byte-identical (vector app)', async (t) => {
  t.ok(vectorRefusals.length >= 15, `${vectorRefusals.length} refusals collected`);
  const first = vectorRefusals[0]!.print;
  t.same(first, {
    status: 401,
    body: JSON.stringify(UNAUTHORIZED_BODY),
    wwwAuthenticate: 'Hawk',
    errorCode: 'HAWK_ERR_UNAUTHORIZED',
    contentType: 'application/json; charset=utf-8',
  });
  for (const { label, print } of vectorRefusals) t.same(print, first, label);
});

// ---------------------------------------------------------------------------------------------
// Part 2: the real app (real token, real Postgres, real listener) and the @hapi/hawk client.
// ---------------------------------------------------------------------------------------------

const url = (path: string, harness: Harness = h) => `${harness.base}${path}`;
const wrongKey: ClientCredential = { ...credential, key: randomBytes(32).toString('base64') };
const unknownId: ClientCredential = { id: `nobody-${randomBytes(4).toString('hex')}`, key: credential.key, algorithm: 'sha256' };

const appRefusals: Array<{ label: string; print: Fingerprint; headerNames: string[] }> = [];

function fetchPrint(res: Response): Fingerprint {
  return {
    status: res.status,
    body: res.text,
    wwwAuthenticate: res.headers.get('www-authenticate') ?? undefined,
    errorCode: res.headers.get('strongroom-error-code') ?? undefined,
    contentType: res.headers.get('content-type') ?? undefined,
  };
}

function expectUnauthorized(t: Test, res: Response, label: string): void {
  t.equal(res.status, 401, `${label}: 401 (${res.text})`);
  t.same(res.json, UNAUTHORIZED_BODY, `${label}: body`);
  t.equal(res.headers.get('www-authenticate'), 'Hawk', `${label}: WWW-Authenticate`);
  t.equal(res.headers.get('strongroom-error-code'), 'HAWK_ERR_UNAUTHORIZED', `${label}: error code`);
  const headerNames = [...res.headers.keys()].filter((n) => n !== 'date').sort();
  appRefusals.push({ label, print: fetchPrint(res), headerNames });
}

function expectStale(t: Test, res: Response, key: string, label: string, serverNow = Date.now() / 1000): void {
  t.equal(res.status, 401, `${label}: 401`);
  t.same(res.json, STALE_BODY, `${label}: body`);
  t.equal(res.headers.get('strongroom-error-code'), 'HAWK_ERR_STALE_TIMESTAMP', `${label}: error code`);
  const header = res.headers.get('www-authenticate') ?? '';
  const m = STALE_HEADER.exec(header);
  t.ok(m, `${label}: WWW-Authenticate: ${header}`);
  const ts = Number(m?.[1]);
  t.ok(Math.abs(ts - serverNow) <= 3, `${label}: ts (${ts}) is the server's now (${Math.floor(serverNow)})`);
  t.equal(m?.[2], timestampMac('sha256', key, m?.[1] ?? ''), `${label}: tsm = base64 HMAC-SHA256(key, "hawk.1.ts\\n<ts>\\n")`);
}

const nowSecs = () => Date.now() / 1000;

async function logRows(where: string, params: unknown[]) {
  return (
    await h.db.query<{ hawk_id: string | null; status_code: number; keypair_id: string | null }>(
      `SELECT hawk_id, status_code, keypair_id FROM request_log WHERE ${where} ORDER BY id`,
      params,
    )
  ).rows;
}

let keypair: { id: string; publicKey: string } | undefined;
/** The one keypair of this file, created on first use. */
async function theKeypair(): Promise<{ id: string; publicKey: string }> {
  if (!keypair) {
    const res = await hawkFetch({ method: 'POST', url: url('/keypair'), credential });
    if (res.status !== 200) throw new Error(`POST /keypair answered ${res.status}: ${res.text}`);
    keypair = res.json as { id: string; publicKey: string };
  }
  return keypair;
}

async function ciphertext(padding: number, message: Buffer): Promise<string> {
  const kp = await theKeypair();
  const key = createPublicKey({ key: Buffer.from(kp.publicKey, 'base64'), format: 'der', type: 'pkcs1' });
  return publicEncrypt({ key, padding, oaepHash: 'sha1' }, message).toString('base64');
}

t.test('GET /health needs no authentication', async (t) => {
  const res = await send('GET', url('/health'));
  t.equal(res.status, 200);
  t.equal(res.text, 'OK');
});

t.test('a replayed header is refused, also by a second instance on the same database and token', async (t) => {
  const first = await hawkFetch({ method: 'GET', url: url('/keypair'), credential });
  t.equal(first.status, 200, first.text);
  t.ok(Array.isArray(first.json));
  expectUnauthorized(t, await send('GET', url('/keypair'), { headers: { authorization: first.authorization } }), 'replay, same instance');

  const h2 = await startHarness(t, { token: h.token, databaseUrl: h.databaseUrl });
  const hostOfFirst = new URL(h.origin).host;
  // A header signed for the first instance, used there, then replayed into the second. The second
  // is reached with the first one's Host header so that the MAC itself would still verify.
  const used = await hawkFetch({ method: 'GET', url: url('/keypair'), credential });
  t.equal(used.status, 200, used.text);
  const atSecond = await h2.app.inject({ method: 'GET', url: `${PREFIX}/keypair`, headers: { host: hostOfFirst, authorization: used.authorization } });
  t.equal(atSecond.statusCode, 401, 'replay at the second instance');
  t.same(atSecond.json(), UNAUTHORIZED_BODY);
  t.equal(atSecond.headers['strongroom-error-code'], 'HAWK_ERR_UNAUTHORIZED');
  t.equal(atSecond.headers['www-authenticate'], 'Hawk');

  // Control: a fresh header used first at the second instance is accepted there, then refused here.
  const fresh = hawkHeader({ method: 'GET', url: url('/keypair'), credential });
  const freshAtSecond = await h2.app.inject({ method: 'GET', url: `${PREFIX}/keypair`, headers: { host: hostOfFirst, authorization: fresh } });
  t.equal(freshAtSecond.statusCode, 200, `the second instance accepts an unused header: ${freshAtSecond.body}`);
  expectUnauthorized(t, await send('GET', url('/keypair'), { headers: { authorization: fresh } }), 'replay back at the first instance');
});

t.test('stale timestamps get a tsm to correct the clock; 59 s of skew is accepted', async (t) => {
  expectStale(t, await hawkFetch({ method: 'GET', url: url('/keypair'), credential, timestamp: Math.floor(nowSecs()) - 61 }), credential.key, '61 s in the past');
  expectStale(t, await hawkFetch({ method: 'GET', url: url('/keypair'), credential, timestamp: Math.ceil(nowSecs()) + 61 }), credential.key, '61 s in the future');
  const q = '/request-log?maxEntries=5';
  expectStale(
    t,
    await hawkFetch({ method: 'GET', url: url(q), credential, signWithoutQuery: true, timestamp: Math.floor(nowSecs()) - 61 }),
    credential.key,
    'stale, MAC over the path without the query',
  );
  const past = await hawkFetch({ method: 'GET', url: url('/keypair'), credential, timestamp: Math.ceil(nowSecs()) - 59 });
  t.equal(past.status, 200, `59 s in the past: ${past.text}`);
  const future = await hawkFetch({ method: 'GET', url: url('/keypair'), credential, timestamp: Math.floor(nowSecs()) + 59 });
  t.equal(future.status, 200, `59 s in the future: ${future.text}`);
});

t.test('a stale request does not consume its nonce', async (t) => {
  const nonce = randomBytes(6).toString('hex');
  const stale = await hawkFetch({ method: 'GET', url: url('/keypair'), credential, nonce, timestamp: Math.floor(nowSecs()) - 61 });
  expectStale(t, stale, credential.key, 'stale with nonce N');
  t.equal(await nonceRows(h.db, credential.id, nonce), 0, 'no nonce record after the stale request');
  const ok = await hawkFetch({ method: 'GET', url: url('/keypair'), credential, nonce });
  t.equal(ok.status, 200, `nonce N with a fresh ts: ${ok.text}`);
  t.equal(await nonceRows(h.db, credential.id, nonce), 1, 'now it is recorded');
  // A new ts makes a new MAC, but the nonce is spent.
  const again = await hawkFetch({ method: 'GET', url: url('/keypair'), credential, nonce, timestamp: Math.floor(nowSecs()) + 1 });
  expectUnauthorized(t, again, 'nonce N reused with another ts');
});

t.test('a nonce stays spent for as long as any ts that carries it is fresh', async (t) => {
  let now = Math.floor(Date.now() / 1000) * 1000;
  const T = now;
  const hc = await startHarness(t, { token: h.token, databaseUrl: h.databaseUrl, clock: () => now });
  const ts = T / 1000 + 60; // the furthest-future ts the server accepts at T
  const first = await hawkFetch({ method: 'GET', url: url('/keypair', hc), credential, timestamp: ts });
  t.equal(first.status, 200, `ts = now + 60 s: ${first.text}`);
  now = T + 119_000; // ts is now 59 s old: still fresh, so its nonce must still be remembered
  expectUnauthorized(t, await send('GET', url('/keypair', hc), { headers: { authorization: first.authorization } }), 'replay 119 s later');
  const control = await hawkFetch({ method: 'GET', url: url('/keypair', hc), credential, timestamp: ts });
  t.equal(control.status, 200, `the same ts with a fresh nonce is still accepted 119 s later: ${control.text}`);
  now = T + 121_000;
  expectStale(t, await send('GET', url('/keypair', hc), { headers: { authorization: first.authorization } }), credential.key, 'replay 121 s later', T / 1000 + 121);
});

t.test('nonces are per credential in the real app too', async (t) => {
  const other = await h.register();
  const nonce = randomBytes(6).toString('hex');
  const a = await hawkFetch({ method: 'GET', url: url('/keypair'), credential, nonce });
  t.equal(a.status, 200, a.text);
  const b = await hawkFetch({ method: 'GET', url: url('/keypair'), credential: other, nonce });
  t.equal(b.status, 200, `another credential, same nonce: ${b.text}`);
  expectUnauthorized(t, await hawkFetch({ method: 'GET', url: url('/keypair'), credential: other, nonce }), 'same credential, same nonce, new MAC');
});

t.test('bad MAC, unknown id and non-Hawk Authorization headers get the same 401', async (t) => {
  expectUnauthorized(t, await hawkFetch({ method: 'GET', url: url('/keypair'), credential: wrongKey }), 'bad MAC (wrong key)');
  expectUnauthorized(t, await hawkFetch({ method: 'GET', url: url('/keypair'), credential: unknownId }), 'unknown id');
  expectUnauthorized(t, await send('GET', url('/keypair')), 'no Authorization');
  expectUnauthorized(t, await send('GET', url('/keypair'), { headers: { authorization: 'Basic xyz' } }), 'Basic xyz');
  expectUnauthorized(t, await send('GET', url('/keypair'), { headers: { authorization: 'garbage' } }), 'garbage');
  expectUnauthorized(t, await send('GET', url('/keypair'), { headers: { authorization: 'Hawk id="x", ts="1", nonce="n", mac="m", mac="m"' } }), 'duplicate mac');
});

t.test('a ts that is not an integer is refused even with a correct MAC', async (t) => {
  const port = Number(new URL(h.origin).port);
  const resource = `${PREFIX}/keypair`;
  const handBuilt = (ts: string) => {
    const nonce = randomBytes(6).toString('hex');
    const mac = Hawk.crypto.calculateMac('header', { key: credential.key, algorithm: 'sha256' }, {
      ts,
      nonce,
      method: 'GET',
      resource,
      host: '127.0.0.1',
      port,
    });
    // And the same MAC again from the spec alone, so the construction itself is checked.
    t.equal(mac, hmacBase64('sha256', credential.key, normalizedString({ ts, nonce, method: 'GET', resource, host: '127.0.0.1', port, hash: undefined, ext: undefined })));
    return `Hawk id="${credential.id}", ts="${ts}", nonce="${nonce}", mac="${mac}"`;
  };
  const control = await send('GET', url('/keypair'), { headers: { authorization: handBuilt(String(Math.floor(nowSecs()))) } });
  t.equal(control.status, 200, `a hand-built header with a numeric ts works: ${control.text}`);
  expectUnauthorized(t, await send('GET', url('/keypair'), { headers: { authorization: handBuilt('abc') } }), 'ts="abc"');
  expectUnauthorized(t, await send('GET', url('/keypair'), { headers: { authorization: handBuilt(`${Math.floor(nowSecs())}.0`) } }), 'ts with a fraction');
});

t.test('payload hash: checked when signed, optional when not', async (t) => {
  const kp = await theKeypair();
  const m1 = randomBytes(32);
  const m2 = randomBytes(32);
  const a = { keypairId: kp.id, body: await ciphertext(constants.RSA_PKCS1_OAEP_PADDING, m1) };
  const b = { keypairId: kp.id, body: await ciphertext(constants.RSA_PKCS1_OAEP_PADDING, m2) };

  const hashed = await hawkFetch({ method: 'POST', url: url('/decrypt'), credential, json: a, payloadHash: true });
  t.equal(hashed.status, 200, `correct payload hash: ${hashed.text}`);
  t.same(hashed.json, { body: m1.toString('base64') });
  t.match(hashed.authorization, /hash="/, 'the client did sign a hash');

  const unhashed = await hawkFetch({ method: 'POST', url: url('/decrypt'), credential, json: b });
  t.equal(unhashed.status, 200, `no payload hash: ${unhashed.text}`);
  t.same(unhashed.json, { body: m2.toString('base64') });
  t.notMatch(unhashed.authorization, /hash="/);

  // Signed over body a, sent with body b (itself a valid request): the hash must catch it.
  const authorization = hawkHeader({ method: 'POST', url: url('/decrypt'), credential, json: a, payloadHash: true });
  const marker = `wrong-hash-${randomBytes(4).toString('hex')}`;
  const wrong = await send('POST', url('/decrypt'), { json: b, headers: { authorization, 'PureCloud-User-Id': marker } });
  expectUnauthorized(t, wrong, 'wrong payload hash');
  const rows = await eventually(
    () => logRows('user_id = $1', [marker]),
    (r) => r.length === 1,
  );
  t.same(rows, [{ hawk_id: null, status_code: 401, keypair_id: null }], 'logged as unauthenticated');
});

t.test('MAC over path+query and over the path alone are both accepted; over another query is not', async (t) => {
  const kp = await theKeypair();
  const target = url('/decrypt?decryptType=pkcs1');
  // Path-only MACs come from a credential that never signed a query (one that has is refused them:
  // see test/edge-abuse.test.ts).
  const pathOnly = await h.register();
  for (const [signWithoutQuery, who] of [[false, credential], [true, pathOnly]] as const) {
    const message = randomBytes(32);
    const json = { keypairId: kp.id, body: await ciphertext(constants.RSA_PKCS1_PADDING, message) };
    const res = await hawkFetch({ method: 'POST', url: target, credential: who, json, signWithoutQuery });
    t.equal(res.status, 200, `signWithoutQuery=${signWithoutQuery}: ${res.text}`);
    t.same(res.json, { body: message.toString('base64') });
  }
  const json = { keypairId: kp.id, body: await ciphertext(constants.RSA_PKCS1_PADDING, randomBytes(32)) };
  const other = await hawkFetch({ method: 'POST', url: target, credential, json, signUrl: url('/decrypt?decryptType=oaep') });
  expectUnauthorized(t, other, 'MAC over a different query');

  const log = await hawkFetch({ method: 'GET', url: url('/request-log?maxEntries=5'), credential: pathOnly, signWithoutQuery: true });
  t.equal(log.status, 200, log.text);
  t.equal((log.json as unknown[]).length, 5, 'the unsigned query still applies');
  const signer = await hawkFetch({ method: 'GET', url: url('/request-log?maxEntries=5'), credential, signWithoutQuery: true });
  expectUnauthorized(t, signer, 'a path-only MAC from the credential that signed its query before');
});

t.test('with PUBLIC_URL, the public host and port are the ones signed', async (t) => {
  const hp = await startHarness(t, { token: h.token, databaseUrl: h.databaseUrl, env: { PUBLIC_URL: 'https://lkm.example.com' } });
  const path = '/request-log?maxEntries=5';
  const publicSigned = await hawkFetch({ method: 'GET', url: url(path, hp), credential, signUrl: `https://lkm.example.com${PREFIX}${path}` });
  t.equal(publicSigned.status, 200, `MAC over https://lkm.example.com (port 443): ${publicSigned.text}`);
  t.equal((publicSigned.json as unknown[]).length, 5);
  expectUnauthorized(t, await hawkFetch({ method: 'GET', url: url(path, hp), credential }), 'MAC over the local URL, PUBLIC_URL set');
  expectUnauthorized(
    t,
    await hawkFetch({ method: 'GET', url: url(path, hp), credential, signUrl: `http://lkm.example.com${PREFIX}${path}` }),
    'MAC over the public host with port 80',
  );
  // And the other way round: without PUBLIC_URL the public URL is not what the server sees.
  expectUnauthorized(
    t,
    await hawkFetch({ method: 'GET', url: url(path), credential, signUrl: `https://lkm.example.com${PREFIX}${path}` }),
    'MAC over the public URL, PUBLIC_URL not set',
  );
});

t.test('a refused POST /keypair creates nothing, and is itself logged', async (t) => {
  await theKeypair();
  const count = async () => Number((await h.db.query<{ n: string }>('SELECT count(*) AS n FROM keypair')).rows[0]?.n);
  const before = await count();
  const idsBefore = (await h.app.keyStore.listKeyPairIds()).sort();
  t.equal(before, 1, 'one keypair so far');
  t.equal(idsBefore.length, 1, 'the token holds it');

  const marker = `refused-keypair-${randomBytes(4).toString('hex')}`;
  const headers = { 'PureCloud-User-Id': marker };
  expectUnauthorized(t, await hawkFetch({ method: 'POST', url: url('/keypair'), credential: wrongKey, headers }), 'POST /keypair, bad MAC');
  expectUnauthorized(t, await hawkFetch({ method: 'POST', url: url('/keypair'), credential: unknownId, headers }), 'POST /keypair, unknown id');
  expectUnauthorized(t, await send('POST', url('/keypair'), { headers }), 'POST /keypair, no Authorization');

  t.equal(await count(), before, 'no keypair row');
  t.same((await h.app.keyStore.listKeyPairIds()).sort(), idsBefore, 'no key in the token');

  const rows = await eventually(
    () => logRows('user_id = $1', [marker]),
    (r) => r.length === 3,
  );
  t.equal(rows.length, 3, 'all three refusals are logged');
  t.same(rows, Array(3).fill({ hawk_id: null, status_code: 401, keypair_id: null }));
});

t.test('a refused DELETE /request-log clears nothing, and is itself logged', async (t) => {
  const marker = `before-delete-${randomBytes(4).toString('hex')}`;
  for (let i = 0; i < 2; i++) {
    const res = await hawkFetch({ method: 'GET', url: url('/keypair'), credential, headers: { 'PureCloud-User-Id': marker } });
    t.equal(res.status, 200);
  }
  await eventually(
    () => logRows('user_id = $1', [marker]),
    (r) => r.length === 2,
  );

  const refused = `refused-delete-${randomBytes(4).toString('hex')}`;
  const headers = { 'PureCloud-User-Id': refused };
  expectUnauthorized(t, await hawkFetch({ method: 'DELETE', url: url('/request-log'), credential: wrongKey, headers }), 'DELETE, bad MAC');
  expectUnauthorized(t, await send('DELETE', url('/request-log'), { headers }), 'DELETE, no Authorization');

  const clears = await h.db.query<{ n: string }>('SELECT count(*) AS n FROM request_log_clear');
  t.equal(Number(clears.rows[0]?.n), 0, 'request_log_clear is empty');

  const list = await hawkFetch({ method: 'GET', url: url('/request-log?maxEntries=10000'), credential });
  t.equal(list.status, 200, list.text);
  const entries = list.json as Array<{ userId: string; requestMethod: string; requestUri: string }>;
  t.same(
    entries.filter((e) => e.userId === marker).map((e) => [e.requestMethod, e.requestUri]),
    [
      ['GET', `${PREFIX}/keypair`],
      ['GET', `${PREFIX}/keypair`],
    ],
    'the earlier entries are still listed',
  );

  const rows = await eventually(
    () => logRows('user_id = $1', [refused]),
    (r) => r.length === 2,
  );
  t.same(rows, Array(2).fill({ hawk_id: null, status_code: 401, keypair_id: null }), 'the refused DELETEs are logged without a Hawk id');
  const accepted = await logRows('user_id = $1', [marker]);
  t.same(accepted.map((r) => [r.hawk_id, r.status_code]), [
    [credential.id, 200],
    [credential.id, 200],
  ], 'accepted requests carry the Hawk id');
});

t.test('every refusal but the stale one is byte-identical (real app)', async (t) => {
  t.ok(appRefusals.length >= 15, `${appRefusals.length} refusals collected`);
  const first = appRefusals[0]!;
  t.same(first.print, {
    status: 401,
    body: JSON.stringify(UNAUTHORIZED_BODY),
    wwwAuthenticate: 'Hawk',
    errorCode: 'HAWK_ERR_UNAUTHORIZED',
    contentType: 'application/json; charset=utf-8',
  });
  for (const { label, print, headerNames } of appRefusals) {
    t.same(print, first.print, label);
    t.same(headerNames, first.headerNames, `${label}: same header names`);
  }
  t.same(first.print, vectorRefusals[0]?.print, 'and the same as the vector app refusals');
});

t.test('a credential revoked in the database is refused once the 2 s credential cache expires', async (t) => {
  const credential = await h.register();
  const get = () => hawkFetch({ method: 'GET', url: `${h.base}/keypair`, credential });
  t.equal((await get()).status, 200, 'works before');
  await h.db.query('UPDATE hawk_credential SET revoked_at = now() WHERE id = $1', [credential.id]);
  await sleep(2_100);
  const res = await get();
  t.equal(res.status, 401, 'refused after revocation');
  t.equal(res.headers.get('strongroom-error-code'), 'HAWK_ERR_UNAUTHORIZED');
});
