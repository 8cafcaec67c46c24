#!/usr/bin/env node
// `npm run bench [-- --quick] [-- --out file.json] [-- --build dir]`
//
// Benchmarks the BUILT service as a user would: a real listening server process
// (<build>/src/server.js) on a fresh SoftHSM token and a fresh Postgres database, a Hawk
// credential registered over HTTP, and load from a separate process (scripts/bench-load.mjs)
// that signs every request with @hapi/hawk. Every comparison runs in the same run, in
// alternating rounds, so its ratio holds on a noisy machine. Prints one table and writes the
// same figures as JSON (the path is printed). `--quick` is a smoke run of a few seconds.
import { execFileSync, fork, spawn, spawnSync } from 'node:child_process';
import { createPublicKey, generateKeyPairSync, publicEncrypt, randomBytes, randomUUID, constants } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const option = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const QUICK = flag('--quick');
const SESSIONS = Number(process.env.PKCS11_SESSIONS ?? 4);
const THREADS = Number(process.env.UV_THREADPOOL_SIZE ?? SESSIONS + 4);

// libuv sizes its thread pool once, and loading this ES module already started it: the raw
// token loop needs as many threads as the server gets, so run again with the size set.
if (!process.env.UV_THREADPOOL_SIZE) {
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), ...args], {
    stdio: 'inherit',
    env: { ...process.env, UV_THREADPOOL_SIZE: String(THREADS) },
  });
  process.exit(r.status ?? 1);
}

const BUILD = resolve(REPO, option('--build') ?? 'dist');
if (!existsSync(join(BUILD, 'src', 'server.js'))) {
  if (option('--build')) throw new Error(`no build at ${BUILD}`);
  process.stderr.write('bench: dist/ is missing, building it (npm run build)\n');
  execFileSync('npm', ['run', 'build', '--silent'], { cwd: REPO, stdio: 'inherit' });
}
const load = (rel) => import(pathToFileURL(join(BUILD, rel)).href);

const P = QUICK
  ? { rounds: 1, seconds: 0.6, rawSeconds: 0.5, sslSeconds: 1, keys: 2, manyKeys: 24, materials: 2, pool: 1, logRows: 5_000, gets: 8 }
  : { rounds: 3, seconds: 5, rawSeconds: 3, sslSeconds: 2, keys: 10, manyKeys: 10_000, materials: 4, pool: 6, logRows: 1_000_000, gets: 60 };
// Overrides for exploring: --rounds N --seconds S --many-keys N --log-rows N --pool N
for (const [flagName, key] of [['--rounds', 'rounds'], ['--seconds', 'seconds'], ['--many-keys', 'manyKeys'], ['--log-rows', 'logRows'], ['--pool', 'pool']]) {
  const v = option(flagName);
  if (v !== undefined) P[key] = Number(v);
}
P.rawSeconds = Math.min(P.rawSeconds, P.seconds);
const CORES = availableParallelism();
const CONCURRENCY = [1, 8, 32];
const LKM = '/key-management/v1';

const log = (msg) => process.stderr.write(`bench: ${(performance.now() / 1000).toFixed(1)} s: ${msg}\n`);
const median = (xs) => {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];

// ---------------------------------------------------------------- set-up: tokens, databases
const work = mkdtempSync(join(tmpdir(), 'strongroom-bench-'));
/**
 * One SoftHSM directory per token: SoftHSM loads every token of its directory at C_Initialize,
 * so the 10-key server must not carry the 10,000-key token in its memory (or its RSS figure).
 */
