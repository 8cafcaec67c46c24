// Rate limiting of Hawk failures: the limiter against a naive model (fast-check), then the real
// app on a real SoftHSM token and a real Postgres, with an injected clock instead of sleeping.
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import t from 'tap';
import { claimedHawkId, HawkFailureLimiter } from '../plugins/hawk-failure-limit.js';
import { ERROR_CODE_HEADER } from '../src/errors.js';
import { PREFIX, startHarness } from './helpers/harness.js';
import { injectRequest, signed } from './helpers/inject-hawk.js';
import { createTestToken } from './helpers/token.js';

const LIMITED_BODY = { message: 'Too many failed authentication attempts; retry later', status: 429 };
const UNAUTHORIZED_BODY = { message: 'Hawk authentication failed', status: 401 };

t.test('claimedHawkId reads the id a Hawk header names, and nothing from other schemes', async (t) => {
  t.equal(claimedHawkId('Hawk id="genesys", ts="1", nonce="n", mac="m"'), 'genesys');
  t.equal(claimedHawkId('hawk   ts="1", id="other", mac="m"'), 'other');
  t.equal(claimedHawkId('Hawk ts="1", xid="not-this", mac="m"'), undefined, 'an attribute that merely ends in id');
  t.equal(claimedHawkId('Bearer id="x"'), undefined);
  t.equal(claimedHawkId('Hawk id=""'), undefined);
  t.equal(claimedHawkId(undefined), undefined);
  t.equal(claimedHawkId(`Hawk id="${'a'.repeat(1000)}"`)?.length, 256, 'long ids are truncated for bookkeeping');
});

t.test('an address is refused after `limit` failures until the oldest leaves the window', async (t) => {
  let now = 1_000_000;
  const limiter = new HawkFailureLimiter({ limit: 3, windowSec: 60, clock: () => now });
  for (let i = 0; i < 3; i++) {
    t.equal(limiter.check('10.0.0.1'), undefined, `attempt ${i + 1} is allowed`);
    limiter.failure('10.0.0.1', undefined);
    now += 10_000;
  }
  // Failures at 0 s, 10 s, 20 s; now = 30 s: limited until 60 s.
  t.same(limiter.check('10.0.0.1'), { scope: 'address', retryAfterSec: 30 });
  t.equal(limiter.check('10.0.0.2'), undefined, 'another address is unaffected');
  now += 29_999;
  t.same(limiter.check('10.0.0.1'), { scope: 'address', retryAfterSec: 1 });
  now += 1;
  t.equal(limiter.check('10.0.0.1'), undefined, 'the first failure left the window');
  limiter.failure('10.0.0.1', undefined);
  t.same(limiter.check('10.0.0.1'), { scope: 'address', retryAfterSec: 10 }, 'sliding: limited again until 70 s');
});

t.test('an id over its budget is only flagged: no address is refused for naming it', async (t) => {
  let now = 0;
  const limiter = new HawkFailureLimiter({ limit: 100, windowSec: 60, idLimit: 4, clock: () => now });
  for (let i = 0; i < 4; i++) limiter.failure(`198.51.100.${i + 1}`, 'genesys');
  t.equal(limiter.idRetryAfterSec('genesys'), 60, 'the id is over its budget for the window');
  t.equal(limiter.check('198.51.100.99'), undefined, 'a new address naming it is not refused before its MAC is checked');
  t.equal(limiter.idRetryAfterSec('other-id'), 0, 'other ids are unaffected');
  t.equal(limiter.idRetryAfterSec(undefined), 0);
  now += 60_000;
  t.equal(limiter.idRetryAfterSec('genesys'), 0, 'after the window the id is free again');
});

t.test('memory stays bounded: the least recently failing address is evicted first', async (t) => {
  const now = 0;
  const limiter = new HawkFailureLimiter({ limit: 2, windowSec: 60, maxTracked: 100, clock: () => now });
  limiter.failure('keep', 'id-keep');
  limiter.failure('keep', 'id-keep');
  for (let i = 0; i < 10_000; i++) {
    limiter.failure(`203.0.113.${i}`, `id-${i}`);
    if (i % 50 === 0) limiter.failure('keep', 'id-keep'); // keeps failing: recently used, never evicted
  }
  t.ok(limiter.tracked.addresses <= 100, `addresses tracked: ${limiter.tracked.addresses}`);
  t.ok(limiter.tracked.ids <= 100, `ids tracked: ${limiter.tracked.ids}`);
  t.equal(limiter.check('keep')?.scope, 'address', 'an address that keeps failing stays limited');
});

