// Server-side operator sessions (src/auth/sessions.ts) on the real Postgres and on PGlite: hashed
// ids, a new id at every login and on rotation, idle and absolute expiry on an injected clock,
// endAllFor, and the CSRF token bound to the session, all seen alike by a second instance.
import { createHash, randomBytes } from 'node:crypto';
import t from 'tap';
import { csrfTokenMatches, OperatorSessions, PgSessionStorage, readCookie, sessionCookie } from '../src/auth/sessions.js';
import { toBuffer } from '../src/db/database.js';
import { eachBackend, ManualClock } from './helpers/auth-backends.js';

t.setTimeout(120_000);

const SEC = 1000;

await eachBackend(t, async (t, b) => {
  const clock = new ManualClock();
  const make = (db = b.db) =>
    new OperatorSessions({ storage: new PgSessionStorage(db), clock: clock.read, idleTimeoutSec: 60, maxAgeSec: 300 });
  const a = make();
  const other = make(b.second);

  await t.test('create: a 256-bit id for the cookie, only its SHA-256 stored, verified at another instance', async (t) => {
    const s = await a.create('alice');
    t.match(s.id, /^[A-Za-z0-9_-]{43}$/);
    t.equal(Buffer.from(s.id, 'base64url').length, 32);
    t.equal(s.operator, 'alice');
    t.same(s.createdAt, new Date(clock.now));
    t.same(s.idleExpiresAt, new Date(clock.now + 60 * SEC));
    t.same(s.expiresAt, new Date(clock.now + 300 * SEC));
    const { rows } = await b.db.query<{ id_hash: unknown; csrf_secret: unknown }>(
      'SELECT id_hash, csrf_secret FROM auth_session WHERE operator = $1',
      ['alice'],
    );
    t.equal(rows.length, 1);
    t.same(toBuffer(rows[0]?.id_hash), createHash('sha256').update(s.id).digest(), 'the key is the SHA-256 of the id');
    const v = await other.verify(s.id);
    t.equal(v.ok, true);
    if (v.ok) {
      t.equal(v.session.operator, 'alice');
      t.equal(v.session.csrfToken, s.csrfToken, 'the CSRF token is stable for the life of the id');
    }
    await a.end(s.id);
  });

  await t.test('every login gets a new id; rotate moves a session to a new id and the old one dies', async (t) => {
    const first = await a.create('rot');
    const second = await a.create('rot');
    t.not(first.id, second.id, 'two logins, two ids');
    t.not(first.csrfToken, second.csrfToken);
    clock.advance(10 * SEC);
    const rotation = await a.rotate(first.id);
    if (!rotation.ok) throw new Error(`rotate refused: ${rotation.reason}`);
    const rotated = rotation.session;
    t.not(rotated.id, first.id);
    t.not(rotated.csrfToken, first.csrfToken, 'a new CSRF token with the new id');
    t.equal(rotated.operator, 'rot');
    t.same(rotated.createdAt, first.createdAt, 'the session keeps its start');
    t.same(rotated.expiresAt, first.expiresAt, 'and its absolute end');
    t.same(await other.verify(first.id), { ok: false, reason: 'unknown' }, 'the old id is dead at the other instance');
    t.equal((await other.verify(rotated.id)).ok, true);
    t.equal((await other.verify(second.id)).ok, true, 'the other login is untouched');
    t.same(await a.rotate(first.id), { ok: false, reason: 'unknown' }, 'a dead id cannot be rotated');
    t.equal(await a.endAllFor('rot'), 2);
  });

  await t.test('idle timeout: each use slides it, a pause longer than it ends the session everywhere', async (t) => {
    const s = await a.create('idler');
    for (let i = 0; i < 3; i++) {
      clock.advance(59 * SEC);
      const v = await (i % 2 === 0 ? other : a).verify(s.id);
      t.equal(v.ok, true, `used after 59 s (${i + 1})`);
      if (v.ok) t.same(v.session.idleExpiresAt, new Date(clock.now + 60 * SEC), 'the idle end slid');
    }
    clock.advance(60 * SEC);
    t.same(await a.verify(s.id), { ok: false, reason: 'idle' }, 'idle for exactly the timeout: ended');
    t.same(await other.verify(s.id), { ok: false, reason: 'idle' }, 'at the other instance too');
    clock.advance(1 * SEC);
    t.same(await a.verify(s.id), { ok: false, reason: 'idle' }, 'a refused verify did not slide it');
    t.same(await a.rotate(s.id), { ok: false, reason: 'idle' }, 'an idle session cannot be rotated back to life');
  });

  await t.test('absolute lifetime: constant use cannot keep a session past maxAgeSec', async (t) => {
    const s = await a.create('busy');
    let last = s.idleExpiresAt;
    while (clock.now + 50 * SEC < s.expiresAt.getTime()) {
      clock.advance(50 * SEC);
      const v = await a.verify(s.id);
      if (!v.ok) throw new Error(`refused early: ${v.reason}`);
      t.ok(v.session.idleExpiresAt <= s.expiresAt, 'the idle end never passes the absolute end');
      last = v.session.idleExpiresAt;
    }
    t.same(last, s.expiresAt, 'near the end the idle end is capped at the absolute end');
    clock.now = s.expiresAt.getTime() - 1;
    t.equal((await other.verify(s.id)).ok, true, 'live 1 ms before the absolute end');
    clock.now = s.expiresAt.getTime();
    t.same(await a.verify(s.id), { ok: false, reason: 'expired' });
    t.same(await other.verify(s.id), { ok: false, reason: 'expired' });
  });

  await t.test('end and endAllFor end sessions at every instance', async (t) => {
    const one = await a.create('carol');
    const two = await other.create('carol');
    const dave = await a.create('dave');
    const three = await a.create('carol');
    t.equal(await a.end(one.id), true, 'logout');
    t.same(await other.verify(one.id), { ok: false, reason: 'unknown' });
    t.equal(await a.end(one.id), false, 'already ended');
    t.equal(await other.endAllFor('carol'), 2, 'the operator is disabled: both remaining sessions end');
    t.same(await a.verify(two.id), { ok: false, reason: 'unknown' });
    t.same(await a.verify(three.id), { ok: false, reason: 'unknown' });
    t.equal((await a.verify(dave.id)).ok, true, 'another operator keeps theirs');
    t.equal(await a.endAllFor('carol'), 0);
    t.equal(await a.end('garbage'), false);
    await a.end(dave.id);
  });

  await t.test('the CSRF token is bound to one session and checked in fixed time', async (t) => {
    const s = await a.create('erin');
    const u = await a.create('frank');
    const v = await other.verify(s.id);
    if (!v.ok) throw new Error('expected a live session');
    t.equal(csrfTokenMatches(v.session, s.csrfToken), true, 'its own token');
    t.match(s.csrfToken, /^[A-Za-z0-9_-]{43}$/);
    t.not(s.csrfToken, s.id, 'the token is not the session id');
    t.equal(csrfTokenMatches(v.session, u.csrfToken), false, "another session's token");
    const flipped = (s.csrfToken[0] === 'A' ? 'B' : 'A') + s.csrfToken.slice(1);
    t.equal(csrfTokenMatches(v.session, flipped), false, 'one character changed');
    t.equal(csrfTokenMatches(v.session, s.csrfToken.slice(1)), false, 'shorter');
    t.equal(csrfTokenMatches(v.session, `${s.csrfToken}A`), false, 'longer');
    t.equal(csrfTokenMatches(v.session, undefined), false, 'missing');
    t.equal(csrfTokenMatches(v.session, [s.csrfToken, s.csrfToken]), false, 'a repeated header');
    t.equal(csrfTokenMatches(v.session, ''), false);
    const rotation = await a.rotate(s.id);
    if (!rotation.ok) throw new Error('expected a rotation');
    const rotated = rotation.session;
    t.equal(csrfTokenMatches(rotated, s.csrfToken), false, 'the old token dies with the old id');
    t.equal(csrfTokenMatches(rotated, rotated.csrfToken), true);
  });

  await t.test('purgeExpired deletes sessions past either end, and only those', async (t) => {
    const sessions = new OperatorSessions({
      storage: new PgSessionStorage(b.db),
      realm: 'purge-test',
      clock: clock.read,
      idleTimeoutSec: 30,
      maxAgeSec: 60,
    });
    const idle = await sessions.create('p');
    const used = await sessions.create('p');
    clock.advance(29 * SEC);
    await sessions.verify(used.id);
    clock.advance(2 * SEC);
    t.equal(await sessions.purgeExpired(), 1, 'the idle one');
    t.same(await sessions.verify(idle.id), { ok: false, reason: 'unknown' });
    t.equal((await sessions.verify(used.id)).ok, true);
    t.same(await a.verify(used.id), { ok: false, reason: 'unknown' }, 'a session of one realm is unknown in another');
    clock.advance(30 * SEC);
    t.equal(await sessions.purgeExpired(), 1, 'the one past its absolute end');
  });

  await t.test('bad ids and options are refused', async (t) => {
    t.same(await a.verify(''), { ok: false, reason: 'unknown' });
    t.same(await a.verify(randomBytes(32).toString('base64url')), { ok: false, reason: 'unknown' });
    t.same(await a.verify('x'.repeat(44)), { ok: false, reason: 'unknown' });
    await t.rejects(a.create(''), TypeError);
    await t.rejects(a.create('x'.repeat(257)), TypeError);
    const storage = new PgSessionStorage(b.db);
    t.throws(() => new OperatorSessions({ storage, idleTimeoutSec: 29 }), /idleTimeoutSec/);
    t.throws(() => new OperatorSessions({ storage, idleTimeoutSec: 600, maxAgeSec: 599 }), /maxAgeSec/);
    const defaults = new OperatorSessions({ storage, clock: clock.read });
    const s = await defaults.create('defaults');
    t.equal(s.idleExpiresAt.getTime() - clock.now, 900 * SEC, 'idle 15 min by default');
    t.equal(s.expiresAt.getTime() - clock.now, 28_800 * SEC, 'absolute 8 h by default');
  });
});

