// Issue 9, items 7, 8, 10, 11, 12, 15, 16 (the outside security probe), each reproduced with
// working requests against the real app on a real SoftHSM token and a real Postgres. Each test
// header says what the attack achieved on the code before this change.
import { constants, publicEncrypt, randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import t from 'tap';
import { RefusalSampler } from '../plugins/request-log.js';
import { verifyChain } from '../src/audit/verify.js';
import { requestLogUuid } from '../src/db/request-log.js';
import { ERROR_CODE_HEADER } from '../src/errors.js';
import { PREFIX, startHarness, type Harness } from './helpers/harness.js';
import { hawkHeader, type ClientCredential } from './helpers/hawk-client.js';
import { injectRequest, signed, type SignedRequest } from './helpers/inject-hawk.js';
import { createTestToken } from './helpers/token.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const LIMITED_BODY = { message: 'Too many failed authentication attempts; retry later', status: 429 };

// ---------------------------------------------------------------------------------------------
// The sampler on its own: which refusals are written in full, what the aggregate says.
// ---------------------------------------------------------------------------------------------

t.test('RefusalSampler: N per address and M in all per window in full, the rest counted per address', async (t) => {
  let now = 120_000; // a window boundary
  const s = new RefusalSampler({ perAddress: 3, perWindow: 5, windowMs: 60_000, maxAddresses: 4, maxListed: 2, clock: () => now });
  const admitted = (address: string, n: number) => Array.from({ length: n }, () => s.admit(address)).filter(Boolean).length;
  t.equal(admitted('a', 10), 3, 'address a: 3 in full, 7 counted');
  t.equal(admitted('b', 10), 2, 'address b: the window budget (5) is used up after 2');
  t.equal(admitted('c', 1), 0, 'address c: counted');
  t.same(s.take(), [], 'nothing handed out before the window ends');
  now += 60_000;
  t.equal(admitted('a', 1), 1, 'a new window: a is written in full again');
  const [w] = s.take();
  t.same(w, {
    windowStart: new Date(120_000).toISOString(),
    windowEnd: new Date(180_000).toISOString(),
    counted: 16,
    addresses: [
      { address: 'a', count: 7 },
      { address: 'b', count: 8 },
    ].sort((x, y) => y.count - x.count),
    otherAddresses: 1,
    otherCount: 1,
  });
  // Memory bound: at most maxAddresses addresses per window; beyond, one "other" bucket.
  for (let i = 0; i < 1000; i++) s.admit(`10.0.${i >> 8}.${i & 255}`);
  const [last] = s.take(true);
  t.equal(last?.counted, 1000 - 3, 'the 3 addresses that fit are written in full; the other 997 are counted');
  t.same(last?.addresses, [], 'no tracked address had a refusal counted');
  t.equal(last?.otherCount, 997, 'the overflow bucket holds them');
  t.equal((last?.otherCount ?? 0) + (last?.addresses ?? []).reduce((n, x) => n + x.count, 0), last?.counted, 'counts add up');
});

// ---------------------------------------------------------------------------------------------
// The real app. P: TRUST_PROXY lists 127.0.0.1, so injected requests from 127.0.0.1 carry the
// client address in X-Forwarded-For; every limit at its default (HAWK_FAILURE_LIMIT 20, id 100,
// ADMIN_FAILURE_LIMIT 10, 10 refusals per address and 1,000 per minute in full).
// ---------------------------------------------------------------------------------------------

const token = createTestToken();
let offset = 0;
const clock = () => Date.now() + offset;
const DEFAULTS = {
  HAWK_FAILURE_LIMIT: '20',
  ADMIN_FAILURE_LIMIT: '10',
  AUDIT_REFUSALS_PER_ADDRESS: '10',
  AUDIT_REFUSALS_PER_MINUTE: '1000',
  PKCS11_SESSIONS: '2',
};
const P = await startHarness(t, { token, clock, env: { ...DEFAULTS, TRUST_PROXY: '127.0.0.1' } });

const from = (r: SignedRequest, client: string): SignedRequest => ({ ...r, headers: { ...r.headers, 'x-forwarded-for': client } });
const wrongKey = (c: ClientCredential): ClientCredential => ({ ...c, key: randomBytes(32).toString('base64') });
const count = async (h: Harness, sql: string, params: unknown[] = []) =>
  Number((await h.db.query<{ n: string }>(sql, params)).rows[0]?.n ?? 0);

t.test('item 10: 20 bad headers naming the real id from each of 6 addresses cannot lock Genesys out', async (t) => {
  // Before: the per-id limit (100 failures from addresses never seen authenticating) refused the
  // id to every new address, correct MAC or not, and the "seen" set was empty after a restart:
  // the correctly signed request below got 429. Now only wrong MACs naming the id get 429.
  const genesys = await P.register();
  const statuses: number[] = [];
  for (let a = 1; a <= 6; a++) {
    for (let i = 0; i < 20; i++) {
      const bad = signed(wrongKey(genesys), 'GET', `${PREFIX}/keypair`, { nowMs: clock() });
      statuses.push((await injectRequest(P.app, from(bad, `198.51.100.${a}`), '127.0.0.1')).statusCode);
    }
  }
  t.equal(statuses.filter((s) => s === 401).length, 100, 'the first 100 failures (the id budget) are 401');
  t.equal(statuses.filter((s) => s === 429).length, 20, 'then wrong MACs naming the id get 429');
  const guess = await injectRequest(P.app, from(signed(wrongKey(genesys), 'GET', `${PREFIX}/keypair`, { nowMs: clock() }), '203.0.113.8'), '127.0.0.1');
  t.equal(guess.statusCode, 429, 'a wrong MAC from a new address naming the id: 429');
  t.same(guess.json(), LIMITED_BODY);
  const real = await injectRequest(P.app, from(signed(genesys, 'GET', `${PREFIX}/keypair`, { nowMs: clock() }), '203.0.113.9'), '127.0.0.1');
  t.equal(real.statusCode, 200, 'a correctly signed request from a new address is served');
  const again = await injectRequest(P.app, from(signed(genesys, 'GET', `${PREFIX}/keypair`, { nowMs: clock() }), '203.0.113.10'), '127.0.0.1');
  t.equal(again.statusCode, 200, 'and the next one too: nothing remembers who authenticated');
});

t.test('item 11: an unparsable X-Forwarded-For is refused and never stored; an untrusted peer cannot pick addresses', async (t) => {
  // Before: with TRUST_PROXY=true, "not-an-ip; DROP" was request.ip and stored as client_address,
  // and 300 different X-Forwarded-For values were 300 addresses: no 429.
  const c = await P.register();
  const res = await injectRequest(P.app, from(signed(c, 'GET', `${PREFIX}/keypair`, { nowMs: clock() }), 'not-an-ip; DROP'), '127.0.0.1');
  t.equal(res.statusCode, 400);
  t.equal(res.headers[ERROR_CODE_HEADER], 'REQ_ERR_BAD_CLIENT_ADDRESS');
  t.same(res.json(), { message: 'X-Forwarded-For does not name a client IP address', status: 400 });
  await P.app.auditWriter.flush();
  t.equal(await count(P, `SELECT count(*) AS n FROM request_log WHERE client_address LIKE '%DROP%' OR client_address LIKE '%not-an-ip%'`), 0, 'never stored');
  t.equal(
    await count(P, `SELECT count(*) AS n FROM request_log WHERE status_code = 400 AND client_address = '127.0.0.1' AND request_uri = $1`, [`${PREFIX}/keypair`]),
    1,
    'the refusal is logged under the TCP peer',
  );

  // U trusts only 10.9.9.9: from 127.0.0.1 every X-Forwarded-For value is ignored.
  const U = await startHarness(t, { token, clock, env: { ...DEFAULTS, TRUST_PROXY: '10.9.9.9' } });
  const uc = await U.register();
  const statuses: number[] = [];
  for (let i = 0; i < 300; i++) {
    const bad = from(signed(wrongKey(uc), 'GET', `${PREFIX}/keypair`, { nowMs: clock() }), `192.0.2.${i % 250}, 10.${i}.0.1`);
    statuses.push((await injectRequest(U.app, bad, '127.0.0.1')).statusCode);
  }
  t.equal(statuses.indexOf(429), 20, 'the 21st bad header gets 429: all 300 count against the peer');
  t.equal(statuses.filter((s) => s === 429).length, 280);
  await U.app.auditWriter.flush();
  const stored = await U.db.query<{ client_address: string }>('SELECT DISTINCT client_address FROM request_log WHERE client_address IS NOT NULL');
  t.same(stored.rows.map((r) => r.client_address), ['127.0.0.1'], 'only the real peer is stored');

  // TRUST_PROXY=true believes every hop: the service says so at start.
  const T = await startHarness(t, { token, captureLog: true, env: { ...DEFAULTS, TRUST_PROXY: 'true' } });
  t.ok(T.logs.some((l) => /"level":40/.test(l) && l.includes('TRUST_PROXY=true believes every X-Forwarded-For hop')), 'a warning at start');
});

t.test('item 12: 600 wrong admin tokens get 429s, leave audit rows, and do not lock out the right token', async (t) => {
  // Before: 600 wrong tokens were 600 × 401 (no limit), and /admin/v1/runtime refusals left no row.
  const attacker = '198.51.100.77';
  const statuses: number[] = [];
  const paths = ['/key-management/v1/auth', '/admin/v1/keypairs', '/admin/v1/runtime'];
  for (let i = 0; i < 600; i++) {
    const path = paths[i % 3]!;
    const res = await P.app.inject({
      method: path.endsWith('/auth') ? 'POST' : 'GET',
      url: path,
      headers: { authorization: `Bearer ${randomBytes(32).toString('base64url')}`, 'x-forwarded-for': attacker },
      ...(path.endsWith('/auth') && { payload: { id: `stranger-${i}` } }),
      remoteAddress: '127.0.0.1',
    });
    statuses.push(res.statusCode);
    if (i === 10) {
      t.equal(res.headers[ERROR_CODE_HEADER], 'ADMIN_ERR_TOO_MANY_FAILURES');
      t.match(String(res.headers['retry-after']), /^[1-9]\d*$/, 'Retry-After in seconds');
      t.same(res.json(), LIMITED_BODY);
    }
  }
  t.same(statuses.slice(0, 10), Array(10).fill(401), 'the first 10 are 401');
  t.equal(statuses.filter((s) => s === 429).length, 590, 'the other 590 are 429');
  const right = (address: string) =>
    P.app.inject({
      method: 'GET',
      url: '/admin/v1/keypairs',
      headers: { authorization: `Bearer ${P.adminToken}`, 'x-forwarded-for': address },
      remoteAddress: '127.0.0.1',
    });
  t.equal((await right(attacker)).statusCode, 429, 'the limited address is refused even with the right token');
  t.equal((await right('203.0.113.50')).statusCode, 200, 'the right token from another address works');

  await P.app.refusals.flush(true);
  await P.app.auditWriter.flush();
  const full = await P.db.query<{ request_uri: string; status_code: number }>(
    'SELECT request_uri, status_code FROM request_log WHERE client_address = $1 AND event IS NULL AND status_code IN (401, 429)',
    [attacker],
  );
  t.ok(full.rows.length >= 10, `${full.rows.length} refusals in full`);
  t.ok(full.rows.some((r) => r.request_uri === '/admin/v1/runtime'), 'refusals on /admin/v1/runtime are audited too');
  t.ok(full.rows.some((r) => r.request_uri === '/key-management/v1/auth'), 'and on POST /auth');
  const aggregates = await P.db.query<{ detail: { addresses: { address: string; count: number }[] } }>(
    "SELECT detail FROM request_log WHERE event = 'auth.refusals'",
  );
  const countedHere = aggregates.rows.reduce((n, r) => n + (r.detail.addresses.find((a) => a.address === attacker)?.count ?? 0), 0);
  t.equal(full.rows.length + countedHere, 601, 'every refusal (600 + the right token refused) is in full or counted');
  t.equal((await verifyChain(P.db)).ok, true, 'the audit chain verifies');
});

/**
 * Raw HTTP/1.1 over a socket: what no HTTP client library lets us send. The socket is written,
 * not ended: Node aborts a request whose client half-closes before the answer (the server
 * closes it after answering, `Connection: close`).
 */
function rawRequest(origin: string, text: string): Promise<{ status: number; headers: Record<string, string>; body: string }> {
  const { hostname, port } = new URL(origin);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => socket.write(text));
    let data = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk) => (data += chunk));
    socket.on('error', reject);
    socket.on('close', () => {
      const [head = '', body = ''] = data.split('\r\n\r\n');
      const [statusLine = '', ...lines] = head.split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const i = line.indexOf(':');
        headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
      }
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body });
    });
  });
}

