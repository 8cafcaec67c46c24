// Real Postgres restarts under the BUILT service: a private cluster (test/helpers/pg-cluster.ts)
// is stopped with `pg_ctl stop -m fast` (every backend gets 57P01) and `-m immediate` (backends
// killed, crash recovery at start) while two servers work on it: A generates keys on the spot
// (KEY_POOL_SIZE=0), B runs with the key pool on; both take decrypts and write audit entries.
// Then a server runs retention while the chain lock is held and the cluster stops under it.
// Pass: no process exits, every answer is 200 or a catalogue 503 with Retry-After, every
// answered request is in the audit chain afterwards, and the built `strongroom audit verify` passes.
import { constants, publicEncrypt, randomBytes, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import t from 'tap';
import { appendRecords } from '../src/audit/store.js';
import { openPostgres } from '../src/db/postgres.js';
import { migrate } from '../src/db/migrations.js';
import { AUDIT_CHAIN_LOCK } from '../src/audit/store.js';
import { runCli } from './helpers/cli-run.js';
import { hawkFetch, send, type ClientCredential } from './helpers/hawk-client.js';
import { SERVER_JS } from './helpers/paths.js';
import { startPgCluster, type StopMode } from './helpers/pg-cluster.js';
import { baseEnv, startService, tempDir, tokenEnv, writeSecretFile, type Proc } from './helpers/process-util.js';
import { createTestToken, type TestToken } from './helpers/token.js';

/** What the checks below use of a tap test. */
type Tt = Pick<typeof t, 'same' | 'equal' | 'teardown' | 'notOk'>;

const PREFIX = '/key-management/v1';
/** The 503 codes of the catalogue a database fault may produce. */
const CATALOGUE_503 = new Set(['DB_ERR_UNAVAILABLE', 'AUDIT_ERR_UNAVAILABLE', 'HSM_ERR_UNAVAILABLE', 'SERVICE_ERR_SHUTTING_DOWN']);

const tokens = { a: createTestToken(), b: createTestToken(), r: createTestToken() };
const work = tempDir(t, 'pg-faults');
const adminToken = randomBytes(32).toString('base64url');
const cluster = await startPgCluster(t);

async function createDatabase(name: string): Promise<string> {
  const client = new pg.Client({ connectionString: cluster.url });
  await client.connect();
  await client.query(`CREATE DATABASE ${name}`);
  await client.end();
  const url = new URL(cluster.url);
  url.pathname = `/${name}`;
  return url.toString();
}

interface Server {
  name: string;
  proc: Proc;
  origin: string;
  url: string;
  env: Record<string, string>;
  credential: ClientCredential;
}

async function startServer(name: string, token: TestToken, dbUrl: string, extra: Record<string, string>): Promise<Server> {
  const env = {
    ...baseEnv(),
    ...tokenEnv(token, writeSecretFile(work, `pin-${name}`, `${token.pin}\n`)),
    DATABASE_URL: dbUrl,
    ADMIN_TOKEN_FILE: writeSecretFile(work, `admin-${name}`, adminToken),
    AUDIT_SPOOL_DIR: join(work, `spool-${name}`),
    DATA_DIR: join(work, `data-${name}`),
    LOG_LEVEL: 'warn',
    ...extra,
  };
  const { proc, origin } = await startService(t, SERVER_JS, env);
  const registered = await send('POST', `${origin}${PREFIX}/auth`, {
    json: { id: `fault-${name}-${randomBytes(3).toString('hex')}` },
    headers: { authorization: `Bearer ${adminToken}` },
  });
  if (registered.status !== 200) throw new Error(`${name}: POST /auth answered ${registered.status}`);
  const reg = registered.json as { id: string; authKey: string };
  return { name, proc, origin, url: dbUrl, env, credential: { id: reg.id, key: reg.authKey, algorithm: 'sha256' } };
}

interface Answer {
  server: string;
  userId: string;
  status: number;
  code: string | null;
  retryAfter: string | null;
  at: number;
  kind: 'decrypt' | 'create';
}

const answers: Answer[] = [];
let sequence = 0;

async function call(s: Server, kind: Answer['kind'], path: string, json?: unknown): Promise<Answer & { json: unknown }> {
  const userId = `u-${s.name}-${(sequence += 1)}-${randomBytes(3).toString('hex')}`;
  let res;
  try {
    res = await hawkFetch({
      method: 'POST',
      url: `${s.origin}${PREFIX}${path}`,
      credential: s.credential,
      ...(json !== undefined && { json }),
      headers: { 'purecloud-user-id': userId },
    });
  } catch (err) {
    // No answer at all (the process died or dropped the connection): recorded as status 0.
    const a = { server: s.name, userId, status: 0, code: (err as Error).message, retryAfter: null, at: Date.now(), kind, json: undefined };
    answers.push(a);
    return a;
  }
  const a = {
    server: s.name,
    userId,
    status: res.status,
    code: res.headers.get('strongroom-error-code'),
    retryAfter: res.headers.get('retry-after'),
    at: Date.now(),
    kind,
  };
  answers.push(a);
  return { ...a, json: res.json };
}

const dbA = await createDatabase('fault_a');
const dbB = await createDatabase('fault_b');
const a = await startServer('a', tokens.a, dbA, { KEY_POOL_SIZE: '0' });
const b = await startServer('b', tokens.b, dbB, { KEY_POOL_SIZE: '3' });

/** A keypair of `s` to decrypt with (made before any fault). */
async function keypairOf(s: Server): Promise<{ id: string; publicKey: string }> {
  for (;;) {
    const r = await call(s, 'create', '/keypair');
    if (r.status === 200) return r.json as { id: string; publicKey: string };
    await sleep(200);
  }
}
const keys = { a: await keypairOf(a), b: await keypairOf(b) };

function decryptBody(key: { id: string; publicKey: string }) {
  const pub = { key: Buffer.from(key.publicKey, 'base64'), format: 'der' as const, type: 'pkcs1' as const };
  const body = publicEncrypt({ ...pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, randomBytes(32));
  return { keypairId: key.id, body: body.toString('base64') };
}

/**
 * Four clients (a decrypter and a key creator per server) until `stop` is set. Creators pace
 * themselves (an RSA-3072 generation is ~0.5 s of a core).
 */
function load(stop: { done: boolean }): Promise<void> {
  const decrypter = async (s: Server, key: { id: string; publicKey: string }) => {
    while (!stop.done && !s.proc.exited()) {
      const r = await call(s, 'decrypt', '/decrypt', decryptBody(key));
      if (r.status !== 200) await sleep(100);
    }
  };
  const creator = async (s: Server) => {
    while (!stop.done && !s.proc.exited()) {
      await call(s, 'create', '/keypair');
      await sleep(300);
    }
  };
  return Promise.all([decrypter(a, keys.a), decrypter(b, keys.b), creator(a), creator(b)]).then(() => undefined);
}

/** Milliseconds from `since` until a decrypt at `s` (or a create, without `key`) answers 200 again. */
async function recovery(s: Server, key: { id: string; publicKey: string } | undefined, since: number): Promise<number> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline && !s.proc.exited()) {
    const r = key ? await call(s, 'decrypt', '/decrypt', decryptBody(key)) : await call(s, 'create', '/keypair');
    if (r.status === 200) return Date.now() - since;
    await sleep(100);
  }
  return Number.POSITIVE_INFINITY;
}

