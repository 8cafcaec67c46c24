// Opaque bearer tokens (src/auth/bearer-tokens.ts) on the real Postgres and on PGlite: stored as
// hashes only, expiry on an injected clock, revocation seen by a second instance, and the
// Fastify hook inside a face's scope.
import { createHash, randomBytes } from 'node:crypto';
import Fastify from 'fastify';
import t from 'tap';
import { bearerAuthPlugin, BearerTokens, PgBearerTokenStorage, type BearerFailure } from '../src/auth/bearer-tokens.js';
import { toBuffer } from '../src/db/database.js';
import { eachBackend, ManualClock } from './helpers/auth-backends.js';

t.setTimeout(120_000);

await eachBackend(t, async (t, b) => {
  const clock = new ManualClock();
  const make = (db = b.db, realm = 'signing') =>
    new BearerTokens({ storage: new PgBearerTokenStorage(db), realm, clock: clock.read, maxTtlSec: 3600 });
  const a = make();
  const other = make(b.second);

  await t.test('a token is 256 random bits in base64url, and only its SHA-256 is stored', async (t) => {
    const { token, principal } = await a.issue({ clientId: 'client-1', subject: 'jdoe@acme', scope: 'seat:jdoe tenant:acme', ttlSec: 600 });
    t.match(token, /^[A-Za-z0-9_-]{43}$/);
    t.equal(Buffer.from(token, 'base64url').length, 32);
    t.same(principal, {
      clientId: 'client-1',
      subject: 'jdoe@acme',
      scope: 'seat:jdoe tenant:acme',
      issuedAt: new Date(clock.now),
      expiresAt: new Date(clock.now + 600_000),
    });
    const { rows } = await b.db.query<Record<string, unknown>>(
      'SELECT * FROM auth_bearer_token WHERE client_id = $1',
      ['client-1'],
    );
    t.equal(rows.length, 1);
    t.same(toBuffer(rows[0]?.token_hash), createHash('sha256').update(token).digest(), 'the key is the SHA-256 of the token');
    const stored = JSON.stringify(rows, (_k, v: unknown) => (v instanceof Uint8Array ? Buffer.from(v).toString('base64url') : v));
    t.notMatch(stored, token, 'the token itself is in no column');
    const seen = await other.verify(token);
    t.same(seen, { ok: true, principal }, 'another instance verifies it');
    const again = await a.issue({ clientId: 'client-1', ttlSec: 600 });
    t.not(again.token, token, 'every token is new');
    t.equal(again.principal.subject, null);
    t.equal(again.principal.scope, '');
  });

  await t.test('a token expires on the injected clock, at every instance, and stays expired', async (t) => {
    const { token, principal } = await a.issue({ clientId: 'client-exp', ttlSec: 60 });
    clock.advance(59_999);
    t.equal((await a.verify(token)).ok, true, 'live 1 ms before its expiry');
    clock.advance(1);
    t.same(await a.verify(token), { ok: false, reason: 'expired' }, 'expired at expiresAt');
    t.same(await other.verify(token), { ok: false, reason: 'expired' }, 'expired at the second instance');
    t.equal(principal.expiresAt.getTime(), clock.now);
    clock.advance(3_600_000);
    t.same(await a.verify(token), { ok: false, reason: 'expired' });
  });

  await t.test('a revoked token is refused at once by a second instance, and never works again', async (t) => {
    const { token } = await a.issue({ clientId: 'client-rev', ttlSec: 600 });
    t.equal((await other.verify(token)).ok, true, 'the second instance accepts it first');
    t.equal(await a.revoke(token), true, 'revoked at the first instance');
    t.same(await other.verify(token), { ok: false, reason: 'revoked' }, 'refused by the second at its next request');
    t.same(await a.verify(token), { ok: false, reason: 'revoked' });
    t.equal(await other.revoke(token), false, 'revoking twice changes nothing');
    clock.advance(601_000);
    t.same(await a.verify(token), { ok: false, reason: 'revoked' }, 'revoked outranks expired');
  });

  await t.test('unknown, malformed and other-realm tokens are unknown', async (t) => {
    const { token } = await a.issue({ clientId: 'client-x', ttlSec: 600 });
    t.same(await a.verify(randomBytes(32).toString('base64url')), { ok: false, reason: 'unknown' }, 'never issued');
    for (const bad of ['', 'abc', `${token}x`, `${token.slice(0, 42)}=`, `${token.slice(0, 42)}+`, ` ${token.slice(1)}`]) {
      t.same(await a.verify(bad), { ok: false, reason: 'unknown' }, `malformed ${JSON.stringify(bad)}`);
    }
    const otherRealm = make(b.db, 'console');
    t.same(await otherRealm.verify(token), { ok: false, reason: 'unknown' }, 'a token of one realm is unknown in another');
    t.equal(await otherRealm.revoke(token), false, 'and another realm cannot revoke it');
    t.equal((await a.verify(token)).ok, true);
    t.equal(await a.revoke('not-a-token'), false);
  });

  await t.test('revokeAllForClient revokes that client only', async (t) => {
    const one = await a.issue({ clientId: 'c-all-1', ttlSec: 600 });
    const two = await a.issue({ clientId: 'c-all-1', ttlSec: 600 });
    const keep = await a.issue({ clientId: 'c-all-2', ttlSec: 600 });
    t.equal(await a.revokeAllForClient('c-all-1'), 2);
    t.same(await other.verify(one.token), { ok: false, reason: 'revoked' });
    t.same(await other.verify(two.token), { ok: false, reason: 'revoked' });
    t.equal((await other.verify(keep.token)).ok, true);
    t.equal(await a.revokeAllForClient('c-all-1'), 0, 'nothing left to revoke');
  });

  await t.test('purgeExpired deletes expired rows only; a purged token is unknown, still refused', async (t) => {
    const realm = make(b.db, 'purge-test');
    const old = await realm.issue({ clientId: 'p', ttlSec: 10 });
    const revoked = await realm.issue({ clientId: 'p', ttlSec: 600 });
    await realm.revoke(revoked.token);
    const live = await realm.issue({ clientId: 'p', ttlSec: 600 });
    clock.advance(20_000);
    t.equal(await realm.purgeExpired(60), 0, 'within the grace period nothing goes');
    t.equal(await realm.purgeExpired(), 1);
    t.same(await realm.verify(old.token), { ok: false, reason: 'unknown' });
    t.same(await realm.verify(revoked.token), { ok: false, reason: 'revoked' }, 'a revoked token is kept until it expires');
    t.equal((await realm.verify(live.token)).ok, true);
  });

  await t.test('issue refuses malformed requests', async (t) => {
    const bad = [
      { clientId: '', ttlSec: 60 },
      { clientId: 'x'.repeat(257), ttlSec: 60 },
      { clientId: 'c', subject: '', ttlSec: 60 },
      { clientId: 'c', ttlSec: 0 },
      { clientId: 'c', ttlSec: 3601 },
      { clientId: 'c', ttlSec: 1.5 },
      { clientId: 'c', scope: 'a  b', ttlSec: 60 },
      { clientId: 'c', scope: 'a "b"', ttlSec: 60 },
      { clientId: 'c', scope: 'a\\b', ttlSec: 60 },
      { clientId: 'c', scope: ' a', ttlSec: 60 },
    ];
    for (const request of bad) await t.rejects(a.issue(request), TypeError, JSON.stringify(request));
    t.throws(() => new BearerTokens({ storage: new PgBearerTokenStorage(b.db), realm: 'Bad Realm' }));
  });

  await t.test('bearer-auth guards the routes of the scope it is registered in, and no other', async (t) => {
    const app = Fastify();
    t.teardown(() => app.close());
    const reasons: BearerFailure[] = [];
    app.get('/public', async (request) => ({ bearer: request.bearer ?? null }));
    await app.register(async (face) => {
      await face.register(bearerAuthPlugin, {
        tokens: a,
        failure: (reason) => {
          reasons.push(reason);
          return Object.assign(new Error('invalid_token'), { statusCode: 401 });
        },
      });
      face.get('/who', async (request) => ({ clientId: request.bearer?.clientId, scope: request.bearer?.scope }));
    }, { prefix: '/face' });

    const { token } = await a.issue({ clientId: 'web', scope: 'service', ttlSec: 600 });
    const who = (authorization?: string) =>
      app.inject({ method: 'GET', url: '/face/who', headers: authorization === undefined ? {} : { authorization } });

    const ok = await who(`Bearer ${token}`);
    t.equal(ok.statusCode, 200);
    t.same(ok.json(), { clientId: 'web', scope: 'service' });
    t.equal((await who(`bearer ${token}`)).statusCode, 200, 'the scheme is case-insensitive (RFC 6750 §2.1)');
    t.equal((await who()).statusCode, 401);
    t.equal((await who(`Basic ${token}`)).statusCode, 401);
    t.equal((await who(`Bearer ${token} extra`)).statusCode, 401);
    t.equal((await who(`Bearer ${randomBytes(32).toString('base64url')}`)).statusCode, 401);
    await a.revoke(token);
    t.equal((await who(`Bearer ${token}`)).statusCode, 401);
    t.same(reasons, ['missing', 'missing', 'missing', 'unknown', 'revoked']);
    const pub = await app.inject({ method: 'GET', url: '/public' });
    t.equal(pub.statusCode, 200, 'a route outside the scope is not guarded');
    t.same(pub.json(), { bearer: null });
  });
});
