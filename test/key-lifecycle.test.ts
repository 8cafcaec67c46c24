// Key lifecycle (issue 4 item 1): Enabled ⇄ Disabled → PendingDeletion → Deleted through the
// admin API and the built CLI; decrypt refused with a catalogue code while not enabled (and
// request-logged); a second instance follows a state change within its state TTL; purge destroys
// only keys past their date. Real SoftHSM token, real Postgres; the clock is injected.
import { execFileSync } from 'node:child_process';
import { constants, createPublicKey, publicEncrypt, randomBytes } from 'node:crypto';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { KeypairRepository } from '../src/db/keypairs.js';
import { KeyLifecycle } from '../src/keys/lifecycle.js';
import { findKeyInconsistencies } from '../src/keys/reconcile.js';
import { hawkFetch, send, type ClientCredential } from './helpers/hawk-client.js';
import { startHarness, type Harness } from './helpers/harness.js';
import { baseEnv, tempDir, tokenEnv, writeSecretFile } from './helpers/process-util.js';
import { secretCheckedCli } from './helpers/cli-run.js';
import { createTestToken } from './helpers/token.js';

t.setTimeout(180_000);
const DAY = 86_400_000;
const token = createTestToken();
const work = tempDir(t, 'keys');
const pinFile = writeSecretFile(work, 'pin', `${token.pin}\n`);

// The app's clock; Hawk timestamps follow it, so moving it days ahead keeps requests fresh.
let now = Date.now();
const clock = () => now;
const a = await startHarness(t, { token, clock });
const b = await startHarness(t, { token, clock, databaseUrl: a.databaseUrl });
const credential = await a.register('lifecycle-client');
const cliEnv = { ...baseEnv(), ...tokenEnv(token, pinFile), DATABASE_URL: a.databaseUrl };

type Keypair = { id: string; publicKey: string; dateCreated: number };
const hawk = (h: Harness, method: string, path: string, json?: unknown) =>
  hawkFetch({ method, url: `${h.base}${path}`, credential, timestamp: Math.floor(now / 1000), ...(json !== undefined && { json }) });
const admin = (method: string, path: string, json?: unknown, bearer = a.adminToken) =>
  send(method, `${a.origin}/admin/v1${path}`, { ...(json !== undefined && { json }), headers: { authorization: `Bearer ${bearer}` } });

async function createKeypair(): Promise<Keypair> {
  const res = await hawk(a, 'POST', '/keypair');
  if (res.status !== 200) throw new Error(`POST /keypair: ${res.status} ${res.text}`);
  return res.json as Keypair;
}

function decryptAt(h: Harness, k: Keypair) {
  const key = createPublicKey({ key: Buffer.from(k.publicKey, 'base64'), format: 'der', type: 'pkcs1' });
  const plaintext = randomBytes(24);
  const body = publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, plaintext).toString('base64');
  return hawk(h, 'POST', '/decrypt', { keypairId: k.id, body }).then((res) => ({ res, plaintext }));
}

async function auditEvents(keypairId: string): Promise<string[]> {
  const { rows } = await a.db.query<{ event: string; actor: string }>(
    'SELECT event, actor FROM request_log WHERE event IS NOT NULL AND keypair_id = $1 ORDER BY id',
    [keypairId],
  );
  return rows.map((r) => `${r.event} by ${r.actor}`);
}

const checkedCli = secretCheckedCli([token.pin], cliEnv);
/** The built CLI with this file's environment; every run is checked for the PIN in its output. */
const cli = (tt: Test, args: string[], stdin?: string) => checkedCli(tt, args, cliEnv, stdin);

const k1 = await createKeypair();