/** The server is still running; if not, its last output says why. */
function alive(tt: Tt & Pick<typeof t, 'comment'>, s: Server, what: string): void {
  tt.notOk(s.proc.exited(), `${what} is still running`);
  if (s.proc.exited()) tt.comment(`${s.name} exited; the end of its output:\n${s.proc.output().slice(-1500)}`);
}

function tally(list: Answer[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of list) out[`${x.server}:${x.kind}:${x.code}`] = (out[`${x.server}:${x.kind}:${x.code}`] ?? 0) + 1;
  return out;
}

function checkAnswers(tt: Tt, list: Answer[], what: string): void {
  const bad = list.filter(
    (x) => !(x.status === 200 || (x.status === 503 && x.code !== null && CATALOGUE_503.has(x.code) && x.retryAfter !== null)),
  );
  tt.same(bad.slice(0, 5), [], `${what}: every answer is 200 or a catalogue 503 with Retry-After (${list.length} answers)`);
}

/** Every answered request of `s` whose audit entry was kept has its row in the chain (waits for the spool replay). */
async function auditedInChain(tt: Tt, s: Server): Promise<void> {
  const expected = answers.filter((x) => x.server === s.name && x.status !== 0 && x.code !== 'AUDIT_ERR_UNAVAILABLE').map((x) => x.userId);
  const client = new pg.Client({ connectionString: s.url });
  await client.connect();
  let missing: string[] = expected;
  const deadline = Date.now() + 30_000;
  try {
    while (Date.now() < deadline) {
      const { rows } = await client.query<{ user_id: string }>('SELECT user_id FROM request_log WHERE user_id = ANY($1::text[])', [missing]);
      const found = new Set(rows.map((r) => r.user_id));
      missing = missing.filter((u) => !found.has(u));
      if (missing.length === 0) break;
      await sleep(250);
    }
  } finally {
    await client.end();
  }
  tt.same(missing.slice(0, 5), [], `${s.name}: all ${expected.length} answered requests are in the audit chain`);
}

async function verify(tt: Tt, s: Server): Promise<void> {
  const run = await runCli(tt, ['audit', 'verify'], s.env);
  tt.equal(run.code, 0, `${s.name}: strongroom audit verify passes (${run.stdout.trim() || run.stderr.trim()})`);
}

