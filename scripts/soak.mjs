#!/usr/bin/env node
// Soak test (not part of CI): starts the built service on a throw-away SoftHSM token and a fresh
// Postgres database, drives mixed valid and invalid Hawk traffic for a configurable time, and
// reports per-class status counts, unexpected statuses (any 5xx), the server's RSS at start/end/max
// and audit completeness (request-log rows + refusals counted in auth.refusals == requests sent). Exits 1 on any problem.
//
//   node scripts/soak.mjs [--seconds N] [--concurrency N] [--dist DIR]
//   env: SOAK_SECONDS (600), SOAK_CONCURRENCY (8), SOAK_DIST (dist), DATABASE_URL (a Postgres
//        server on which a CREATEDB role may create the soak's own database), SOAK_KEEP=1 keeps it.
import { execFileSync, spawn } from 'node:child_process';
import { constants, createPublicKey, publicEncrypt, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import Hawk from '@hapi/hawk';
import pg from 'pg';

const { values: args } = parseArgs({
  options: { seconds: { type: 'string' }, concurrency: { type: 'string' }, dist: { type: 'string' } },
});
const SECONDS = Number(args.seconds ?? process.env.SOAK_SECONDS ?? 600);
const CONCURRENCY = Number(args.concurrency ?? process.env.SOAK_CONCURRENCY ?? 8);
const DIST = resolve(args.dist ?? process.env.SOAK_DIST ?? 'dist');
const SERVER_URL = process.env.DATABASE_URL;
if (!Number.isFinite(SECONDS) || SECONDS < 1) throw new Error('--seconds must be a positive number');
if (!SERVER_URL) throw new Error('DATABASE_URL must name a Postgres server (scripts/soak.sh sets it)');

const log = (...m) => process.stderr.write(`soak: ${m.join(' ')}\n`);

// ---------------------------------------------------------------------------------------------
// A private token, database and process
// ---------------------------------------------------------------------------------------------

const work = mkdtempSync(join(tmpdir(), 'strongroom-soak-'));
const secret = (name, bytes) => {
  const file = join(work, name);
  writeFileSync(file, randomBytes(bytes).toString('base64url'), { mode: 0o600 });
  return file;
};
const pinFile = secret('pin', 18);
const soPinFile = secret('so-pin', 18);
const adminFile = secret('admin-token', 32);
const conf = join(work, 'softhsm.conf');
execFileSync('mkdir', ['-p', join(work, 'tokens')]);
writeFileSync(conf, `directories.tokendir = ${join(work, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
const label = `soak-${randomBytes(3).toString('hex')}`;
// softhsm2-util takes PINs only as arguments: a throw-away local token.
execFileSync(
  'softhsm2-util',
  ['--init-token', '--free', '--label', label, '--so-pin', readFileSync(soPinFile, 'utf8'), '--pin', readFileSync(pinFile, 'utf8')],
  { env: { ...process.env, SOFTHSM2_CONF: conf }, stdio: 'ignore' },
);

const dbName = `soak_${process.pid}_${randomBytes(3).toString('hex')}`;
async function adminSql(sql) {
  const c = new pg.Client({ connectionString: SERVER_URL });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}
await adminSql(`CREATE DATABASE ${dbName}`);
const dbUrl = new URL(SERVER_URL);
dbUrl.pathname = `/${dbName}`;

const port = await new Promise((res) => {
  const s = createServer().listen(0, '127.0.0.1', () => {
    const p = s.address().port;
    s.close(() => res(p));
  });
});
const origin = `http://127.0.0.1:${port}`;
const base = `${origin}/key-management/v1`;
const serverLog = join(work, 'server.log');
// SOAK_HEAPSNAPSHOT_AT=60,600: the server writes a V8 heap snapshot at those seconds into
// SOAK_HEAPSNAPSHOT_DIR (default var/soak), to find what grows.
const snapshotAt = (process.env.SOAK_HEAPSNAPSHOT_AT ?? '')
  .split(',')
  .filter((v) => v.trim() !== '')
  .map(Number);
const snapshotDir = resolve(process.env.SOAK_HEAPSNAPSHOT_DIR ?? 'var/soak');
if (snapshotAt.length > 0) mkdirSync(snapshotDir, { recursive: true });
const server = spawn(process.execPath, [
  ...(snapshotAt.length > 0 ? ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${snapshotDir}`] : []),
  join(DIST, 'src/server.js'),
], {
  env: {
    PATH: process.env.PATH,
    SOFTHSM2_CONF: conf,
    PORT: String(port),
    HOST: '127.0.0.1',
    DATABASE_URL: dbUrl.toString(),
    PKCS11_TOKEN_LABEL: label,
    PKCS11_PIN_FILE: pinFile,
    ADMIN_TOKEN_FILE: adminFile,
    // Every client here is 127.0.0.1: the forwarded address tells the Genesys caller and the attackers apart.
    TRUST_PROXY: '127.0.0.1',
    LOG_LEVEL: process.env.SOAK_LOG_LEVEL ?? 'warn',
    ...(process.env.MALLOC_ARENA_MAX && { MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX }),
  },
  stdio: ['ignore', 'pipe', 'pipe'],
  ...(snapshotAt.length > 0 && { cwd: snapshotDir }),
});
const logChunks = [];
server.stdout.on('data', (d) => logChunks.push(d));
server.stderr.on('data', (d) => logChunks.push(d));
for (const at of snapshotAt) {
  setTimeout(() => server.kill('SIGUSR2'), at * 1000).unref();
}
let serverExit;
const exited = new Promise((res) => server.on('exit', (code, signal) => res((serverExit = { code, signal }))));

let cleaned = false;
async function cleanup() {
  if (cleaned) return;
  cleaned = true;
  if (serverExit === undefined) server.kill('SIGKILL');
  writeFileSync(serverLog, Buffer.concat(logChunks));
  if (process.env.SOAK_KEEP !== '1') {
    await adminSql(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
    rmSync(work, { recursive: true, force: true });
  } else {
    log(`kept database ${dbName} and ${work}`);
  }
}
process.on('SIGINT', () => cleanup().then(() => process.exit(130)));

function rssMb() {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${server.pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

const GENESYS_ADDRESS = '192.0.2.10';
const attackerAddress = () => `198.51.100.${1 + Math.floor(Math.random() * 64)}`;

function header(credential, method, url, opts = {}) {
  return Hawk.client.header(opts.signUrl ?? url, method, {
    credentials: credential,
    ...(opts.timestamp !== undefined && { timestamp: opts.timestamp }),
    ...(opts.payload !== undefined && { payload: opts.payload, contentType: 'application/json' }),
  }).header;
}

async function call(method, url, { authorization, body, from = GENESYS_ADDRESS, contentType = 'application/json' } = {}) {
  const headers = { 'x-forwarded-for': from, 'purecloud-user-id': 'soak' };
  if (authorization) headers.authorization = authorization;
  if (body !== undefined) headers['content-type'] = contentType;
  const res = await fetch(url, { method, headers, body });
  const text = await res.text();
  return { status: res.status, text, code: res.headers.get('strongroom-error-code'), retryAfter: res.headers.get('retry-after') };
}

// ---------------------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------------------

let loggedRequests = 0; // requests sent to routes that write a request-log entry
const classes = new Map(); // class → Map(status → count)
const unexpected = [];
let fiveHundreds = 0;
let transportErrors = 0;

function count(cls, status) {
  const m = classes.get(cls) ?? new Map();
  m.set(status, (m.get(status) ?? 0) + 1);
  classes.set(cls, m);
}

try {
  const started = Date.now();
  for (;;) {
    if (serverExit) throw new Error(`the service exited during start-up (${JSON.stringify(serverExit)}):\n${Buffer.concat(logChunks)}`);
    try {
      if ((await fetch(`${base}/health`)).status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() - started > 90_000) throw new Error('the service did not answer /health within 90 s');
    await sleep(200);
  }
  log(`service up on ${origin} (dist ${DIST}, token ${label}, database ${dbName}) in ${Date.now() - started} ms`);

  const adminToken = readFileSync(adminFile, 'utf8');
  // Two callers from the Genesys address, each keeping to one signing convention: Genesys Cloud
  // signs the path without the query (and no payload hash); a standard Hawk client signs path and
  // query. The service refuses a path-only MAC from a credential that has ever signed a query, so
  // one credential mixing both would rightly be refused.
  async function register(id) {
    const reg = await call('POST', `${base}/auth`, { authorization: `Bearer ${adminToken}`, body: JSON.stringify({ id }) });
    loggedRequests++;
    if (reg.status !== 200) throw new Error(`POST /auth answered ${reg.status}: ${reg.text}`);
    const { authKey } = JSON.parse(reg.text);
    return { id, key: authKey, algorithm: 'sha256' };
  }
  const genesys = await register('genesys-soak');
  const credential = await register('standard-soak');

  const keypairs = [];
  async function createKeypair() {
    const url = `${base}/keypair`;
    const res = await call('POST', url, { authorization: header(credential, 'POST', url) });
    loggedRequests++;
    if (res.status !== 200) throw new Error(`POST /keypair answered ${res.status}: ${res.text}`);
    const kp = JSON.parse(res.text);
    keypairs.push({ id: kp.id, key: createPublicKey({ key: Buffer.from(kp.publicKey, 'base64'), format: 'der', type: 'pkcs1' }) });
  }
  for (let i = 0; i < 3; i++) await createKeypair();
  const rssStart = rssMb();
  let rssMax = rssStart ?? 0;
  const rssTimer = setInterval(() => {
    const r = rssMb();
    if (r !== undefined && r > rssMax) rssMax = r;
  }, 1000);

  // -------------------------------------------------------------------------------------------
  // Traffic classes: [name, weight, run] — run returns the expected statuses and the response.
  // -------------------------------------------------------------------------------------------

  const pick = (a) => a[Math.floor(Math.random() * a.length)];
  const used = []; // recently used valid headers, for replays
  let lastCreate = Date.now();

  async function decrypt(padding) {
    const kp = pick(keypairs);
    const plain = randomBytes(32);
    const ciphertext =
      padding === 'pkcs1'
        ? publicEncrypt({ key: kp.key, padding: constants.RSA_PKCS1_PADDING }, plain)
        : publicEncrypt({ key: kp.key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, plain);
    const url = `${base}/decrypt${padding === 'pkcs1' ? '?decryptType=pkcs1' : ''}`;
    const body = JSON.stringify({ keypairId: kp.id, body: ciphertext.toString('base64') });
    const genesysStyle = Math.random() < 0.5;
    const authorization = genesysStyle
      ? header(genesys, 'POST', url, { signUrl: url.split('?')[0] })
      : header(credential, 'POST', url, { payload: body });
    const res = await call('POST', url, { authorization, body });
    if (res.status === 200 && Buffer.from(JSON.parse(res.text).body, 'base64').compare(plain) !== 0) {
      return { expected: [], res: { ...res, status: 'WRONG-PLAINTEXT' } };
    }
    // Only headers the service accepted make replays: a refused request's nonce was never spent.
    if (res.status === 200) {
      if (used.length < 200) used.push({ url, authorization, body });
      else used[Math.floor(Math.random() * used.length)] = { url, authorization, body };
    }
    return { expected: [200], res };
  }

  const get = async (path, expected = [200], method = 'GET') => {
    const url = `${base}${path}`;
    return { expected, res: await call(method, url, { authorization: header(credential, method, url) }) };
  };

  // A few accepted decrypts first, so the replay class always has headers to replay.
  for (let i = 0; i < 4; i++) {
    await decrypt(i % 2 === 0 ? 'oaep' : 'pkcs1');
    loggedRequests++;
  }
  if (used.length === 0) throw new Error('no decrypt was accepted before the traffic started');

  const CLASSES = [
    ['decrypt-oaep', 40, () => decrypt('oaep')],
    ['decrypt-pkcs1', 20, () => decrypt('pkcs1')],
    ['keypair-list', 4, () => get('/keypair')],
    ['keypair-get', 4, () => get(`/keypair/${pick(keypairs).id}`)],
    ['options-decrypt', 2, () => get('/decrypt', [200], 'OPTIONS')],
    ['request-log', 3, () => get('/request-log?maxEntries=10')],
    [
      'keypair-create',
      1,
      async () => {
        // Occasionally: RSA-3072 generation is slow; the worker sends at most one every 20 s.
        lastCreate = Date.now();
        const before = keypairs.length;
        await createKeypair();
        loggedRequests--; // counted below like every other request
        return { expected: [200], res: { status: keypairs.length > before ? 200 : 0 } };
      },
    ],
    [
      'bad-mac',
      8,
      async () => {
        const url = `${base}/decrypt`;
        const forged = { ...credential, key: randomBytes(32).toString('base64') };
        const body = JSON.stringify({ keypairId: pick(keypairs).id, body: 'AAAA' });
        return { expected: [401, 429], res: await call('POST', url, { authorization: header(forged, 'POST', url), body, from: attackerAddress() }) };
      },
    ],
    [
      'unknown-id',
      3,
      async () => {
        const url = `${base}/keypair`;
        const stranger = { id: `nobody-${randomBytes(3).toString('hex')}`, key: randomBytes(32).toString('base64'), algorithm: 'sha256' };
        return { expected: [401, 429], res: await call('GET', url, { authorization: header(stranger, 'GET', url), from: attackerAddress() }) };
      },
    ],
    [
      'replay',
      5,
      async () => {
        const r = pick(used);
        return { expected: [401, 429], res: await call('POST', r.url, { authorization: r.authorization, body: r.body, from: attackerAddress() }) };
      },
    ],
    [
      'stale',
      2,
      async () => {
        const url = `${base}/keypair`;
        const authorization = header(credential, 'GET', url, { timestamp: Math.floor(Date.now() / 1000) - 3600 });
        return { expected: [401, 429], res: await call('GET', url, { authorization, from: attackerAddress() }) };
      },
    ],
    [
      'junk-body',
      5,
      async () => {
        // Authenticated, so the limiter never applies: every answer is a 4xx of the contract.
        const url = `${base}/decrypt`;
        const body = pick([
          '{"keypairId":',
          JSON.stringify({ keypairId: pick(keypairs).id, body: randomBytes(100).toString('base64') }),
          JSON.stringify({ keypairId: 'not-a-uuid', body: 'AAAA' }),
          JSON.stringify({ keypairId: pick(keypairs).id, body: '@@@' }),
          JSON.stringify({ keypairId: pick(keypairs).id, body: randomBytes(384).toString('base64') }),
          JSON.stringify([1, 2, 3]),
          JSON.stringify({ keypairId: 12345678901234567890, body: 1e308 }),
        ]);
        return { expected: [400], res: await call('POST', url, { authorization: header(credential, 'POST', url), body }) };
      },
    ],
    [
      'bad-content-type',
      1,
      async () => {
        const url = `${base}/decrypt`;
        return { expected: [415], res: await call('POST', url, { authorization: header(credential, 'POST', url), body: 'x=1', contentType: 'text/plain' }) };
      },
    ],
  ];
  const total = CLASSES.reduce((s, c) => s + c[1], 0);
  const choose = () => {
    let r = Math.random() * total;
    for (const c of CLASSES) if ((r -= c[1]) < 0) return c;
    return CLASSES[0];
  };

  const t0 = Date.now();
  const deadline = t0 + SECONDS * 1000;
  let lastReport = t0;
  const memorySeries = []; // once a minute: seconds into the traffic, RSS and V8 heap in use
  async function worker() {
    while (Date.now() < deadline && !serverExit) {
      const [name, , run] = choose();
      if (name === 'keypair-create' && Date.now() - lastCreate < 20_000) continue;
      if (name === 'replay' && used.length === 0) continue;
      loggedRequests++;
      try {
        const { expected, res } = await run();
        count(name, res.status);
        if (typeof res.status === 'number' && res.status >= 500) fiveHundreds++;
        if (!expected.includes(res.status)) {
          if (unexpected.length < 20) unexpected.push({ class: name, status: res.status, code: res.code, body: String(res.text ?? '').slice(0, 200) });
          else unexpected.push(null);
        }
      } catch (err) {
        transportErrors++;
        count(name, 'transport-error');
        if (unexpected.length < 20) unexpected.push({ class: name, error: String(err?.cause?.code ?? err?.message ?? err) });
        else unexpected.push(null);
      }
      if (Date.now() - lastReport > 60_000) {
        lastReport = Date.now();
        const sent = [...classes.values()].reduce((s, m) => s + [...m.values()].reduce((a, b) => a + b, 0), 0);
        const rss = rssMb();
        loggedRequests++; // admin calls are request-logged too
        const heap = await fetch(`${origin}/admin/v1/runtime`, { headers: { authorization: `Bearer ${adminToken}` } })
          .then((r) => r.json())
          .then((j) => j.heapUsedBytes / 2 ** 20, () => undefined);
        memorySeries.push({ s: Math.round((Date.now() - t0) / 1000), rssMb: rss && Math.round(rss), heapMb: heap && Math.round(heap) });
        log(`${Math.round((deadline - Date.now()) / 1000)} s left: ${sent} requests, RSS ${rss?.toFixed(1)} MB, heap ${heap?.toFixed(1)} MB`);
      }
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const elapsed = (Date.now() - t0) / 1000;
  const rssEnd = rssMb();
  if (rssEnd !== undefined && rssEnd > rssMax) rssMax = rssEnd;
  clearInterval(rssTimer);

  // Graceful stop: requests in flight finish and their audit entries are written before exit.
  server.kill('SIGTERM');
  const exit = await Promise.race([exited, sleep(60_000).then(() => ({ code: 'timeout' }))]);

  const db = new pg.Client({ connectionString: dbUrl.toString() });
  await db.connect();
  const cols = (await db.query(`SELECT column_name FROM information_schema.columns WHERE table_name = 'request_log'`)).rows.map((r) => r.column_name);
  const onlyRequests = cols.includes('event') ? 'WHERE event IS NULL' : '';
  const rows = Number((await db.query(`SELECT count(*) AS n FROM request_log ${onlyRequests}`)).rows[0].n);
  const byStatus = (await db.query(`SELECT status_code, count(*) AS n FROM request_log ${onlyRequests} GROUP BY 1 ORDER BY 1`)).rows;
  // Refusals before authentication beyond the sampling budget are counted in auth.refusals events.
  const counted = cols.includes('event')
    ? Number((await db.query(`SELECT COALESCE(sum((detail->>'counted')::bigint), 0) AS n FROM request_log WHERE event = 'auth.refusals'`)).rows[0].n)
    : 0;
  await db.end();

  const sent = [...classes.values()].reduce((s, m) => s + [...m.values()].reduce((a, b) => a + b, 0), 0);
  const report = {
    seconds: Math.round(elapsed),
    concurrency: CONCURRENCY,
    requests: sent,
    perSecond: Math.round(sent / elapsed),
    classes: Object.fromEntries([...classes].sort().map(([k, m]) => [k, Object.fromEntries([...m].sort())])),
    fiveHundreds,
    transportErrors,
    unexpected: unexpected.length,
    unexpectedSamples: unexpected.filter(Boolean),
    rssMb: {
      start: rssStart && Number(rssStart.toFixed(1)),
      end: rssEnd && Number(rssEnd.toFixed(1)),
      max: Number(rssMax.toFixed(1)),
    },
    memorySeries,
    shutdown: exit,
    audit: { requestsSent: loggedRequests, requestLogRows: rows, refusalsCounted: counted, missing: loggedRequests - rows - counted, byStatus: Object.fromEntries(byStatus.map((r) => [r.status_code, Number(r.n)])) },
  };
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  const ok = fiveHundreds === 0 && unexpected.length === 0 && transportErrors === 0 && rows + counted === loggedRequests && exit.code === 0;
  log(ok ? 'PASS' : 'FAIL', `— server log: ${serverLog}${process.env.SOAK_KEEP === '1' ? '' : ' (removed; SOAK_KEEP=1 keeps it)'}`);
  if (!ok && process.env.SOAK_KEEP !== '1') process.stderr.write(Buffer.concat(logChunks).toString().split('\n').slice(-40).join('\n'));
  await cleanup();
  process.exit(ok ? 0 : 1);
} catch (err) {
  log(`error: ${err?.stack ?? err}`);
  await cleanup();
  process.exit(1);
}
