// Session lanes: a burst in one lane (face) never takes the sessions another lane reserved.
// First the admission rule alone with operations the test settles by hand, then on the token.
import { createHash } from 'node:crypto';
import t from 'tap';
import { openPkcs11KeyStoreV2, SessionLanes } from '../hsm/index.js';
import { createTestToken } from './helpers/token.js';

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

const tick = () => new Promise((r) => setImmediate(r));

t.test('a burst uses every session but the ones other lanes reserve', async (t) => {
  const lanes = new SessionLanes(4, { lkm: 1, jose: 1 });
  const gates: Array<() => void> = [];
  let running = 0;
  let maxRunning = 0;
  const op = (lane: string) =>
    lanes.run(lane, async () => {
      running += 1;
      maxRunning = Math.max(maxRunning, running);
      const d = deferred();
      gates.push(d.resolve);
      await d.promise;
      running -= 1;
    });
  const burst = Array.from({ length: 10 }, () => op('lkm'));
  await tick();
  t.equal(lanes.inUse('lkm'), 3, 'lkm takes 3 of 4: one stays reserved for jose');
  const jose = op('jose');
  await tick();
  t.equal(lanes.inUse('jose'), 1, 'jose starts at once during the burst');
  const other = op('default');
  await tick();
  t.equal(lanes.inUse('default'), 0, 'the unreserved lane queues with the burst');
  while (gates.length > 0) {
    gates.shift()?.();
    await tick();
    await tick();
    t.ok(lanes.inUse('lkm') <= 3 && running <= 4, `never more than 4 running (${running}), lkm at most 3`);
  }
  await Promise.all([...burst, jose, other]);
  t.equal(maxRunning, 4);
  t.same([lanes.inUse('lkm'), lanes.inUse('jose'), lanes.inUse('default')], [0, 0, 0]);
});

t.test('an idle lane lends nothing beyond its reservation, and bad plans are refused', async (t) => {
  const lanes = new SessionLanes(2, { lkm: 1 });
  const d = deferred();
  const first = lanes.run('default', () => d.promise);
  await tick();
  let second = false;
  const next = lanes.run('default', async () => {
    second = true;
  });
  await tick();
  t.equal(second, false, 'default may not take the session lkm reserved');
  let lkm = false;
  await lanes.run('lkm', async () => {
    lkm = true;
  });
  t.equal(lkm, true, 'lkm gets it at once');
  d.resolve();
  await Promise.all([first, next]);
  t.equal(second, true);
  for (const [total, plan] of [
    [2, { a: 2 }],
    [4, { a: 1, b: 3 }],
    [4, { default: 1 }],
    [4, { a: 0 }],
    [4, { a: 1.5 }],
  ] as const) {
    t.throws(() => new SessionLanes(total, plan as Record<string, number>), { code: 'HSM_ERR_INPUT' }, `refused: ${total} sessions, ${JSON.stringify(plan)}`);
  }
  await t.rejects(lanes.run('nope', async () => undefined), { code: 'HSM_ERR_INPUT' }, 'an unknown lane is refused');
});

t.test('on the token: a signing burst in one lane leaves another lane its session', async (t) => {
  const token = createTestToken();
  const ks = await openPkcs11KeyStoreV2({ modulePath: token.modulePath, tokenLabel: token.label, pin: token.pin, sessions: 3, lanes: { bulk: 1, quick: 1 } });
  t.teardown(() => ks.close());
  const heavy = await ks.generate({ spec: 'rsa-4096', usage: 'sign', alias: 'heavy', lane: 'bulk' });
  const light = await ks.generate({ spec: 'ec-p256', usage: 'sign', alias: 'light', lane: 'quick' });
  const digest = createHash('sha256').update('lanes').digest();
  let bulkDone = 0;
  const burst = Array.from({ length: 16 }, () =>
    ks.sign(heavy.ref, { scheme: 'rsa-pkcs1', hash: 'sha256' }, digest, { lane: 'bulk' }).then(() => {
      bulkDone += 1;
    }),
  );
  await ks.sign(light.ref, { scheme: 'ecdsa', hash: 'sha256' }, digest, { lane: 'quick' });
  const doneWhenQuickFinished = bulkDone;
  await Promise.all(burst);
  t.ok(doneWhenQuickFinished <= 4, `the quick lane finished after ${doneWhenQuickFinished} of 16 bulk signatures`);
  t.equal(bulkDone, 16);
  await t.rejects(ks.sign(light.ref, { scheme: 'ecdsa', hash: 'sha256' }, digest, { lane: 'nope' }), { code: 'HSM_ERR_INPUT' });
});
