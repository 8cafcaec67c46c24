// Issue 9 items 4 and 14 at the session pool: a caller waits at most the acquire timeout (then
// HSM_ERR_BUSY), an error that does not break the session leaves it in the pool, and
// `exclusive` runs only once every session is back and closed. Fake sessions: the pool's logic.
import t from 'tap';
import { HsmError } from '../hsm/index.js';
import { SessionPool } from '../hsm/session-pool.js';

function factory() {
  let next = 1;
  const live = new Set<number>();
  return {
    live,
    open: () => {
      const id = next++;
      live.add(id);
      return id;
    },
    close: (s: number) => void live.delete(s),
    breaks: (err: unknown) => !(err instanceof HsmError && err.code === 'HSM_ERR_DECRYPT'),
  };
}

t.test('a caller waits at most acquireTimeoutMs, then HSM_ERR_BUSY; the held session is unaffected', async (t) => {
  const f = factory();
  const pool = new SessionPool(f, 1, { acquireTimeoutMs: 100 });
  let release!: () => void;
  const held = pool.use(() => new Promise<void>((r) => (release = r)));
  const started = Date.now();
  await t.rejects(pool.use(() => 'never'), { code: 'HSM_ERR_BUSY' });
  const waited = Date.now() - started;
  t.ok(waited >= 90 && waited < 1_000, `refused after ${waited} ms`);
  t.equal(pool.busyCount, 1);
  release();
  await held;
  t.equal(await pool.use(() => 'served'), 'served', 'the next caller is served');
  await pool.close();
});

t.test('an error that does not break the session keeps it; one that does replaces it', async (t) => {
  const f = factory();
  const pool = new SessionPool(f, 1);
  pool.fill();
  for (let i = 0; i < 50; i += 1) {
    await t.rejects(pool.use(() => Promise.reject(new HsmError('HSM_ERR_DECRYPT', 'refused'))), { code: 'HSM_ERR_DECRYPT' });
  }
  t.equal(pool.replacedCount, 0, '50 refusals, no replacement');
  t.same([...f.live], [1], 'still the first session');
  await t.rejects(pool.use(() => Promise.reject(new Error('broken'))));
  t.equal(pool.replacedCount, 1, 'a breaking error replaces it');
  await pool.close();
});

t.test('exclusive waits for the sessions in use, runs with none open, then reopens them', async (t) => {
  const f = factory();
  const pool = new SessionPool(f, 2);
  pool.fill();
  let release!: () => void;
  const held = pool.use(() => new Promise<void>((r) => (release = r)));
  let openDuringFn = -1;
  const ex = pool.exclusive(() => {
    openDuringFn = f.live.size;
  }, 1_000);
  const queued = pool.use((s) => s);
  setTimeout(() => release(), 50);
  t.equal(await ex, true, 'ran');
  t.equal(openDuringFn, 0, 'no session open while fn ran');
  await held;
  t.ok((await queued) > 2, 'a caller queued during the pause gets a new session');
  t.equal(pool.openCount, 2, 'the pool is full again');

  let stuck!: () => void;
  const long = pool.use(() => new Promise<void>((r) => (stuck = r)));
  t.equal(await pool.exclusive(() => t.fail('must not run'), 50), false, 'gives up when a session does not come back');
  stuck();
  await long;
  await pool.close();
});
