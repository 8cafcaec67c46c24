// Token faults under a running service: sessions closed underneath it (C_CloseAllSessions), the
// application logged out (C_Logout), and the library finalised and re-initialised (every call
// answers CKR_CRYPTOKI_NOT_INITIALIZED meanwhile, as with a lost device). SoftHSM does not let
// another process touch our sessions, so the faults are caused in-process, through the same
// PKCS#11 module handle the service uses (module.ts shares one per process). Requests during a
// fault get 503 HSM_ERR_UNAVAILABLE with Retry-After, never a 500; the service recovers by itself.
import { constants, publicEncrypt, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import pkcs11js from 'pkcs11js';
import { join } from 'node:path';
import t from 'tap';
import { loadModule } from '../hsm/module.js';
import { startHarness } from './helpers/harness.js';
import { tempDir } from './helpers/process-util.js';
import { hawkFetch, type Response } from './helpers/hawk-client.js';

const h = await startHarness(t, { env: { AUDIT_SPOOL_DIR: join(tempDir(t, 'token-faults'), 'spool') } });
const credential = await h.register();
const created = await hawkFetch({ method: 'POST', url: `${h.base}/keypair`, credential });
if (created.status !== 200) throw new Error(`POST /keypair answered ${created.status}`);
const keypair = created.json as { id: string; publicKey: string };
const publicKey = { key: Buffer.from(keypair.publicKey, 'base64'), format: 'der' as const, type: 'pkcs1' as const };

const module = loadModule(h.token.modulePath);
t.teardown(() => module.release());
const p = module.pkcs11;
const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === h.token.label);
if (slot === undefined) throw new Error('test token not found');