t.test('the admin API needs the admin token and shows the state', async (t) => {
  const none = await send('GET', `${a.origin}/admin/v1/keypairs`);
  t.equal(none.status, 401);
  t.equal(none.headers.get('strongroom-error-code'), 'ADMIN_ERR_UNAUTHORIZED');
  const wrong = await admin('POST', `/keypairs/${k1.id}/disable`, undefined, randomBytes(32).toString('base64url'));
  t.equal(wrong.status, 401);
  t.equal(wrong.headers.get('strongroom-error-code'), 'ADMIN_ERR_UNAUTHORIZED');

  const list = await admin('GET', '/keypairs?token=true');
  t.equal(list.status, 200, list.text);
  const rows = (list.json as { keypairs: Record<string, unknown>[] }).keypairs;
  t.equal(rows.length, 1);
  t.match(rows[0], { id: k1.id, state: 'enabled', owner: 'lifecycle-client', inToken: true, deleteAfter: null, origin: 'generated' });
  const one = await admin('GET', `/keypairs/${k1.id}`);
  t.equal(one.status, 200);
  t.equal((one.json as { state: string }).state, 'enabled');
  const unknown = await admin('GET', '/keypairs/00000000-0000-4000-8000-000000000000');
  t.equal(unknown.status, 404);
  t.equal(unknown.headers.get('strongroom-error-code'), 'KEY_ERR_KEYPAIR_NOT_FOUND');
});

t.test('disable: decrypt refused with 400 and a code, logged; the LKM list keeps its shape; enable again', async (t) => {
  t.equal((await decryptAt(b, k1)).res.status, 200, 'instance B decrypts (and caches the state)');

  const res = await admin('POST', `/keypairs/${k1.id}/disable`);
  t.equal(res.status, 200, res.text);
  t.equal((res.json as { state: string }).state, 'disabled');
  const again = await admin('POST', `/keypairs/${k1.id}/disable`);
  t.equal(again.status, 200, 'disabling a disabled keypair changes nothing');

  const refused = (await decryptAt(a, k1)).res;
  t.equal(refused.status, 400);
  t.equal(refused.headers.get('strongroom-error-code'), 'KEY_ERR_KEYPAIR_DISABLED');
  t.match((refused.json as { message: string }).message, /disabled/);
  t.equal((refused.json as { status: number }).status, 400);
  const logged = await a.db.query<{ status_code: number }>(
    "SELECT status_code FROM request_log WHERE keypair_id = $1 AND request_uri LIKE '%/decrypt%' ORDER BY id DESC LIMIT 1",
    [k1.id],
  );
  t.equal(logged.rows[0]?.status_code, 400, 'the refused decrypt is in the request log');

  now += 3_000; // past the state TTL (2 s) of the other instance
  const atB = (await decryptAt(b, k1)).res;
  t.equal(atB.status, 400, 'instance B refuses too once its state TTL has passed');
  t.equal(atB.headers.get('strongroom-error-code'), 'KEY_ERR_KEYPAIR_DISABLED');

  const listed = await hawk(a, 'GET', '/keypair');
  t.same(listed.json, [k1], 'GET /keypair shows a disabled keypair, in the reference shape');
  const got = await hawk(a, 'GET', `/keypair/${k1.id}`);
  t.same(got.json, k1);

  const enabled = await admin('POST', `/keypairs/${k1.id}/enable`);
  t.equal(enabled.status, 200);
  t.equal((enabled.json as { state: string }).state, 'enabled');
  const after = await decryptAt(a, k1);
  t.equal(after.res.status, 200);
  t.equal((after.res.json as { body: string }).body, after.plaintext.toString('base64'));
  t.same(await auditEvents(k1.id), ['keypair.disable by admin', 'keypair.enable by admin'], 'each change audited once');
});