t.test('item 15: duplicate Authorization or Host is 400; parser errors get the contract body, the code and an audit entry', async (t) => {
  // Before: Node kept the first Authorization/Host and dropped the other (a proxy keeping the
  // other would disagree with us); a bad Content-Length got Fastify's own body
  // {"error":"Bad Request","message":"Client Error","statusCode":400}, no code header, no audit.
  const c = await P.register();
  const host = new URL(P.origin).host;
  const sign = () => hawkHeader({ method: 'GET', url: `${P.base}/keypair`, credential: c });
  const auth = sign();
  const cases = [
    ['two Authorization headers', `GET ${PREFIX}/keypair HTTP/1.1\r\nHost: ${host}\r\nAuthorization: ${auth}\r\nAuthorization: Hawk id="x"\r\nConnection: close\r\n\r\n`],
    ['two Host headers', `GET ${PREFIX}/keypair HTTP/1.1\r\nHost: ${host}\r\nHost: evil.example\r\nAuthorization: ${auth}\r\nConnection: close\r\n\r\n`],
  ] as const;
  for (const [name, text] of cases) {
    const res = await rawRequest(P.origin, text);
    t.equal(res.status, 400, name);
    t.equal(res.headers[ERROR_CODE_HEADER], 'REQ_ERR_AMBIGUOUS_REQUEST', `${name}: code`);
    t.same(JSON.parse(res.body), { message: 'Request has more than one Authorization or Host header', status: 400 }, `${name}: contract body`);
  }
  const single = await rawRequest(P.origin, `GET ${PREFIX}/keypair HTTP/1.1\r\nHost: ${host}\r\nAuthorization: ${sign()}\r\nConnection: close\r\n\r\n`);
  t.equal(single.status, 200, 'the same request with one of each is served');

  const badLength = await rawRequest(P.origin, `POST ${PREFIX}/decrypt HTTP/1.1\r\nHost: ${host}\r\nContent-Length: abc\r\n\r\n{}`);
  t.equal(badLength.status, 400, 'a bad Content-Length is refused by Node');
  t.equal(badLength.headers[ERROR_CODE_HEADER], 'REQ_ERR_BAD_REQUEST');
  t.same(JSON.parse(badLength.body), { message: 'Bad request', status: 400 }, 'with the contract body');
  const twoLengths = await rawRequest(P.origin, `POST ${PREFIX}/decrypt HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}`);
  t.equal(twoLengths.status, 400, 'two different Content-Lengths');
  t.equal(twoLengths.headers[ERROR_CODE_HEADER], 'REQ_ERR_BAD_REQUEST');

  const badUrl = await rawRequest(P.origin, `GET ${PREFIX}/keypair/%zz HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  t.equal(badUrl.status, 400, 'a path that does not decode (the router refuses it)');
  t.equal(badUrl.headers[ERROR_CODE_HEADER], 'REQ_ERR_BAD_REQUEST');

  const badJson = await P.app.inject({
    method: 'POST',
    url: `${PREFIX}/auth`,
    headers: { authorization: `Bearer ${P.adminToken}`, 'content-type': 'application/json', 'x-forwarded-for': '203.0.113.61' },
    payload: '{"id": ',
    remoteAddress: '127.0.0.1',
  });
  t.equal(badJson.statusCode, 400, 'bad JSON');
  t.equal(badJson.headers[ERROR_CODE_HEADER], 'REQ_ERR_MALFORMED_JSON');

  await sleep(100);
  await P.app.auditWriter.flush();
  const refused = await P.db.query<{ detail: { code: string; parserError?: string }; status_code: number }>(
    "SELECT detail, status_code FROM request_log WHERE event = 'request.refused' ORDER BY id",
  );
  t.same(
    refused.rows.map((r) => [r.status_code, r.detail.code, r.detail.parserError ?? null]),
    [
      [400, 'REQ_ERR_BAD_REQUEST', 'HPE_INVALID_CONTENT_LENGTH'],
      [400, 'REQ_ERR_BAD_REQUEST', 'HPE_UNEXPECTED_CONTENT_LENGTH'],
      [400, 'REQ_ERR_BAD_REQUEST', null],
    ],
    'each parser and router refusal is an audit entry',
  );
  t.equal(await count(P, `SELECT count(*) AS n FROM request_log WHERE event IS NULL AND status_code = 400 AND request_uri = $1 AND hawk_id IS NULL`, [`${PREFIX}/keypair`]), 3, 'the ambiguous requests are request-logged (and the bad X-Forwarded-For one)');
  t.equal(await count(P, `SELECT count(*) AS n FROM request_log WHERE client_address = '203.0.113.61' AND status_code = 400`), 1, 'the bad JSON is request-logged');
});

t.test('item 16: a relayed request gaining ?decryptType=pkcs1 is refused for a credential that signed a query', async (t) => {
  // Before: the path-only MAC was accepted from every credential, always: a relay (or anyone who
  // saw a request) could append ?decryptType=pkcs1 to a request signed over /decrypt alone.
  const owner = await P.register();
  const res = await injectRequest(P.app, signed(owner, 'POST', `${PREFIX}/keypair`, { nowMs: clock() }));
  t.equal(res.statusCode, 200, 'a keypair to decrypt with');
  const kp = res.json() as { id: string; publicKey: string };
  const publicKey = { key: Buffer.from(kp.publicKey, 'base64'), format: 'der' as const, type: 'pkcs1' as const };
  const relayed = (c: ClientCredential) => {
    const message = randomBytes(32);
    const json = { keypairId: kp.id, body: publicEncrypt({ ...publicKey, padding: constants.RSA_PKCS1_PADDING }, message).toString('base64') };
    const r = signed(c, 'POST', `${PREFIX}/decrypt`, { nowMs: clock(), json });
    return { request: { ...r, url: `${PREFIX}/decrypt?decryptType=pkcs1` }, message };
  };
  const runtime = async (h: Harness) =>
    (await h.app.inject({ method: 'GET', url: '/admin/v1/runtime', headers: { authorization: `Bearer ${h.adminToken}` } })).json() as {
      hawk: { pathOnlyMac: Record<string, number> };
    };

  // A credential that never signed a query: accepted (the reference service's MAC), and counted.
  const legacy = await P.register();
  const a = relayed(legacy);
  const accepted = await injectRequest(P.app, a.request);
  t.equal(accepted.statusCode, 200, 'accepted for a credential that never signed a query');
  t.same(accepted.json(), { body: a.message.toString('base64') });
  t.equal((await runtime(P)).hawk.pathOnlyMac[legacy.id], 1, 'counted per credential in GET /admin/v1/runtime');

  // A credential that signs its queries (standard Hawk clients): once seen, path-only is refused.
  const signer = await P.register();
  const withQuery = await injectRequest(P.app, signed(signer, 'GET', `${PREFIX}/request-log?maxEntries=1`, { nowMs: clock() }));
  t.equal(withQuery.statusCode, 200, 'a request with its query signed');
  const b = relayed(signer);
  const refused = await injectRequest(P.app, b.request);
  t.equal(refused.statusCode, 401, 'the relayed request is refused');
  t.equal(refused.headers[ERROR_CODE_HEADER], 'HAWK_ERR_UNAUTHORIZED');
  t.equal((await runtime(P)).hawk.pathOnlyMac[signer.id], undefined, 'and not counted as path-only use');
  for (let i = 0; i < 50 && (await count(P, 'SELECT count(*) AS n FROM hawk_credential WHERE id = $1 AND signs_query', [signer.id])) === 0; i++) await sleep(20);
  t.equal(await count(P, 'SELECT count(*) AS n FROM hawk_credential WHERE id = $1 AND signs_query', [signer.id]), 1, 'recorded durably');
  // Another instance (or this one after a restart) knows it from the database.
  const second = await startHarness(t, { token, clock, databaseUrl: P.databaseUrl, listen: false, env: { ...DEFAULTS } });
  t.equal((await injectRequest(second.app, relayed(signer).request)).statusCode, 401, 'refused by a second instance too');
  t.equal((await injectRequest(second.app, relayed(legacy).request)).statusCode, 200, 'while the other credential still works there');

  // HAWK_ACCEPT_PATH_ONLY_MAC=false: refused for everyone.
  const strict = await startHarness(t, { token, clock, databaseUrl: P.databaseUrl, listen: false, env: { ...DEFAULTS, HAWK_ACCEPT_PATH_ONLY_MAC: 'false' } });
  t.equal((await injectRequest(strict.app, relayed(legacy).request)).statusCode, 401, 'HAWK_ACCEPT_PATH_ONLY_MAC=false: refused');
  const full = signed(legacy, 'GET', `${PREFIX}/request-log?maxEntries=1`, { nowMs: clock() });
  t.equal((await injectRequest(strict.app, full)).statusCode, 200, 'a MAC over path and query still works there');
});

t.test('item 7: GET /request-log ids are UUID strings derived from the row', async (t) => {
  // Before: `id` was the bigserial (an integer); the reference service's example shows a UUID.
  t.equal(requestLogUuid(42), 'd3a0e102-f0db-5f0e-b85d-22a12f852167', "UUIDv5 as Python's uuid.uuid5(ns, '42') computes it");
  const c = await P.register();
  const list = await injectRequest(P.app, signed(c, 'GET', `${PREFIX}/request-log?maxEntries=5`, { nowMs: clock() }));
  t.equal(list.statusCode, 200);
  const entries = list.json() as { id: string }[];
  t.equal(entries.length, 5);
  // OFFSET 1: the listing request's own entry is written after its answer was computed.
  const rows = await P.db.query<{ id: string }>('SELECT id FROM request_log WHERE event IS NULL ORDER BY logged_at DESC, id DESC LIMIT 5 OFFSET 1');
  t.same(entries.map((e) => e.id), rows.rows.map((r) => requestLogUuid(Number(r.id))), 'each is the UUID of its row');
  const again = await injectRequest(P.app, signed(c, 'GET', `${PREFIX}/request-log?maxEntries=10`, { nowMs: clock() }));
  const ids = new Map((again.json() as { id: string; requestUri: string }[]).map((e) => [e.id, e]));
  t.ok(entries.every((e) => ids.has(e.id)), 'stable across calls');
});

t.test('item 8: 200 concurrent /ready share one round of checks', async (t) => {
  // Before: each call sealed and opened a canary in the token: 200 calls, 400 token operations.
  const ks = P.app.keyStore;
  const seal = ks.sealSecret.bind(ks);
  let canaries = 0;
  ks.sealSecret = (...args: Parameters<typeof seal>) => {
    canaries++;
    return seal(...args);
  };
  t.teardown(() => {
    ks.sealSecret = seal;
  });
  await sleep(1100);
  const answers = await Promise.all(Array.from({ length: 200 }, () => P.app.inject({ method: 'GET', url: `${PREFIX}/ready` })));
  t.ok(answers.every((a) => a.statusCode === 200), 'all ready');
  t.equal(canaries, 1, `${canaries} canary round trip for 200 calls`);
  const more = await Promise.all(Array.from({ length: 50 }, () => P.app.inject({ method: 'GET', url: `${PREFIX}/ready` })));
  t.ok(more.every((a) => a.statusCode === 200));
  t.equal(canaries, 1, 'calls within the second reuse the answer');
  await sleep(1100);
  await P.app.inject({ method: 'GET', url: `${PREFIX}/ready` });
  t.equal(canaries, 2, 'after a second the checks run again');
});
