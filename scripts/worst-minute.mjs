#!/usr/bin/env node
// The worst minute, tried from outside as an operator would (not part of CI: it stops a Postgres
// server). Two instances of the built service (`dist/src/launch.cjs`, what `npm start` runs) with the
// default configuration (key pool on) share one database and one SoftHSM token directory. Under
// decrypt load, keypairs are created alternately at A and B and each must decrypt at the other within
// 5 s; meanwhile the Postgres server is stopped (`-m fast`, then `-m immediate` on even runs), left down
// for PG_DOWN_SECONDS (20), and started again.
//
// Pass: neither process exits; every answer is 200, or 503 with Retry-After and a catalogue code (429
// never: one honest caller); every keypair decrypts at both instances at the end; `strongroom audit
// verify` passes. Prints one JSON report per run and exits 1 on the first failed run.
//
//   node scripts/worst-minute.mjs [--runs 5] [--pg system|private]
//   --pg system  (default) the server of DATABASE_URL, stopped with `pg_ctlcluster <ver> main stop`
//   --pg private a throw-away cluster (initdb as the postgres user), stopped with `pg_ctl stop`
import { execFileSync, spawn } from 'node:child_process';
import { constants, createPublicKey, publicEncrypt, randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import Hawk from '@hapi/hawk';
import pg from 'pg';

const { values: args } = parseArgs({
  options: { runs: { type: 'string' }, pg: { type: 'string' }, dist: { type: 'string' } },
});
const RUNS = Number(args.runs ?? 5);
const PG_MODE = args.pg ?? 'system';
const DIST = resolve(args.dist ?? 'dist');
const PG_DOWN_MS = Number(process.env.PG_DOWN_SECONDS ?? 20) * 1000;
const PG_BIN = `/usr/lib/postgresql/${pgVersion()}/bin`;
const log = (...m) => process.stderr.write(`worst-minute: ${m.join(' ')}\n`);

function pgVersion() {
  return readdirSync('/etc/postgresql').sort((a, b) => Number(a) - Number(b)).at(-1);
}

async function freePort() {
  return new Promise((res) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => res(p));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The Postgres server and how it is stopped
// ---------------------------------------------------------------------------------------------

async function openServer(work) {
  if (PG_MODE === 'system') {
    const url = process.env.DATABASE_URL;
    if (!url) throw new Error('DATABASE_URL must name the local Postgres server (a role that may CREATE DATABASE)');
    const version = pgVersion();
    const ctl = (...a) => execFileSync('pg_ctlcluster', ['--skip-systemctl-redirect', version, 'main', ...a], { stdio: 'pipe' });
    return { url, stop: (mode) => ctl('stop', '-m', mode), start: () => ctl('start'), close() {} };
  }
  if (PG_MODE !== 'private') throw new Error('--pg is system or private');
  const dir = join(work, 'pg');
  const port = await freePort();
  execFileSync('install', ['-d', '-o', 'postgres', '-m', '0700', dir]);
  const asPg = (bin, ...a) => execFileSync('runuser', ['-u', 'postgres', '--', join(PG_BIN, bin), ...a], { stdio: 'pipe' });
  asPg('initdb', '-D', dir, '-A', 'trust', '-U', 'postgres', '--no-sync');
  const start = () => asPg('pg_ctl', '-D', dir, '-w', '-l', join(dir, 'log'), '-o', `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1`, 'start');
  start();
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    stop: (mode) => asPg('pg_ctl', '-D', dir, '-w', '-m', mode, 'stop'),
    start,
    close: () => {
      try {
        asPg('pg_ctl', '-D', dir, '-m', 'immediate', 'stop');
      } catch {
        // already stopped
      }
    },
  };
}

async function sql(url, text) {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await c.query(text);
  } finally {
    await c.end();
  }
}

// ---------------------------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------------------------