function decryptOnce(): Promise<{ res: Response; plaintext: Buffer }> {
  const plaintext = randomBytes(32);
  const body = publicEncrypt({ ...publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, plaintext);
  return hawkFetch({
    method: 'POST',
    url: `${h.base}/decrypt`,
    credential,
    json: { keypairId: keypair.id, body: body.toString('base64') },
  }).then((res) => ({ res, plaintext }));
}

interface Tally {
  ok: number;
  unavailable: number;
  other: string[];
}

/** Check one answer: 200 with the right plaintext, or a clean 503; anything else is recorded. */
function tallyOne(tally: Tally, { res, plaintext }: { res: Response; plaintext: Buffer }): void {
  if (res.status === 200 && (res.json as { body?: string }).body === plaintext.toString('base64')) {
    tally.ok += 1;
  } else if (
    res.status === 503 &&
    res.headers.get('strongroom-error-code') === 'HSM_ERR_UNAVAILABLE' &&
    res.headers.get('retry-after') === '5' &&
    JSON.stringify(res.json) === JSON.stringify({ message: 'The key store is temporarily unavailable', status: 503 })
  ) {
    tally.unavailable += 1;
  } else {
    tally.other.push(`${res.status} ${res.headers.get('strongroom-error-code')} ${res.text}`);
  }
}

/**
 * Holds the load's clients between requests. SoftHSM frees a session in C_CloseAllSessions or
 * C_Logout even while another thread is inside C_Decrypt with it (a SIGSEGV, seen once in about
 * ten runs); a network HSM invalidates the handles instead. So the fault is caused while no
 * request is in flight, and the clients go on at once: every session the service holds is dead
 * when the next requests arrive.
 */
class Gate {
  inFlight = 0;
  #held: Promise<void> | undefined;
  #open: (() => void) | undefined;

  async pass(): Promise<void> {
    while (this.#held) await this.#held;
  }

  /** Hold new requests, wait for those in flight, run `fault`, and let the clients go on. */
  async between(fault: () => void): Promise<void> {
    this.#held = new Promise((r) => (this.#open = r));
    while (this.inFlight > 0) await sleep(1);
    try {
      fault();
    } finally {
      this.#held = undefined;
      this.#open?.();
    }
  }
}

/** `workers` clients decrypting back to back until `stop()` resolves. */
async function load(workers: number, stop: Promise<void>, gate = new Gate()): Promise<Tally> {
  const tally: Tally = { ok: 0, unavailable: 0, other: [] };
  let done = false;
  void stop.then(() => {
    done = true;
  });
  await Promise.all(
    Array.from({ length: workers }, async () => {
      while (!done) {
        await gate.pass();
        gate.inFlight += 1;
        try {
          tallyOne(tally, await decryptOnce());
        } finally {
          gate.inFlight -= 1;
        }
      }
    }),
  );
  return tally;
}

/** Decrypts in a row until `n` succeed consecutively; fails after `ms`. Returns how long it took. */
async function recovered(t: Pick<typeof import('tap').default, 'equal' | 'same'>, n: number, ms = 10_000): Promise<number> {
  const start = Date.now();
  let streak = 0;
  const tally: Tally = { ok: 0, unavailable: 0, other: [] };
  while (streak < n && Date.now() - start < ms) {
    const before = tally.ok;
    tallyOne(tally, await decryptOnce());
    streak = tally.ok > before ? streak + 1 : 0;
    if (streak === 0) await sleep(50);
  }
  t.equal(streak, n, `${n} decrypts in a row succeed again without a restart`);
  t.same(tally.other, [], 'meanwhile: only 200 or a clean 503');
  return Date.now() - start;
}

t.test('warm-up: decrypts succeed', async (t) => {
  const tally: Tally = { ok: 0, unavailable: 0, other: [] };
  for (let i = 0; i < 8; i++) tallyOne(tally, await decryptOnce());
  t.equal(tally.ok, 8);
});

t.test('C_CloseAllSessions mid-load: 503s, never 500, then recovery by itself', async (t) => {
  const replacedBefore = h.app.keyStore.stats().sessionsReplaced;
  let release!: () => void;
  const stop = new Promise<void>((r) => (release = r));
  const gate = new Gate();
  const running = load(4, stop, gate);
  await sleep(300);
  await gate.between(() => p.C_CloseAllSessions(slot));
  await sleep(700);
  release();
  const tally = await running;
  t.same(tally.other, [], 'every answer was a correct 200 or a clean 503');
  t.ok(tally.unavailable >= 1, `the fault was seen: ${tally.unavailable} × 503`);
  t.ok(tally.ok >= 10, `decrypts succeeded around it: ${tally.ok} × 200`);
  await recovered(t, 20);
  t.ok(h.app.keyStore.stats().sessionsReplaced > replacedBefore, 'the dead sessions were replaced');
});

t.test('the token logged out (C_Logout) mid-load: 503s at most, then recovery', async (t) => {
  const replacedBefore = h.app.keyStore.stats().sessionsReplaced;
  let release!: () => void;
  const stop = new Promise<void>((r) => (release = r));
  const gate = new Gate();
  const running = load(4, stop, gate);
  await sleep(300);
  await gate.between(() => {
    const mine = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
    p.C_Logout(mine);
    p.C_CloseSession(mine);
  });
  await sleep(700);
  release();
  const tally = await running;
  t.same(tally.other, [], 'every answer was a correct 200 or a clean 503');
  t.ok(tally.ok >= 10, `decrypts succeeded around it: ${tally.ok} × 200 (${tally.unavailable} × 503)`);
  t.ok(h.app.keyStore.stats().sessionsReplaced > replacedBefore, 'the logged-out sessions were detected and replaced');
  await recovered(t, 20);
});

t.test('library finalised (every call fails): 503 with backoff, then re-initialised: recovery', async (t) => {
  p.C_Finalize();
  const tally: Tally = { ok: 0, unavailable: 0, other: [] };
  const start = Date.now();
  while (Date.now() - start < 1500) tallyOne(tally, await decryptOnce());
  t.same(tally.other, [], 'only clean 503s while the token is gone');
  t.equal(tally.ok, 0, 'nothing can be decrypted');
  t.ok(tally.unavailable >= 5, `${tally.unavailable} × 503`);
  const ready = await fetch(`${h.base}/ready`);
  t.equal(ready.status, 503, '/ready says not ready');
  t.match(await ready.json(), { status: 'unavailable', checks: { token: 'failed', canary: 'failed', database: 'ok' } });

  p.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  const took = await recovered(t, 20);
  t.ok(took < 8_000, `recovered within ${took} ms (backoff is capped at 5 s)`);
  await sleep(1100); // /ready answers from one round of checks for 1 s
  const again = await fetch(`${h.base}/ready`);
  t.equal(again.status, 200, '/ready is ready again');
});