t.test('audit first: if the event cannot be kept the state does not change, and the caller gets 503', async (t) => {
  // Neither the chain table (a trigger refuses inserts) nor the spool (read-only, immutable for
  // root) can take an entry, while the keypair table works: only the audit fails.
  await a.db.query(
    "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit refused by the test'; END $$",
  );
  await a.db.query('CREATE TRIGGER refuse_audit BEFORE INSERT ON request_log FOR EACH ROW EXECUTE FUNCTION refuse_audit()');
  const spoolDir = a.config.audit.spoolDir;
  const root = process.getuid?.() === 0;
  chmodSync(spoolDir, 0o500);
  if (root) execFileSync('chattr', ['+i', spoolDir]);
  const restore = async () => {
    if (root) execFileSync('chattr', ['-i', spoolDir]);
    chmodSync(spoolDir, 0o700);
    await a.db.query('DROP TRIGGER IF EXISTS refuse_audit ON request_log');
    await a.db.query('DROP FUNCTION IF EXISTS refuse_audit()');
  };
  t.teardown(restore);
  t.throws(() => writeFileSync(join(spoolDir, 'probe'), 'x'), 'the spool directory is really read-only');
  const eventsBefore = await auditEvents(k1.id);

  for (const [change, json] of [['disable', undefined], ['schedule-deletion', { days: 7 }]] as const) {
    const res = await admin('POST', `/keypairs/${k1.id}/${change}`, json);
    t.equal(res.status, 503, `${change}: 503`);
    t.equal(res.headers.get('strongroom-error-code'), 'AUDIT_ERR_UNAVAILABLE', `${change}: the code`);
    t.equal(res.headers.get('retry-after'), '5', `${change}: Retry-After`);
    t.same(res.json, { message: 'The audit log is temporarily unavailable', status: 503 });
    const row = await a.db.query<{ state: string; delete_after: Date | null }>('SELECT state, delete_after FROM keypair WHERE id = $1', [k1.id]);
    t.same(row.rows[0], { state: 'enabled', delete_after: null }, `${change}: the state did not change`);
  }

  await restore();
  t.same(await auditEvents(k1.id), eventsBefore, 'no event for a change that did not happen');
  const decrypted = await decryptAt(a, k1);
  t.equal(decrypted.res.status, 200, 'the keypair still decrypts');
  t.equal((await admin('GET', `/keypairs/${k1.id}`)).status, 200, 'the audit works again once restored');
});

t.test('schedule-deletion: 7 to 30 days, refuses decrypts, cancel leaves it disabled', async (t) => {
  for (const days of [6, 31, 7.5, 'x']) {
    const bad = await admin('POST', `/keypairs/${k1.id}/schedule-deletion`, { days });
    t.equal(bad.status, 400, `days ${days}`);
    t.equal(bad.headers.get('strongroom-error-code'), 'KEY_ERR_DELETION_DAYS');
  }
  const res = await admin('POST', `/keypairs/${k1.id}/schedule-deletion`, { days: 7 });
  t.equal(res.status, 200, res.text);
  t.match(res.json, { state: 'pending_deletion', deleteAfter: new Date(now + 7 * DAY).toISOString() });

  const refused = (await decryptAt(a, k1)).res;
  t.equal(refused.status, 400);
  t.equal(refused.headers.get('strongroom-error-code'), 'KEY_ERR_KEYPAIR_PENDING_DELETION');
  const enable = await admin('POST', `/keypairs/${k1.id}/enable`);
  t.equal(enable.status, 409, 'a keypair pending deletion cannot simply be enabled');
  t.equal(enable.headers.get('strongroom-error-code'), 'KEY_ERR_INVALID_STATE');

  const cancel = await admin('POST', `/keypairs/${k1.id}/cancel-deletion`);
  t.equal(cancel.status, 200);
  t.match(cancel.json, { state: 'disabled' });
  t.equal((await admin('POST', `/keypairs/${k1.id}/enable`)).status, 200);
  const def = await admin('POST', `/keypairs/${k1.id}/schedule-deletion`);
  t.match(def.json, { state: 'pending_deletion', deleteAfter: new Date(now + 30 * DAY).toISOString() }, 'default 30 days');
  t.equal((await admin('POST', `/keypairs/${k1.id}/cancel-deletion`)).status, 200);
  t.equal((await admin('POST', `/keypairs/${k1.id}/enable`)).status, 200);
});

t.test('purge destroys only keys past their date (injected clock)', async (t) => {
  const k2 = await createKeypair();
  const lifecycle = new KeyLifecycle({
    keypairs: new KeypairRepository(a.db),
    keyStore: a.app.keyStore,
    audit: (e) => a.app.audit(e),
    clock,
  });
  await lifecycle.scheduleDeletion(k2.id, 7, 'test');
  now += 7 * DAY - 1_000;
  t.same((await lifecycle.purge('test')).purged, [], 'one second early: nothing destroyed');
  t.ok(await a.app.keyStore.getRsaPublicKey(k2.id), 'the key is still in the token');
  now += 2_000;
  t.same((await lifecycle.purge('test')).purged, [k2.id], 'past its date: destroyed');
  t.equal(await a.app.keyStore.getRsaPublicKey(k2.id), undefined, 'gone from the token');
  t.equal((await lifecycle.get(k2.id)).state, 'deleted');
  t.same(await findKeyInconsistencies(a.db, a.app.keyStore), { rowsWithoutKey: [], keysWithoutRow: [] });

  now += 3_000;
  const dec = (await decryptAt(a, k2)).res;
  t.equal(dec.status, 400);
  t.equal(dec.headers.get('strongroom-error-code'), 'KEY_ERR_KEYPAIR_DELETED');
  const got = await hawk(a, 'GET', `/keypair/${k2.id}`);
  t.equal(got.status, 404, 'a deleted keypair is not in the LKM view');
  t.same(await auditEvents(k2.id), ['keypair.schedule-deletion by test', 'keypair.delete by test']);
});