t.test('property: the limiter agrees with a naive full-history model', async (t) => {
  type Op = { kind: 'advance'; ms: number } | { kind: 'attempt'; address: string; id: string | undefined; ok: boolean };
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.record({ kind: fc.constant('advance' as const), ms: fc.integer({ min: 0, max: 4000 }) }),
    fc.record({
      kind: fc.constant('attempt' as const),
      address: fc.constantFrom('a', 'b', 'c'),
      id: fc.option(fc.constantFrom('x', 'y'), { nil: undefined }),
      ok: fc.boolean(),
    }),
  );
  let checked = 0;
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 4 }),
      fc.integer({ min: 1, max: 6 }),
      fc.integer({ min: 1, max: 5 }),
      fc.array(op, { minLength: 20, maxLength: 80 }),
      (limit, idLimit, windowSec, ops) => {
        let now = 5_000_000;
        const w = windowSec * 1000;
        const limiter = new HawkFailureLimiter({ limit, idLimit, windowSec, clock: () => now });
        const byAddress = new Map<string, number[]>();
        const byId = new Map<string, number[]>();
        const retry = (times: number[] | undefined, max: number): number => {
          const recent = (times ?? []).filter((x) => x > now - w);
          if (recent.length < max) return 0;
          return Math.max(1, Math.ceil((recent[recent.length - max]! + w - now) / 1000));
        };
        for (const o of ops) {
          if (o.kind === 'advance') {
            now += o.ms;
            continue;
          }
          const a = retry(byAddress.get(o.address), limit);
          const i = o.id !== undefined ? retry(byId.get(o.id), idLimit) : 0;
          const expected = a > 0 ? { scope: 'address', retryAfterSec: a } : undefined;
          const actual = limiter.check(o.address);
          const actualId = limiter.idRetryAfterSec(o.id);
          checked++;
          if (JSON.stringify(actual) !== JSON.stringify(expected) || actualId !== i) {
            throw new Error(`at ${now}: ${o.address}/${o.id}: expected ${JSON.stringify(expected)}/${i}, got ${JSON.stringify(actual)}/${actualId}`);
          }
          if (expected || o.ok) continue; // refused before any MAC, or served: neither counts
          limiter.failure(o.address, o.id);
          byAddress.set(o.address, [...(byAddress.get(o.address) ?? []), now]);
          if (o.id !== undefined) byId.set(o.id, [...(byId.get(o.id) ?? []), now]);
        }
      },
    ),
    { numRuns: 500 },
  );
  t.ok(checked > 3000, `${checked} decisions compared with the model`);
});

// ---------------------------------------------------------------------------------------------
// The real app: limit 5 per address (25 per id), window 60 s, a clock the test moves.
// ---------------------------------------------------------------------------------------------

const token = createTestToken();
let offset = 0;
const clock = () => Date.now() + offset;
const h = await startHarness(t, { token, clock, env: { HAWK_FAILURE_LIMIT: '5', HAWK_FAILURE_WINDOW_SEC: '60' } });
const proxied = await startHarness(t, {
  token,
  clock,
  env: { HAWK_FAILURE_LIMIT: '5', HAWK_FAILURE_WINDOW_SEC: '60', TRUST_PROXY: 'true', PKCS11_SESSIONS: '1' },
});
const credential = await h.register();
const proxiedCredential = await proxied.register();

const nonces = async () => Number((await h.db.query<{ n: string }>('SELECT count(*) AS n FROM hawk_nonce')).rows[0]!.n);
const good = (path = '/keypair') => signed(credential, 'GET', `${PREFIX}${path}`, { nowMs: clock() });
const badMac = (id = credential.id) =>
  signed({ ...credential, id, key: randomBytes(32).toString('base64') }, 'GET', `${PREFIX}/keypair`, { nowMs: clock() });

