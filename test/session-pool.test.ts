// Unit tests of the session pool's own logic (hsm/session-pool.ts). The sessions are plain
// objects from a fake factory: what is tested is the pool, not PKCS#11 (keystore.test.ts
// covers the pool on a real token).
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { HsmError } from '../hsm/index.js';
import { SessionPool } from '../hsm/session-pool.js';

interface FakeSession {
  id: number;
}

/** A factory that records every open and close, and can be told to fail. */
class FakeFactory {
  readonly events: string[] = [];
  readonly live = new Set<number>();
  #next = 1;
  #failWith: Error | undefined;
  #failuresLeft = 0;

  /** Make the next `times` opens throw `err` (the token is down). */
  failOpens(err: Error, times = Number.POSITIVE_INFINITY): void {
    this.#failWith = err;
    this.#failuresLeft = times;
  }

  recover(): void {
    this.#failuresLeft = 0;
  }

  open(): FakeSession {
    if (this.#failuresLeft > 0 && this.#failWith) {
      this.#failuresLeft -= 1;
      this.events.push('open-failed');
      throw this.#failWith;
    }
    const session = { id: this.#next++ };
    this.events.push(`open ${session.id}`);
    this.live.add(session.id);
    return session;
  }

  close(session: FakeSession): void {
    this.events.push(`close ${session.id}`);
    this.live.delete(session.id);
  }
}

/** A promise with its resolver, to hold a session for as long as a test needs. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

const HANG = Symbol('hang');
/** Settle `p` within `ms` or report HANG: a waiter that is never served must not stall the test. */
async function within<T>(p: Promise<T>, ms = 1000): Promise<{ value?: T; error?: unknown } | typeof HANG> {
  return Promise.race([
    p.then(
      (value) => ({ value }),
      (error: unknown) => ({ error }),
    ),
    sleep(ms).then((): typeof HANG => HANG),
  ]);
}

/** Let every pending callback and microtask run. */
const settle = () => sleep(5);

t.test('the size must be a positive integer', async (t) => {
  const f = new FakeFactory();
  t.throws(() => new SessionPool(f, 0), RangeError);
  t.throws(() => new SessionPool(f, 1.5), RangeError);
  t.throws(() => new SessionPool(f, -1), RangeError);
  t.same(f.events, [], 'nothing opened');
});

t.test('fill() opens every session up front', async (t) => {
  const f = new FakeFactory();
  const pool = new SessionPool(f, 3);
  t.equal(pool.openCount, 0, 'lazy until filled');
  pool.fill();
  t.equal(pool.openCount, 3, 'three open');
  t.same(f.events, ['open 1', 'open 2', 'open 3'], 'opened in one go');
  pool.fill();
  t.equal(f.events.length, 3, 'a second fill opens nothing more');
});

t.test('at most `size` sessions are in use at once', async (t) => {
  const f = new FakeFactory();
  const pool = new SessionPool(f, 3);
  let inUse = 0;
  let peak = 0;
  const holders = new Set<number>();
  let shared = 0;
  const results = await Promise.all(
    Array.from({ length: 30 }, (_, i) =>
      pool.use(async (s) => {
        if (holders.has(s.id)) shared += 1;
        holders.add(s.id);
        inUse += 1;
        peak = Math.max(peak, inUse);
        await sleep(1 + (i % 4));
        inUse -= 1;
        holders.delete(s.id);
        return i * 2;
      }),
    ),
  );
  t.same(results, Array.from({ length: 30 }, (_, i) => i * 2), 'every caller gets its own result');
  t.equal(peak, 3, 'three in use at the peak, never more');
  t.equal(shared, 0, 'a session is never used by two callers at once');
  t.equal(pool.openCount, 3, 'three open');
  t.same(f.events, ['open 1', 'open 2', 'open 3'], 'opened lazily, up to the size, and reused');
  t.equal(pool.replacedCount, 0, 'nothing replaced');
});

t.test('waiters are served in the order they arrived', async (t) => {
  const f = new FakeFactory();
  const pool = new SessionPool(f, 1);
  const gate = deferred();
  const first = pool.use(() => gate.promise);
  const order: number[] = [];
  const waiters = Array.from({ length: 6 }, (_, i) =>
    pool.use(async (s) => {
      order.push(i);
      await sleep(i % 2 ? 2 : 0);
      return s.id;
    }),
  );
  await settle();
  t.same(order, [], 'nobody runs while the only session is held');
  gate.resolve();
  await first;
  t.same(await Promise.all(waiters), [1, 1, 1, 1, 1, 1], 'all on the one session');
  t.same(order, [0, 1, 2, 3, 4, 5], 'first come, first served');
});

t.test('a throwing fn: the session is replaced (new one opened first) and the error propagates', async (t) => {
  const f = new FakeFactory();
  const pool = new SessionPool(f, 1);
  pool.fill();
  const boom = new Error('C_Decrypt failed');
  const err = await within(pool.use(() => {
    throw boom;
  }));
  t.not(err, HANG, 'the call settles');
  t.equal(err !== HANG && err.error, boom, 'the very error fn threw reaches the caller');
  // Closing a token's last session logs the application out: the replacement must exist first.
  t.same(f.events, ['open 1', 'open 2', 'close 1'], 'replacement opened BEFORE the broken session is closed');
  t.equal(pool.replacedCount, 1, 'replacedCount = 1');
  t.equal(pool.openCount, 1, 'the pool keeps its size');
  t.equal(await pool.use((s) => s.id), 2, 'the next caller gets the replacement, never the broken session');

  const rejected = await within(pool.use(async () => {
    await sleep(1);
    throw new TypeError('async failure');
  }));
  t.ok(rejected !== HANG && rejected.error instanceof TypeError, 'an async rejection propagates too');
  t.same(f.events.slice(3), ['open 3', 'close 2'], 'and replaces the session the same way');
  t.equal(pool.replacedCount, 2, 'replacedCount = 2');
  t.same([...f.live], [3], 'only the replacement is still open');
});

t.test('a caller waiting while a session breaks gets the replacement', async (t) => {
  const f = new FakeFactory();
  const pool = new SessionPool(f, 1);
  const gate = deferred();
  const failing = pool.use(async () => {
    await gate.promise;
    throw new Error('broken');
  });
  const waiting = pool.use((s) => s.id);
  await settle();
  gate.resolve();
  await t.rejects(failing, { message: 'broken' }, 'the error reaches the failing caller');
  t.equal(await waiting, 2, 'the waiter ran on the replacement session');
  t.same(f.events, ['open 1', 'open 2', 'close 1'], 'replacement opened before the broken one closed');
});

// These cases are about which open serves whom; the backoff between opens has its own test.
const NO_BACKOFF = { backoffInitialMs: 0 };

t.test('a failing open during replacement shrinks the pool; the waiter is never left hanging', async (t) => {
  t.test('the waiter gets the open error when the token stays down', async (t) => {
    const f = new FakeFactory();
    const pool = new SessionPool(f, 1, NO_BACKOFF);
    const gate = deferred();
    const failing = pool.use(async () => {
      await gate.promise;
      throw new Error('device error');
    });
    const waiting = pool.use((s) => s.id);
    await settle();
    const down = new HsmError('HSM_ERR_UNAVAILABLE', 'cannot open a session');
    f.failOpens(down);
    gate.resolve();
    await t.rejects(failing, { message: 'device error' }, 'the fn error still reaches its caller');
    const outcome = await within(waiting);
    t.not(outcome, HANG, 'the waiter settles');
    t.equal(outcome !== HANG && outcome.error, down, 'with the open error');
    t.equal(pool.openCount, 0, 'the broken session is gone and nothing replaced it');
    t.same(f.events, ['open 1', 'open-failed', 'close 1', 'open-failed'], 'replacement tried first, then the waiter\'s own open');
    t.same([...f.live], [], 'the broken session was closed anyway');

    f.recover();
    t.equal(await pool.use((s) => s.id), 2, 'once the token is back, the pool opens a fresh session');
    t.equal(pool.openCount, 1, 'back to one session');
  });

  t.test('the waiter gets a fresh session when only the replacement open failed', async (t) => {
    const f = new FakeFactory();
    const pool = new SessionPool(f, 1, NO_BACKOFF);
    const gate = deferred();
    const failing = pool.use(async () => {
      await gate.promise;
      throw new Error('device error');
    });
    const waiting = pool.use((s) => s.id);
    await settle();
    // Fails exactly once: the replacement; the waiter's own attempt succeeds.
    f.failOpens(new Error('transient'), 1);
    gate.resolve();
    await t.rejects(failing, 'the fn error reaches its caller');
    const outcome = await within(waiting);
    t.not(outcome, HANG, 'the waiter settles');
    t.equal(outcome !== HANG && outcome.value, 2, 'on a freshly opened session');
    t.same(f.events, ['open 1', 'open-failed', 'close 1', 'open 2'], 'failed replacement, broken one closed, fresh one opened');
    t.equal(pool.openCount, 1, 'one session open');
  });

  t.test('every waiter settles, not only the first', async (t) => {
    const f = new FakeFactory();
    const pool = new SessionPool(f, 1, NO_BACKOFF);
    const gate = deferred();
    const failing = pool.use(async () => {
      await gate.promise;
      throw new Error('device error');
    });
    const waiters = [pool.use((s) => s.id), pool.use((s) => s.id), pool.use((s) => s.id)];
    await settle();
    const down = new Error('token removed');
    f.failOpens(down);
    gate.resolve();
    await t.rejects(failing, 'the fn error reaches its caller');
    const outcomes = await Promise.all(waiters.map((w) => within(w)));
    outcomes.forEach((outcome, i) => {
      t.not(outcome, HANG, `waiter ${i + 1} settles (no session exists to be released to it)`);
      t.equal(outcome !== HANG && outcome.error, down, `waiter ${i + 1} gets the open error`);
    });
    t.equal(pool.openCount, 0, 'no session open');
  });

  t.test('with other sessions still in use, waiters are served as they come back', async (t) => {
    const f = new FakeFactory();
    const pool = new SessionPool(f, 2, NO_BACKOFF);
    const gateA = deferred();
    const gateB = deferred();
    const a = pool.use(async () => {
      await gateA.promise;
      throw new Error('broken');
    });
    const b = pool.use(async (s) => {
      await gateB.promise;
      return s.id;
    });
    const waiters = [pool.use((s) => s.id), pool.use((s) => s.id)];
    await settle();
    const transient = new Error('transient');
    f.failOpens(transient);
    gateA.resolve();
    await t.rejects(a, 'the fn error reaches its caller');
    f.recover();
    gateB.resolve();
    t.equal(await b, 2, 'the healthy session finishes its work');
    const outcomes = await Promise.all(waiters.map((w) => within(w)));
    outcomes.forEach((outcome, i) => {
      t.not(outcome, HANG, `waiter ${i + 1} settles`);
      t.ok(
        outcome !== HANG && (typeof outcome.value === 'number' || outcome.error === transient),
        `waiter ${i + 1} gets a session or the open error`,
      );
    });
    t.ok(pool.openCount >= 1 && pool.openCount <= 2, 'never more than the size');
  });
  t.end();
});

t.test('close() rejects waiters and later calls with HSM_ERR_UNAVAILABLE', async (t) => {
  const f = new FakeFactory();
  const pool = new SessionPool(f, 2);
  pool.fill();
  const gate = deferred();
  const holders = [1, 2].map(() =>
    pool.use(async (s) => {
      await gate.promise;
      return s.id;
    }),
  );
  let ranAfterClose = 0;
  const waiters = [pool.use(() => ranAfterClose++), pool.use(() => ranAfterClose++)];
  await settle();
  pool.close();
  for (const [i, w] of waiters.entries()) {
    const outcome = await within(w);
    t.not(outcome, HANG, `waiter ${i + 1} settles`);
    const error = outcome !== HANG ? outcome.error : undefined;
    t.ok(error instanceof HsmError, `waiter ${i + 1}: an HsmError`);
    t.equal((error as HsmError | undefined)?.code, 'HSM_ERR_UNAVAILABLE', `waiter ${i + 1}: HSM_ERR_UNAVAILABLE`);
  }
  const later = await within(pool.use(() => ranAfterClose++));
  const laterError = later !== HANG ? later.error : undefined;
  t.ok(laterError instanceof HsmError && laterError.code === 'HSM_ERR_UNAVAILABLE', 'a later call: HSM_ERR_UNAVAILABLE');
  t.equal(ranAfterClose, 0, 'no fn ran after close');

  t.equal(pool.openCount, 2, 'sessions still in use stay open until their callers finish');
  gate.resolve();
  t.same((await Promise.all(holders)).sort(), [1, 2], 'callers already running finish normally');
  t.equal(pool.openCount, 0, 'then their sessions are closed, not pooled');
  t.same([...f.live], [], 'every session closed');
  t.same(
    f.events.filter((e) => e.startsWith('open')),
    ['open 1', 'open 2'],
    'nothing opened after close',
  );

  const f2 = new FakeFactory();
  const idlePool = new SessionPool(f2, 3);
  idlePool.fill();
  idlePool.close();
  t.same(f2.events.slice(3).sort(), ['close 1', 'close 2', 'close 3'], 'each idle session closed once');
  t.same([...f2.live], [], 'idle sessions are closed at once');
  t.equal(idlePool.openCount, 0, 'openCount = 0');
});

t.test('a session that breaks after close() is closed, not replaced', async (t) => {
  const f = new FakeFactory();
  const pool = new SessionPool(f, 1);
  const gate = deferred();
  const failing = pool.use(async () => {
    await gate.promise;
    throw new Error('broken');
  });
  await settle();
  pool.close();
  gate.resolve();
  await t.rejects(failing, { message: 'broken' });
  t.same(f.events, ['open 1', 'close 1'], 'no replacement opened for a closed pool');
  t.equal(pool.openCount, 0, 'openCount = 0');
});

t.test('after a failed open, opens pause with a doubling backoff; success resets it', async (t) => {
  const f = new FakeFactory();
  let now = 1_000;
  const pool = new SessionPool(f, 1, { backoffInitialMs: 100, backoffMaxMs: 400, clock: () => now });
  const down = new Error('device error');
  f.failOpens(down);
  await t.rejects(pool.use((s) => s.id), down, 'the first attempt reaches the token and fails');
  t.equal(pool.backoffRemainingMs, 100, 'then a 100 ms pause');
  await t.rejects(pool.use((s) => s.id), { code: 'HSM_ERR_UNAVAILABLE' }, 'during the pause: refused at once');
  t.same(f.events, ['open-failed'], 'without touching the token');
  now += 100;
  await t.rejects(pool.use((s) => s.id), down, 'after the pause the token is tried again');
  t.equal(pool.backoffRemainingMs, 200, 'the pause doubled');
  now += 200;
  await t.rejects(pool.use((s) => s.id), down);
  t.equal(pool.backoffRemainingMs, 400);
  now += 400;
  await t.rejects(pool.use((s) => s.id), down);
  t.equal(pool.backoffRemainingMs, 400, 'capped at backoffMaxMs');
  f.recover();
  now += 400;
  t.equal(await pool.use((s) => s.id), 1, 'the token is back: a session opens');
  t.equal(pool.backoffRemainingMs, 0, 'and the backoff is reset');
  t.same(f.events, ['open-failed', 'open-failed', 'open-failed', 'open-failed', 'open 1']);
});

t.test('a fatal error drops the idle sessions too; a non-fatal one replaces only its own', async (t) => {
  const fatal = new Error('session handle invalid');
  const f = new FakeFactory();
  const factory = {
    open: () => f.open(),
    close: (s: FakeSession) => f.close(s),
    isFatal: (err: unknown) => err === fatal,
  };
  const pool = new SessionPool(factory, 3);
  pool.fill();
  await t.rejects(pool.use(() => Promise.reject(new Error('bad padding'))), { message: 'bad padding' });
  t.equal(pool.openCount, 3, 'non-fatal: the session was replaced, the others kept');
  t.equal(pool.rebuildCount, 0);
  await t.rejects(pool.use(() => Promise.reject(fatal)), fatal);
  t.equal(pool.rebuildCount, 1, 'fatal: the pool is rebuilt');
  t.equal(pool.openCount, 1, 'only the replacement is open; the idle ones were closed');
  t.equal(f.live.size, 1, 'and the token agrees');
  const ids = await Promise.all([1, 2, 3].map(() => pool.use(async (s) => s.id)));
  t.equal(new Set(ids).size, 3, 'three requests at once get three sessions, reopened on demand');
  t.equal(pool.openCount, 3);
});