function softhsmConf(name) {
  const dir = join(work, `tokens-${name}`);
  mkdirSync(dir);
  const file = join(work, `softhsm-${name}.conf`);
  writeFileSync(file, `directories.tokendir = ${dir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  return file;
}
const confA = softhsmConf('a');
const confB = softhsmConf('many');
process.env.SOFTHSM2_CONF = confA;

const { findSoftHsmModule } = await load('hsm/index.js');
const MODULE = process.env.PKCS11_MODULE ?? findSoftHsmModule();
if (!MODULE) throw new Error('SoftHSM2 is not installed');

function makeToken(label, conf) {
  const pin = randomBytes(8).toString('hex');
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', randomBytes(8).toString('hex'), '--pin', pin], {
    stdio: 'pipe',
    env: { ...process.env, SOFTHSM2_CONF: conf },
  });
  return { label, pin, conf };
}
// Every token before C_Initialize: SoftHSM scans them then.
const tokenA = makeToken('bench-a', confA);
const tokenB = makeToken('bench-many', confB);

const pg = (await import('pg')).default;
const SERVER_URL = process.env.DATABASE_URL ?? 'postgres://strongroom:strongroom@127.0.0.1:5432/postgres';
async function admin(sql) {
  const c = new pg.Client({ connectionString: SERVER_URL });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}
const dbNames = [];
async function makeDatabase() {
  const name = `sr_bench_${process.pid}_${randomBytes(3).toString('hex')}`;
  await admin(`CREATE DATABASE ${name}`);
  dbNames.push(name);
  const url = new URL(SERVER_URL);
  url.pathname = `/${name}`;
  return url.toString();
}

const servers = [];
let loader;
async function cleanup() {
  for (const s of servers) if (s.child.exitCode === null) s.child.kill('SIGTERM');
  await Promise.all(servers.map((s) => (s.child.exitCode === null ? new Promise((r) => s.child.once('exit', r)) : undefined)));
  if (loader?.connected) loader.send('exit');
  for (const name of dbNames) await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => cleanup().finally(() => process.exit(130)));
// Never leave a server behind, whatever ends this process.
process.on('exit', () => {
  for (const s of servers) if (s.child.exitCode === null) s.child.kill('SIGKILL');
});

// ---------------------------------------------------------------- raw token (in process)
const pkcs11js = (await import('pkcs11js')).default;
const p11 = new pkcs11js.PKCS11();
p11.load(MODULE);
p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
function slotOf(label) {
  for (const slot of p11.C_GetSlotList(true)) if (p11.C_GetTokenInfo(slot).label.trim() === label) return slot;
  throw new Error(`no token ${label}`);
}
function openSessions(token, n) {
  const slot = slotOf(token.label);
  const sessions = Array.from({ length: n }, () => p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION));
  p11.C_Login(sessions[0], pkcs11js.CKU_USER, token.pin);
  return sessions;
}
function findPrivate(session, keyId) {
  p11.C_FindObjectsInit(session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
    { type: pkcs11js.CKA_ID, value: Buffer.from(keyId.replace(/-/g, ''), 'hex') },
  ]);
  const [h] = p11.C_FindObjects(session, 1);
  p11.C_FindObjectsFinal(session);
  return h;
}
const OAEP = {
  mechanism: pkcs11js.CKM_RSA_PKCS_OAEP,
  parameter: { type: pkcs11js.CK_PARAMS_RSA_OAEP, hashAlg: pkcs11js.CKM_SHA_1, mgf: pkcs11js.CKG_MGF1_SHA1, source: 1 },
};
/** OAEP-SHA1 decrypts on `sessions.length` sessions at once through async calls, like the server. */
async function rawRound(sessions, handles, items, seconds) {
  let ops = 0;
  let errors = 0;
  const deadline = performance.now() + seconds * 1000;
  const before = cpuSnapshot();
  const t0 = performance.now();
  await Promise.all(
    sessions.map(async (s, w) => {
      for (let i = w; performance.now() < deadline; i += sessions.length) {
        const item = items[i % items.length];
        try {
          p11.C_DecryptInit(s, OAEP, handles.get(item.keypairId));
          await p11.C_DecryptAsync(s, Buffer.from(item.body, 'base64'), Buffer.alloc(384));
          ops += 1;
        } catch {
          errors += 1;
        }
      }
    }),
  );
  return { opsPerSec: ops / ((performance.now() - t0) / 1000), errors, cpuMsPerOp: cpuPerOp(before, cpuSnapshot(), ops) };
}

// ---------------------------------------------------------------- machine limit
function opensslRound() {
  const out = execFileSync('openssl', ['speed', '-multi', String(CORES), '-seconds', String(P.sslSeconds), 'rsa3072'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // "rsa 3072 bits 0.002020s 0.000072s    495.0  13931.0": sign/s is the private-key operation.
  const m = /^rsa\s+3072 bits\s+\S+\s+\S+\s+([\d.]+)/m.exec(out);
  if (!m) throw new Error(`cannot parse openssl speed output:\n${out}`);
  return Number(m[1]);
}

// ---------------------------------------------------------------- server processes
function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on('error', rej);
  });
}
const ADMIN_TOKEN = randomBytes(32).toString('hex');

async function startServer(name, token, databaseUrl, extraEnv = {}) {
  const port = await freePort();
  const child = spawn(process.execPath, [...(process.env.BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : []), join(BUILD, 'src', 'server.js')], {
    cwd: REPO,
    stdio: ['ignore', 'ignore', 'pipe'],
    env: {
      ...process.env,
      PORT: String(port),
      HOST: '127.0.0.1',
      DATABASE_URL: databaseUrl,
      PKCS11_MODULE: MODULE,
      PKCS11_TOKEN_LABEL: token.label,
      PKCS11_PIN: token.pin,
      PKCS11_SESSIONS: String(SESSIONS),
      UV_THREADPOOL_SIZE: String(THREADS),
      ADMIN_TOKEN,
      LOG_LEVEL: 'warn',
      KEY_POOL_SIZE: String(P.pool),
      DATA_DIR: join(work, `data-${name}`),
      SOFTHSM2_CONF: token.conf,
      ...extraEnv,
    },
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const server = { name, child, port, base: `http://127.0.0.1:${port}`, db: databaseUrl };
  servers.push(server);
  const until = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server ${name} exited (${child.exitCode}): ${stderr}`);
    try {
      const r = await fetch(`${server.base}${LKM}/health`);
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > until) throw new Error(`server ${name} did not start: ${stderr}`);
    await sleep(100);
  }
  const reg = await fetch(`${server.base}${LKM}/auth`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ id: `bench-${name}` }),
  });
  if (!reg.ok) throw new Error(`POST /auth on ${name}: ${reg.status} ${await reg.text()}`);
  const cred = await reg.json();
  server.credentials = { id: cred.id, key: cred.authKey, algorithm: cred.algorithm };
  return server;
}

const Hawk = (await import('@hapi/hawk')).default;
async function hawkFetch(server, method, path) {
  const url = `${server.base}${path}`;
  const { header } = Hawk.client.header(url, method, { credentials: server.credentials });
  const r = await fetch(url, { method, headers: { authorization: header } });
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}
async function runtime(server, reset = false) {
  const r = await fetch(`${server.base}/admin/v1/runtime${reset ? '/reset' : ''}`, {
    method: reset ? 'POST' : 'GET',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  if (!r.ok) throw new Error(`runtime metrics: ${r.status} ${await r.text()}`);
  return r.json();
}
// ---------------------------------------------------------------- CPU accounting (Linux /proc)
const TICK_MS = 1000 / Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
/** user + system CPU of one process (all its threads), in ms. */
function procCpuMs(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * TICK_MS;
  } catch {
    return 0; // gone
  }
}
/** CPU of every Postgres process on this machine (backends, WAL writer, ...), in ms. */
function postgresCpuMs() {
  let total = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() === 'postgres') total += procCpuMs(entry);
    } catch {
      // exited meanwhile
    }
  }
  return total;
}
/** Busy CPU of the whole machine (all cores, excluding idle and iowait), in ms. */
function machineBusyMs() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return (total - f[3] - f[4]) * TICK_MS;
}
/** Snapshot of where CPU went; `cpuPerOp(before, after, ops)` turns two into ms per operation. */
function cpuSnapshot(serverPid) {
  return { server: serverPid ? procCpuMs(serverPid) : 0, loader: procCpuMs(loader.pid), postgres: postgresCpuMs(), self: procCpuMs(process.pid), machine: machineBusyMs() };
}
function cpuPerOp(before, after, ops) {
  return Object.fromEntries(Object.keys(before).map((k) => [k, ops > 0 ? (after[k] - before[k]) / ops : NaN]));
}

function rssMb(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

// ---------------------------------------------------------------- load generator process
loader = fork(join(REPO, 'scripts', 'bench-load.mjs'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
let jobId = 0;
function drive(server, job) {
  const id = ++jobId;
  return new Promise((res, rej) => {
    const onMessage = (msg) => {
      if (msg.id !== id) return;
      loader.off('message', onMessage);
      if (msg.error) rej(new Error(msg.error));
      else res(msg.result);
    };
    loader.on('message', onMessage);
    loader.send({ id, job: { base: server.base, credentials: server.credentials, ...job } });
  });
}
/** Drive `job` while sampling the server's RSS; returns the load result plus peak RSS. */
async function driveSampled(server, job) {
  let peak = 0;
  const timer = setInterval(() => (peak = Math.max(peak, rssMb(server.child.pid))), 100);
  try {
    const before = cpuSnapshot(server.child.pid);
    const r = await drive(server, job);
    const cpuMsPerOp = cpuPerOp(before, cpuSnapshot(server.child.pid), r.ops);
    return { ...r, rssPeakMb: Math.max(peak, rssMb(server.child.pid)), cpuMsPerOp };
  } finally {
    clearInterval(timer);
  }
}

// ---------------------------------------------------------------- keys
function ciphertextItems(keys, perKey) {
  const items = [];
  for (const k of keys) {
    const pub = createPublicKey({ key: Buffer.from(k.publicKey, 'base64'), format: 'der', type: 'pkcs1' });
    for (let i = 0; i < perKey; i += 1) {
      const message = randomBytes(32);
      const body = publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, message);
      items.push({ keypairId: k.id, body: body.toString('base64'), expected: message.toString('base64') });
    }
  }
  for (let i = items.length - 1; i > 0; i -= 1) {
    const j = Math.floor(Math.random() * (i + 1));
    [items[i], items[j]] = [items[j], items[i]];
  }
  return items;
}

async function poolCount(server) {
  const c = new pg.Client({ connectionString: server.db });
  await c.connect();
  try {
    const { rows } = await c.query(`SELECT count(*)::int AS n FROM keypair WHERE state = 'pool'`);
    return rows[0].n;
  } catch {
    return undefined; // no key pool in this build
  } finally {
    await c.end();
  }
}
async function waitPoolFull(server, timeoutMs = 120_000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const n = await poolCount(server);
    if (n === undefined || n >= P.pool) return n;
    if (Date.now() > until) throw new Error(`key pool of ${server.name} did not fill (${n}/${P.pool})`);
    await sleep(200);
  }
}

/** Fill token B with `count` keys in a child process (scripts/bench-fill.mjs: its own SoftHSM directory). */
async function fillManyKeys(token, databaseUrl, count, materials) {
  const child = spawn(process.execPath, [join(REPO, 'scripts', 'bench-fill.mjs')], {
    cwd: REPO,
    stdio: ['pipe', 'pipe', 'inherit'],
    env: { ...process.env, SOFTHSM2_CONF: token.conf },
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stdin.end(JSON.stringify({ build: BUILD, module: MODULE, label: token.label, pin: token.pin, databaseUrl, count, materials }));
  const code = await new Promise((res) => child.once('exit', res));
  if (code !== 0) throw new Error(`filling the many-key token failed (exit ${code})`);
  const { keys, publicKeys } = JSON.parse(out);
  return { keys, mats: publicKeys.map((p) => ({ publicKey: Buffer.from(p, 'base64') })) };
}

// ---------------------------------------------------------------- the run
const results = { quick: QUICK, machine: { cores: CORES, node: process.version }, settings: { sessions: SESSIONS, uvThreadpoolSize: THREADS, keyPoolSize: P.pool, roundSeconds: P.seconds, rounds: P.rounds } };
try {
  log(`filling a token with ${P.manyKeys} keys (${P.materials} Node-generated RSA-3072 pairs imported under distinct ids)`);
  const dbA = await makeDatabase();
  const dbB = await makeDatabase();
  const t0 = performance.now();
  const many = await fillManyKeys(tokenB, dbB, P.manyKeys, P.materials);
  results.manyKeysFillSeconds = (performance.now() - t0) / 1000;

  log('starting the servers');
  const A = await startServer('a', tokenA, dbA);
  const B = await startServer('many', tokenB, dbB);
  await waitPoolFull(A);

  log(`creating ${P.keys} keypairs through POST /keypair`);
  const keysA = [];
  for (let i = 0; i < P.keys; i += 1) keysA.push(await hawkFetch(A, 'POST', `${LKM}/keypair`));
  const itemsA = ciphertextItems(keysA, QUICK ? 4 : 30);
  // Ciphertexts for the many-key token: a random key per request among all of them.
  const perMat = many.mats.map((m) => ciphertextItems([{ id: 'x', publicKey: m.publicKey.toString('base64') }], 16));
  const itemsB = Array.from({ length: Math.min(20_000, Math.max(many.keys.length, 200)) }, () => {
    const k = many.keys[Math.floor(Math.random() * many.keys.length)];
    const c = perMat[k.material][Math.floor(Math.random() * 16)];
    return { ...c, keypairId: k.id };
  });

  const rawSessions = openSessions(tokenA, SESSIONS);
  const handles = new Map(keysA.map((k) => [k.id, findPrivate(rawSessions[0], k.id)]));

  await waitPoolFull(A);
  await sleep(QUICK ? 200 : 2000);
  results.rssIdleMb = rssMb(A.child.pid);
  // Warm up both servers (JIT, connections, caches): the rounds measure the steady state.
  await drive(A, { kind: 'decrypt', path: `${LKM}/decrypt`, items: itemsA, concurrency: 8, durationMs: (QUICK ? 0.3 : 3) * 1000 });
  await drive(B, { kind: 'decrypt', path: `${LKM}/decrypt`, items: itemsB, concurrency: 8, durationMs: (QUICK ? 0.3 : 3) * 1000 });

  const decrypt = (concurrency, items, seconds = P.seconds) => ({ kind: 'decrypt', path: `${LKM}/decrypt`, items, concurrency, durationMs: seconds * 1000 });
  const rounds = [];
  for (let r = 0; r < P.rounds; r += 1) {
    log(`round ${r + 1}/${P.rounds}`);
    // The previous round emptied the pool: every round starts with it full (no refill under way).
    await waitPoolFull(A);
    const round = { service: {} };
    round.raw = await rawRound(rawSessions, handles, itemsA, P.rawSeconds);
    round.machine = opensslRound();
    for (const c of CONCURRENCY) {
      if (c === 32) await runtime(A, true);
      round.service[c] = await driveSampled(A, decrypt(c, itemsA));
      if (c === 32) round.eventLoop = (await runtime(A)).eventLoopDelayMs;
    }
    // 10 keys vs many keys, back to back at concurrency 8.
    round.tenKeys = await drive(A, decrypt(8, itemsA));
    round.manyKeys = await drive(B, decrypt(8, itemsB));
    // Decrypt while the key pool refills vs while it is full.
    await waitPoolFull(A);
    round.notRefilling = await drive(A, decrypt(8, itemsA, P.seconds / 2));
    for (let i = 0; i < P.pool; i += 1) await hawkFetch(A, 'POST', `${LKM}/keypair`);
    round.refilling = await drive(A, decrypt(8, itemsA, P.seconds / 2));
    round.poolAfterRefillRound = await poolCount(A);
    rounds.push(round);
  }
  results.rounds = rounds;

  log('POST /keypair with the pool warm');
  const keypairMs = [];
  for (let k = 0; k < P.rounds; k += 1) {
    await waitPoolFull(A);
    for (let i = 0; i < P.pool - 1 || i < 1; i += 1) {
      const t = performance.now();
      await hawkFetch(A, 'POST', `${LKM}/keypair`);
      keypairMs.push(performance.now() - t);
    }
  }
  keypairMs.sort((a, b) => a - b);

  log(`GET /request-log over ${P.logRows} rows`);
  {
    const c = new pg.Client({ connectionString: A.db });
    await c.connect();
    // Only the columns the first schema has: later migrations' columns stay NULL (event NULL = a request).
    await c.query(
      `INSERT INTO request_log (user_id, request_method, request_uri, logged_at, hawk_id, status_code)
       SELECT 'bench-user', 'POST', '${LKM}/decrypt', now() - interval '1 hour' - g * interval '10 milliseconds', $1, 200
       FROM generate_series(1, $2::int) AS g`,
      [A.credentials.id, P.logRows],
    );
    await c.query('ANALYZE request_log');
    const { rows } = await c.query('SELECT count(*)::int AS n FROM request_log');
    results.requestLogRows = rows[0].n;
    await c.end();
  }
  const span = P.logRows * 10; // ms covered by the filled rows
  const mid = Date.now() - 3_600_000 - span / 2;
  const windowQuery = `earliestTime=${new Date(mid - span / 8).toISOString()}&latestTime=${new Date(mid + span / 8).toISOString()}`;
  const getDefault = [];
  const getWindow = [];
  for (let i = 0; i < P.gets; i += 1) {
    getDefault.push((await drive(A, { kind: 'get', path: `${LKM}/request-log`, concurrency: 1, count: 1 })).p50Ms);
    getWindow.push((await drive(A, { kind: 'get', path: `${LKM}/request-log?${windowQuery}`, concurrency: 1, count: 1 })).p50Ms);
  }

  // ------------------------------------------------------------ figures
  const svc = (c, f) => median(rounds.map((r) => r.service[c][f]));
  const ratio = (f) => median(rounds.map(f));
  const errors = rounds.reduce(
    (n, r) => n + r.raw.errors + Object.values(r.service).reduce((m, s) => m + s.errors, 0) + r.tenKeys.errors + r.manyKeys.errors + r.notRefilling.errors + r.refilling.errors,
    0,
  );
  results.figures = {
    rawTokenOpsPerSec: median(rounds.map((r) => r.raw.opsPerSec)),
    machineOpsPerSec: median(rounds.map((r) => r.machine)),
    service: Object.fromEntries(
      CONCURRENCY.map((c) => [`c${c}`, { opsPerSec: svc(c, 'opsPerSec'), p50Ms: svc(c, 'p50Ms'), p99Ms: svc(c, 'p99Ms'), errors: rounds.reduce((n, r) => n + r.service[c].errors, 0) }]),
    ),
    ratioServiceToRaw: Object.fromEntries(CONCURRENCY.map((c) => [`c${c}`, ratio((r) => r.service[c].opsPerSec / r.raw.opsPerSec)])),
    ratioServiceToMachine: Object.fromEntries(CONCURRENCY.map((c) => [`c${c}`, ratio((r) => r.service[c].opsPerSec / r.machine)])),
    p99c8OverP50c1: svc(8, 'p99Ms') / svc(1, 'p50Ms'),
    keypairPostP50Ms: pct(keypairMs, 50),
    keypairPostP99Ms: pct(keypairMs, 99),
    decryptRefillingOpsPerSec: median(rounds.map((r) => r.refilling.opsPerSec)),
    decryptNotRefillingOpsPerSec: median(rounds.map((r) => r.notRefilling.opsPerSec)),
    ratioRefillingToNot: ratio((r) => r.refilling.opsPerSec / r.notRefilling.opsPerSec),
    decryptTenKeysOpsPerSec: median(rounds.map((r) => r.tenKeys.opsPerSec)),
    decryptManyKeysOpsPerSec: median(rounds.map((r) => r.manyKeys.opsPerSec)),
    ratioManyToTenKeys: ratio((r) => r.manyKeys.opsPerSec / r.tenKeys.opsPerSec),
    manyKeys: P.manyKeys,
    requestLogRows: results.requestLogRows,
    requestLogGetP50Ms: median(getDefault),
    requestLogWindowGetP50Ms: median(getWindow),
    rssIdleMb: results.rssIdleMb,
    rssLoadMb: Math.max(...rounds.flatMap((r) => Object.values(r.service).map((s) => s.rssPeakMb))),
    eventLoopDelayP99Ms: Math.max(...rounds.map((r) => r.eventLoop.p99)),
    // Where each decrypt's CPU goes (ms per operation, median over rounds): the profile behind the ratios.
    cpuMsPerDecrypt: {
      raw: { process: median(rounds.map((r) => r.raw.cpuMsPerOp.self)), machine: median(rounds.map((r) => r.raw.cpuMsPerOp.machine)) },
      ...Object.fromEntries(CONCURRENCY.map((c) => [`c${c}`, Object.fromEntries(['server', 'postgres', 'loader', 'machine'].map((k) => [k, median(rounds.map((r) => r.service[c].cpuMsPerOp[k]))]))])),
    },
    errors,
  };
  results.errorSample = rounds.flatMap((r) => [...Object.values(r.service), r.tenKeys, r.manyKeys, r.refilling, r.notRefilling]).find((s) => s.errorSample)?.errorSample;
} finally {
  await cleanup();
}

// ---------------------------------------------------------------- report
const f = results.figures;
const n = (x, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
const x = (v) => `${n(v, 2)}×`;
const rows = [
  ['raw token: OAEP-SHA1 decrypt, pkcs11js async', `${SESSIONS} sessions`, `${n(f.rawTokenOpsPerSec)} ops/s`, ''],
  ['machine: openssl speed rsa3072 private ops', `-multi ${CORES}`, `${n(f.machineOpsPerSec)} ops/s`, ''],
  ...CONCURRENCY.map((c) => [
    'service: POST /decrypt (Hawk, end to end)',
    `c=${c}`,
    `${n(f.service[`c${c}`].opsPerSec)} ops/s`,
    `p50 ${n(f.service[`c${c}`].p50Ms, 1)} ms, p99 ${n(f.service[`c${c}`].p99Ms, 1)} ms, ${f.service[`c${c}`].errors} errors; ${x(f.ratioServiceToRaw[`c${c}`])} raw, ${x(f.ratioServiceToMachine[`c${c}`])} machine`,
  ]),
  ['p99 at c=8 / p50 at c=1', '', x(f.p99c8OverP50c1), 'target ≤ 4×'],
  ['POST /keypair, pool warm', 'c=1', `p50 ${n(f.keypairPostP50Ms, 1)} ms`, `p99 ${n(f.keypairPostP99Ms, 1)} ms`],
  ['decrypt while the pool refills / not', 'c=8', `${n(f.decryptRefillingOpsPerSec)} / ${n(f.decryptNotRefillingOpsPerSec)} ops/s`, x(f.ratioRefillingToNot)],
  [`decrypt, ${f.manyKeys} keys / ${P.keys} keys in the token`, 'c=8', `${n(f.decryptManyKeysOpsPerSec)} / ${n(f.decryptTenKeysOpsPerSec)} ops/s`, `${x(f.ratioManyToTenKeys)} (${P.materials} Node-generated pairs imported under distinct ids by C_CreateObject, service templates)`],
  [`GET /request-log over ${f.requestLogRows} rows`, 'default', `p50 ${n(f.requestLogGetP50Ms, 1)} ms`, ''],
  [`GET /request-log over ${f.requestLogRows} rows`, 'time window', `p50 ${n(f.requestLogWindowGetP50Ms, 1)} ms`, ''],
  ['server RSS', 'idle / load', `${n(f.rssIdleMb)} / ${n(f.rssLoadMb)} MB`, ''],
  ['event-loop delay p99 under load', 'c=32', `${n(f.eventLoopDelayP99Ms, 1)} ms`, ''],
  ['CPU per decrypt: raw token loop', `${SESSIONS} sessions`, `${n(f.cpuMsPerDecrypt.raw.process, 2)} ms`, `machine ${n(f.cpuMsPerDecrypt.raw.machine, 2)} ms`],
  ...CONCURRENCY.map((c) => {
    const u = f.cpuMsPerDecrypt[`c${c}`];
    return ['CPU per decrypt: service', `c=${c}`, `${n(u.machine, 2)} ms`, `server ${n(u.server, 2)}, postgres ${n(u.postgres, 2)}, load generator ${n(u.loader, 2)} ms`];
  }),
];
const widths = [0, 1, 2].map((i) => Math.max(...rows.map((r) => r[i].length)));
const line = (r) => `| ${r.map((c, i) => (i < 3 ? c.padEnd(widths[i]) : c)).join(' | ')} |`;
process.stdout.write(`\nstrongroom bench${QUICK ? ' (quick)' : ''}: ${CORES} cores, PKCS11_SESSIONS=${SESSIONS}, UV_THREADPOOL_SIZE=${THREADS}, KEY_POOL_SIZE=${P.pool}, ${P.rounds} alternating round(s), ${Math.round(performance.now() / 1000)} s\n\n`);
process.stdout.write(`${line(['measure', 'at', 'result', 'detail'])}\n|${['', '', '', ''].map((_, i) => '-'.repeat((widths[i] ?? 6) + 2)).join('|')}|\n`);
for (const r of rows) process.stdout.write(`${line(r)}\n`);
const out = resolve(option('--out') ?? join(REPO, 'var', 'bench', `bench-${new Date().toISOString().replace(/[:.]/g, '-')}.json`));
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
process.stdout.write(`\nfigures: ${out}\n`);
if (f.errors > 0) {
  process.stderr.write(`bench: ${f.errors} errors (first: ${results.errorSample})\n`);
  process.exitCode = 1;
}