async function run(runNo) {
  const work = mkdtempSync(join(tmpdir(), 'strongroom-worst-'));
  chmodSync(work, 0o755);
  const server = await openServer(work);
  const secret = (name, bytes) => {
    const file = join(work, name);
    writeFileSync(file, randomBytes(bytes).toString('base64url'), { mode: 0o600 });
    return file;
  };
  const pinFile = secret('pin', 18);
  const adminFile = secret('admin-token', 32);
  const conf = join(work, 'softhsm.conf');
  execFileSync('mkdir', ['-p', join(work, 'tokens')]);
  writeFileSync(conf, readFileSync('softhsm.conf', 'utf8').replace(/^directories\.tokendir\s*=.*$/m, `directories.tokendir = ${join(work, 'tokens')}`));
  const label = `worst-${randomBytes(3).toString('hex')}`;
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', randomBytes(9).toString('hex'), '--pin', readFileSync(pinFile, 'utf8')], {
    env: { ...process.env, SOFTHSM2_CONF: conf },
    stdio: 'ignore',
  });
  const dbName = `worst_${process.pid}_${runNo}`;
  await sql(server.url, `CREATE DATABASE ${dbName}`);
  const dbUrl = new URL(server.url);
  dbUrl.pathname = `/${dbName}`;
  const env = {
    PATH: process.env.PATH,
    SOFTHSM2_CONF: conf,
    HOST: '127.0.0.1',
    DATABASE_URL: dbUrl.toString(),
    PKCS11_TOKEN_LABEL: label,
    PKCS11_PIN_FILE: pinFile,
    ADMIN_TOKEN_FILE: adminFile,
    LOG_LEVEL: 'warn',
  };

  const instances = [];
  for (const name of ['A', 'B']) {
    const port = await freePort();
    const out = [];
    const child = spawn(process.execPath, ['--enable-source-maps', join(DIST, 'src/launch.cjs')], {
      env: { ...env, PORT: String(port), DATA_DIR: join(work, `data-${name}`) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout.on('data', (d) => out.push(d));
    child.stderr.on('data', (d) => out.push(d));
    const inst = { name, child, out, base: `http://127.0.0.1:${port}/key-management/v1`, exit: undefined };
    child.on('exit', (code, signal) => (inst.exit = { code, signal }));
    instances.push(inst);
  }
  const [A, B] = instances;
  const report = { run: runNo, stopMode: runNo % 2 === 0 ? 'immediate' : 'fast', requests: 0, statuses: {}, keypairs: 0 };
  const count = (s) => (report.statuses[s] = (report.statuses[s] ?? 0) + 1);
  // The first 30 problems in full, the rest counted.
  let problems = 0;
  const bad = [];
  const problem = (m) => {
    if (++problems <= 30) bad.push(m);
  };

  let credential;
  const call = async (inst, method, path, body) => {
    const url = `${inst.base}${path}`;
    const headers = { authorization: Hawk.client.header(url, method, { credentials: credential }).header };
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res;
    try {
      res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (err) {
      report.requests++;
      count('transport');
      problem(`${inst.name} ${method} ${path}: ${err.cause?.code ?? err.message}`);
      return { status: 0 };
    }
    const text = await res.text();
    report.requests++;
    count(res.status);
    const code = res.headers.get('strongroom-error-code');
    const ok = res.status === 200 || (res.status === 503 && res.headers.get('retry-after') !== null && code !== null);
    if (!ok) problem(`${inst.name} ${method} ${path}: ${res.status} ${code} ${text.slice(0, 160)}`);
    return { status: res.status, text, code };
  };

  try {
    for (const inst of instances) {
      const t0 = Date.now();
      for (;;) {
        if (inst.exit) throw new Error(`${inst.name} exited at start: ${Buffer.concat(inst.out)}`);
        const ok = await fetch(`${inst.base}/ready`).then((r) => r.status === 200, () => false);
        if (ok) break;
        if (Date.now() - t0 > 120_000) throw new Error(`${inst.name} not ready in 120 s`);
        await sleep(250);
      }
    }
    const admin = readFileSync(adminFile, 'utf8');
    const reg = await fetch(`${A.base}/auth`, {
      method: 'POST',
      headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
      body: JSON.stringify({ id: `worst-${runNo}` }),
    });
    const { id, authKey } = await reg.json();
    credential = { id, key: authKey, algorithm: 'sha256' };

    const keypairs = []; // { id, key, at }
    const decryptAt = async (inst, kp) => {
      const msg = randomBytes(32);
      const ct = publicEncrypt({ key: kp.key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, msg);
      const res = await call(inst, 'POST', '/decrypt', { keypairId: kp.id, body: ct.toString('base64') });
      if (res.status !== 200) return res.status;
      const got = Buffer.from(JSON.parse(res.text).body, 'base64');
      if (!got.equals(msg)) problem(`${inst.name} decrypt of ${kp.id}: wrong plaintext`);
      return 200;
    };

    const t0 = Date.now();
    const stopAt = t0 + 10_000;
    const endAt = stopAt + PG_DOWN_MS + 25_000;
    let stopped = false;
    let startedAgainAt;
    let recoveredAfterMs;
    const pgTask = (async () => {
      await sleep(stopAt - Date.now());
      log(`run ${runNo}: stopping Postgres -m ${report.stopMode}`);
      server.stop(report.stopMode);
      stopped = true;
      await sleep(PG_DOWN_MS);
      server.start();
      startedAgainAt = Date.now();
      log(`run ${runNo}: Postgres started again`);
    })();

    // Decrypt load: 4 clients over both instances.
    const load = Array.from({ length: 4 }, async (_, i) => {
      while (Date.now() < endAt) {
        const kp = keypairs[Math.floor(Math.random() * keypairs.length)];
        if (!kp) {
          await sleep(100);
          continue;
        }
        await decryptAt(instances[i % 2], kp);
      }
    });

    // Keypairs alternately at A and B; each must decrypt at the other within 5 s.
    const creator = (async () => {
      let n = 0;
      while (Date.now() < endAt - 6_000) {
        const at = instances[n % 2];
        const other = instances[(n + 1) % 2];
        n++;
        const res = await call(at, 'POST', '/keypair');
        if (res.status !== 200) {
          await sleep(500);
          continue;
        }
        const body = JSON.parse(res.text);
        const kp = { id: body.id, key: createPublicKey({ key: Buffer.from(body.publicKey, 'base64'), format: 'der', type: 'pkcs1' }) };
        const created = Date.now();
        let seen = false;
        while (Date.now() - created < 5_000) {
          const s = await decryptAt(other, kp);
          if (s === 200) {
            seen = true;
            break;
          }
          // 503 while Postgres is down is an allowed answer, not a missing key.
          if (stopped && startedAgainAt === undefined) break;
          await sleep(200);
        }
        if (!seen && !(stopped && startedAgainAt === undefined)) problem(`keypair ${kp.id} from ${at.name} not decryptable at ${other.name} within 5 s`);
        keypairs.push(kp);
        report.keypairs++;
        if (startedAgainAt !== undefined && recoveredAfterMs === undefined && seen) recoveredAfterMs = Date.now() - startedAgainAt;
        await sleep(300);
      }
    })();

    await Promise.all([pgTask, creator, ...load]);
    report.recoveredAfterMs = recoveredAfterMs ?? null;

    // Every keypair decrypts at both instances now.
    for (const kp of keypairs) {
      for (const inst of instances) {
        let s;
        const t = Date.now();
        do {
          s = await decryptAt(inst, kp);
          if (s !== 200) await sleep(500);
        } while (s !== 200 && Date.now() - t < 15_000);
        if (s !== 200) problem(`keypair ${kp.id}: ${inst.name} answered ${s} after recovery`);
      }
    }
    for (const inst of instances) {
      if (inst.exit) {
        problem(`${inst.name} exited: ${JSON.stringify(inst.exit)}\n${Buffer.concat(inst.out).toString().slice(-2000)}`);
        continue;
      }
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${inst.child.pid}/status`, 'utf8'));
      report[`rss${inst.name}Mb`] = m ? Math.round(Number(m[1]) / 1024) : null;
    }
  } finally {
    for (const inst of instances) if (!inst.exit) inst.child.kill('SIGTERM');
    await Promise.all(instances.map((i) => (i.exit ? undefined : new Promise((r) => i.child.once('exit', r)))));
  }

  // The audit chain verifies, read by the CLI as an operator would.
  try {
    execFileSync(process.execPath, [join(DIST, 'src/cli/main.js'), 'audit', 'verify'], { env, stdio: 'pipe' });
    report.auditVerify = 'ok';
  } catch (err) {
    report.auditVerify = 'failed';
    problem(`audit verify: ${err.stdout}${err.stderr}`);
  }
  report.auditRows = Number((await sql(dbUrl.toString(), 'SELECT count(*) AS n FROM request_log')).rows[0].n);
  await sql(server.url, `DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
  server.close();
  rmSync(work, { recursive: true, force: true });
  report.problems = problems;
  report.bad = bad;
  report.pass = problems === 0;
  return report;
}

let failed = 0;
for (let i = 1; i <= RUNS; i++) {
  const report = await run(i);
  process.stdout.write(`${JSON.stringify(report)}\n`);
  if (!report.pass) {
    failed++;
    break;
  }
}
log(failed === 0 ? `${RUNS} runs passed` : 'a run failed');
process.exit(failed === 0 ? 0 : 1);