t.test('after 5 failures an address gets 429 with Retry-After, even for a correct request', async (t) => {
  const attacker = '10.1.0.1';
  for (let i = 0; i < 5; i++) {
    const res = await injectRequest(h.app, badMac(), attacker);
    t.equal(res.statusCode, 401, `failure ${i + 1} is an ordinary 401`);
    t.same(res.json(), UNAUTHORIZED_BODY);
  }
  const limited = await injectRequest(h.app, badMac(), attacker);
  t.equal(limited.statusCode, 429);
  t.same(limited.json(), LIMITED_BODY);
  t.equal(limited.headers[ERROR_CODE_HEADER], 'HAWK_ERR_TOO_MANY_FAILURES');
  t.equal(limited.headers['content-type'], 'application/json; charset=utf-8');
  t.match(String(limited.headers['retry-after']), /^(?:[1-9]|[1-5]\d|60)$/, 'Retry-After in seconds, within the window');

  // A correct request from the limited address is refused before the nonce store is touched.
  const before = await nonces();
  const correct = await injectRequest(h.app, good(), attacker);
  t.equal(correct.statusCode, 429, 'still limited until the window passes');
  t.equal(correct.headers[ERROR_CODE_HEADER], 'HAWK_ERR_TOO_MANY_FAILURES');
  t.equal(await nonces(), before, 'no nonce claimed: refused before any database work');

  const other = await injectRequest(h.app, good(), '10.1.0.2');
  t.equal(other.statusCode, 200, 'a correct request from another address is served');
  const otherBad = await injectRequest(h.app, badMac(), '10.1.0.3');
  t.equal(otherBad.statusCode, 401, 'a failure from another address is an ordinary 401');

  const logged = await h.db.query<{ status_code: number; client_address: string }>(
    `SELECT status_code, client_address FROM request_log WHERE client_address = $1 ORDER BY id`,
    [attacker],
  );
  t.same(
    logged.rows.map((r) => r.status_code),
    [401, 401, 401, 401, 401, 429, 429],
    'every attempt, refused or limited, is in the request log',
  );

  offset += 61_000;
  const later = await injectRequest(h.app, good(), attacker);
  t.equal(later.statusCode, 200, 'after the window the address is served again');
});

t.test('429s do not count as failures: a limited address is free once its failures age out', async (t) => {
  const attacker = '10.2.0.1';
  for (let i = 0; i < 5; i++) t.equal((await injectRequest(h.app, badMac(), attacker)).statusCode, 401);
  offset += 30_000;
  for (let i = 0; i < 20; i++) t.equal((await injectRequest(h.app, badMac(), attacker)).statusCode, 429);
  offset += 30_001;
  t.equal((await injectRequest(h.app, good(), attacker)).statusCode, 200);
});

t.test("failures naming the real caller's id from strangers cannot lock the real caller out", async (t) => {
  // 25 strangers (the id limit is 5 × 5) fail in its name, 1 each: no address is limited, the id is.
  for (let i = 0; i < 25; i++) t.equal((await injectRequest(h.app, badMac(), `198.51.100.${i + 1}`)).statusCode, 401);
  const guess = await injectRequest(h.app, badMac(), '198.51.100.200');
  t.equal(guess.statusCode, 429, 'a wrong MAC naming the id is now answered 429');
  t.equal(guess.headers[ERROR_CODE_HEADER], 'HAWK_ERR_TOO_MANY_FAILURES');
  const stranger = await injectRequest(h.app, good(), '198.51.100.201');
  t.equal(stranger.statusCode, 200, 'a correct MAC from a never-seen address is served: the id limit never refuses it');
  const otherId = await injectRequest(h.app, badMac('someone-else'), '198.51.100.202');
  t.equal(otherId.statusCode, 401, 'other ids are unaffected');
  offset += 61_000;
  t.equal((await injectRequest(h.app, badMac(), '198.51.100.203')).statusCode, 401, 'the id is free after the window');
});

t.test('with TRUST_PROXY the limit applies to the forwarded client address', async (t) => {
  const bad = () =>
    signed({ ...proxiedCredential, key: randomBytes(32).toString('base64') }, 'GET', `${PREFIX}/keypair`, { nowMs: clock() });
  const from = (r: ReturnType<typeof bad>, client: string) => ({ ...r, headers: { ...r.headers, 'x-forwarded-for': client } });
  for (let i = 0; i < 5; i++) t.equal((await injectRequest(proxied.app, from(bad(), '203.0.113.7'), '127.0.0.1')).statusCode, 401);
  t.equal((await injectRequest(proxied.app, from(bad(), '203.0.113.7'), '127.0.0.1')).statusCode, 429, 'the forwarded client is limited');
  const ok = signed(proxiedCredential, 'GET', `${PREFIX}/keypair`, { nowMs: clock() });
  t.equal((await injectRequest(proxied.app, from(ok, '203.0.113.8'), '127.0.0.1')).statusCode, 200, 'another client behind the same proxy is served');
});