t.test('the CLI: keys list, disable, enable, schedule-deletion, cancel-deletion, purge', async (t) => {
  const k3 = await createKeypair();
  const list = await cli(t, ['keys', 'list', '--json']);
  t.equal(list.code, 0, list.stderr);
  const rows = JSON.parse(list.stdout) as { id: string; state: string; inToken: boolean; owner: string; dateCreated: string }[];
  t.match(rows.find((r) => r.id === k3.id), { state: 'enabled', inToken: true, owner: 'lifecycle-client' });
  t.match(rows.find((r) => r.id === k1.id), { state: 'enabled', inToken: true });
  t.ok(rows.every((r) => typeof r.dateCreated === 'string'), 'created dates');

  const table = await cli(t, ['keys', 'list']);
  t.equal(table.code, 0);
  t.match(table.stdout, /^ID\s+CREATED\s+OWNER\s+STATE\s+DELETE AFTER\s+IN TOKEN\n/);
  t.match(table.stdout, new RegExp(`${k3.id}.*enabled.*yes`));

  const disabled = await cli(t, ['keys', 'disable', k3.id, '--json']);
  t.equal(disabled.code, 0, disabled.stderr);
  t.equal(JSON.parse(disabled.stdout).state, 'disabled');
  now += 3_000;
  t.equal((await decryptAt(a, k3)).res.headers.get('strongroom-error-code'), 'KEY_ERR_KEYPAIR_DISABLED', 'the service refuses it');
  t.equal((await cli(t, ['keys', 'enable', k3.id])).code, 0);

  const bad = await cli(t, ['keys', 'schedule-deletion', k3.id, '--days', '3']);
  t.equal(bad.code, 1, 'fewer than 7 days refused');
  t.match(bad.stderr, /7 to 30/);
  const noId = await cli(t, ['keys', 'disable']);
  t.equal(noId.code, 2, 'usage error without an id');

  const scheduled = await cli(t, ['keys', 'schedule-deletion', k3.id, '--days', '7', '--json']);
  t.equal(scheduled.code, 0, scheduled.stderr);
  t.equal(JSON.parse(scheduled.stdout).state, 'pending_deletion');
  const early = await cli(t, ['keys', 'purge', '--yes', '--json']);
  t.equal(early.code, 0, early.stderr);
  t.same(JSON.parse(early.stdout), { purged: [] }, 'the real clock is 7 days short: nothing destroyed');

  // Seven days pass (the CLI runs on the real clock): move its date into the past.
  await a.db.query("UPDATE keypair SET delete_after = now() - interval '1 second' WHERE id = $1", [k3.id]);
  const unconfirmed = await cli(t, ['keys', 'purge']);
  t.equal(unconfirmed.code, 2, 'no terminal and no --yes: refused');
  t.match(unconfirmed.stderr, /--yes/);
  t.ok(await a.app.keyStore.getRsaPublicKey(k3.id), 'still in the token');
  const purged = await cli(t, ['keys', 'purge', '--yes', '--json']);
  t.equal(purged.code, 0, purged.stderr);
  t.same(JSON.parse(purged.stdout), { purged: [k3.id] });
  t.equal(await a.app.keyStore.getRsaPublicKey(k3.id), undefined, 'destroyed in the token');

  const cancelled = await cli(t, ['keys', 'cancel-deletion', k1.id]);
  t.equal(cancelled.code, 1, 'cancelling a deletion that is not scheduled is refused');
  t.match(cancelled.stderr, /enabled/);
  const events = await auditEvents(k3.id);
  t.same(
    events.map((e) => e.replace(/ by cli:.*$/, ' by cli')),
    ['keypair.disable by cli', 'keypair.enable by cli', 'keypair.schedule-deletion by cli', 'keypair.delete by cli'],
    'every change audited, attributed to the OS user; refused changes not',
  );
});