// Retention runs at start (and hourly). The test holds the chain lock so the trim and the audit
// appends wait on it inside their transactions, then stops the cluster under them.
const dbR = await createDatabase('fault_r');
{
  const seed = openPostgres({ url: dbR, poolSize: 2 });
  await migrate(seed);
  const old = new Date(Date.now() - 10 * 86_400_000);
  await appendRecords(
    seed,
    Array.from({ length: 2_000 }, (_, i) => ({
      uid: randomUUID(),
      loggedAt: new Date(old.getTime() + i),
      userId: 'old',
      method: 'GET',
      uri: '/key-management/v1/keypair',
      hawkId: null,
      statusCode: 200,
      keypairId: null,
      clientAddress: null,
      event: null,
      actor: null,
      detail: null,
      face: 'lkm',
      principalKind: null,
      principalId: null,
      subjectKind: null,
      subjectId: null,
    })),
  );
  await seed.close();
}

for (const mode of ['fast', 'immediate'] as StopMode[]) {
  t.test(`pg_ctl stop -m ${mode} under decrypts, on-the-spot and pool generations, audit appends`, async (tt) => {
    const from = answers.length;
    const stop = { done: false };
    const running = load(stop);
    await sleep(1_500);
    await cluster.stop(mode);
    const stoppedAt = Date.now();
    await sleep(3_000);
    await cluster.start();
    const startedAt = Date.now();
    const [ra, rb] = await Promise.all([recovery(a, keys.a, startedAt), recovery(b, keys.b, startedAt)]);
    await sleep(1_500);
    stop.done = true;
    await running;
    const mine = answers.slice(from);
    const count = (status: number) => mine.filter((x) => x.status === status).length;
    tt.comment(
      `-m ${mode}: ${mine.length} answers, ${count(200)} × 200, ${count(503)} × 503, down ${startedAt - stoppedAt} ms; ` +
        `decrypt 200 again ${ra} ms (A) / ${rb} ms (B) after the restart; ` +
        `creates ${mine.filter((x) => x.kind === 'create' && x.status === 200).length} × 200; ` +
        `503s by kind and code: ${JSON.stringify(tally(mine.filter((x) => x.status === 503)))}`,
    );
    alive(tt, a, 'server A (on-the-spot generation)');
    alive(tt, b, 'server B (key pool on)');
    checkAnswers(tt, mine, `-m ${mode}`);
    tt.ok(count(503) > 0, 'the outage was seen (some 503)');
    tt.ok(ra < 30_000 && rb < 30_000, 'both serve decrypts again within 30 s of the restart');
    await auditedInChain(tt, a);
    await auditedInChain(tt, b);
    await verify(tt, a);
    await verify(tt, b);
  });
}

for (const mode of ['fast', 'immediate'] as StopMode[]) {
  t.test(`retention and audit appends waiting on the chain lock, then pg_ctl stop -m ${mode}`, async (tt) => {
    const holder = new pg.Client({ connectionString: dbR });
    await holder.connect();
    holder.on('error', () => undefined);
    await holder.query('SELECT pg_advisory_lock($1)', [AUDIT_CHAIN_LOCK]);
    // Appends wait on the chain head row (what a peer's append holds while its statement runs).
    await holder.query('BEGIN');
    await holder.query('SELECT seq FROM audit_head FOR UPDATE');
    const r = await startServer(`r-${mode}`, tokens.r, dbR, { KEY_POOL_SIZE: '0', AUDIT_RETENTION_DAYS: '1' });
    const from = answers.length;
    // Requests whose audit appends queue behind the lock (and the registration's event).
    const pending = Promise.all(Array.from({ length: 4 }, () => call(r, 'create', '/keypair')));
    // Each append waits at most DATABASE_LOCK_TIMEOUT_MS (5 s) before it spools, and a loaded
    // machine may be slow to start the generations: give the appends several chances to be seen.
    const waitDeadline = Date.now() + 30_000;
    let waiting = 0;
    while (Date.now() < waitDeadline) {
      const { rows } = await holder.query<{ n: string }>(
        `SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()`,
      );
      waiting = Number(rows[0]?.n ?? 0);
      if (waiting > 0) break;
      await sleep(50);
    }
    tt.ok(waiting > 0, `${waiting} server transactions wait on the chain lock`);
    await cluster.stop(mode);
    await holder.end().catch(() => undefined);
    await sleep(2_000);
    await cluster.start();
    await pending;
    const startedAt = Date.now();
    const rr = await recovery(r, undefined, startedAt);
    tt.comment(`retention, -m ${mode}: ${answers.length - from} answers; a create answers 200 again ${rr} ms after the restart`);
    tt.ok(rr < 30_000, 'it serves again within 30 s of the restart');
    alive(tt, r, 'the server');
    checkAnswers(tt, answers.slice(from), `retention, -m ${mode}`);
    await auditedInChain(tt, r);
    await verify(tt, r);
    r.proc.child.kill('SIGTERM');
    await r.proc.exit;
  });
}