t.test('session cookie: HttpOnly, SameSite=Strict, Secure over https, limited to its path', async (t) => {
  const id = randomBytes(32).toString('base64url');
  t.equal(
    sessionCookie('sr_session', id, { path: '/console', secure: true }),
    `sr_session=${id}; Path=/console; HttpOnly; SameSite=Strict; Secure`,
  );
  t.equal(sessionCookie('sr_session', id, { path: '/console', secure: false }), `sr_session=${id}; Path=/console; HttpOnly; SameSite=Strict`);
  t.equal(
    sessionCookie('sr_session', undefined, { path: '/console', secure: true }),
    'sr_session=; Path=/console; HttpOnly; SameSite=Strict; Secure; Max-Age=0',
    'clearing it',
  );
  t.throws(() => sessionCookie('sr_session', 'x; Domain=evil.example', { path: '/console', secure: true }), TypeError);
  t.throws(() => sessionCookie('bad name', id, { path: '/console', secure: true }), TypeError);
  t.throws(() => sessionCookie('sr_session', id, { path: '/console; Domain=evil', secure: true }), TypeError);
  t.equal(readCookie(`a=1; sr_session=${id}; b=2`, 'sr_session'), id);
  t.equal(readCookie(`sr_session=${id}; sr_session=other`, 'sr_session'), id, 'the first wins');
  t.equal(readCookie('xsr_session=1', 'sr_session'), undefined, 'a name must match exactly');
  t.equal(readCookie(undefined, 'sr_session'), undefined);
});
