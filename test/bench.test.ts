// `npm run bench -- --quick` must keep working: it runs the built service against a fresh token
// and a private Postgres cluster, loads it with wrk (Hawk headers signed ahead, every body
// checked), and every figure of its JSON must be a finite number with no failed request. The
// wrk script's check is proven to fail on a wrong body, and never to resend a signed request,
// against a small HTTP server of this test.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { serverUrl } from './helpers/database.js';
import { BUILD_ROOT, REPO_ROOT } from './helpers/paths.js';

const dir = mkdtempSync(join(tmpdir(), 'strongroom-bench-test-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const out = join(dir, 'bench.json');

interface WrkResult {
  ok: number;
  mismatches: number;
  exhausted: number;
  sent: number;
  failures: number;
  errorSample?: string;
  opsPerSec: number;
  p50Ms: number;
  p99Ms: number;
}
interface WrkModule {
  ensureWrk(): void;
  runWrk(o: {
    url: string;
    path: string;
    requests: Array<{ authorization: string; body: string }>;
    expected: string;
    connections: number;
    threads?: number;
    seconds: number;
  }): Promise<WrkResult>;
}
const wrk = (await import(pathToFileURL(join(REPO_ROOT, 'scripts', 'bench-wrk.mjs')).href)) as WrkModule;
wrk.ensureWrk();

function run(): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(REPO_ROOT, 'scripts', 'bench.mjs'), '--quick', '--profile', '--build', BUILD_ROOT, '--out', out], {
      cwd: REPO_ROOT,
      env: { ...process.env, DATABASE_URL: serverUrl() },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    // A timed-out test must not leave the bench (and its servers) running.
    t.teardown(() => {
      if (child.exitCode === null) child.kill('SIGTERM');
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Every leaf of the figures object, with its path. */
function leaves(value: unknown, path: string): Array<[string, unknown]> {
  if (typeof value === 'object' && value !== null) {
    return Object.entries(value).flatMap(([k, v]) => leaves(v, `${path}.${k}`));
  }
  return [[path, value]];
}

const EXPECTED = [
  'rawTokenOpsPerSec',
  'machineOpsPerSec',
  'service.c1.opsPerSec',
  'service.c8.p99Ms',
  'service.c16.opsPerSec',
  'service.c16.p99Ms',
  'service.c32.p50Ms',
  'ratioServiceToRaw.c8',
  'ratioServiceToRaw.c16',
  'ratioServiceToMachine.c32',
  'p99c8OverP50c1',
  'embedded.opsPerSec',
  'embedded.ratioToRaw',
  'embedded.serverCpuMsPerDecrypt',
  'keypairPostP50Ms',
  'keypairPostP99Ms',
  'ratioRefillingToNot',
  'ratioManyToTenKeys',
  'requestLogGetP50Ms',
  'requestLogWindowGetP50Ms',
  'rssIdleMb',
  'rssLoadMb',
  'eventLoopDelayP99Ms',
  'cpuMsPerDecrypt.raw.process',
  'cpuMsPerDecrypt.c16.server',
  'cpuMsPerDecrypt.c16.serverMainThread',
  'cpuMsPerDecrypt.c16.postgres',
  'cpuMsPerDecrypt.c16.loader',
  'cpuMsPerDecrypt.embeddedC16.server',
  'serverCpuBeyondRawMsC16',
  'coresBusy.c16.serverMainThread',
  'mismatches',
  'socketErrors',
  'exhausted',
  'errors',
];

t.setTimeout(300_000);

t.test('npm run bench -- --quick --profile: tables, and JSON with every figure finite and no failed request', async (t) => {
  const { code, stdout, stderr } = await run();
  t.equal(code, 0, `bench exits 0${code === 0 ? '' : `: ${stderr.slice(-2000)}`}`);
  for (const c of [1, 8, 16, 32]) t.match(stdout, new RegExp(`\\| service: POST /decrypt \\(Hawk, wrk, bodies checked\\)\\s+\\| c=${c}\\s`), `the table has the c=${c} row`);
  t.match(stdout, /\| embedded \(PGlite\): POST \/decrypt\s+\| c=16/, 'the table has the embedded row');
  t.match(stdout, /\| service \/ raw token at c=16\s+\| [\d.]+×\s+\| ≥ 0\.85×.*\| (met|not met) \|/, 'the targets table reports the c=16 ratio');
  t.match(stdout, new RegExp(`figures: ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`), 'the JSON path is printed');
  const json = JSON.parse(readFileSync(out, 'utf8')) as {
    quick: boolean;
    settings: { loadGenerator: string; postgres: { private: boolean } };
    figures: Record<string, unknown>;
    targets: Array<{ name: string; pass: unknown }>;
    profileFigures: Record<string, { eventLoopUtilisation: number; sessionBusyFraction: number; sessionHeldMsPerDecrypt: number }>;
  };
  t.equal(json.quick, true, 'quick mode is recorded');
  t.equal(json.settings.loadGenerator, 'wrk', 'the load generator is wrk');
  t.equal(json.settings.postgres.private, true, 'Postgres is a private cluster of the bench');
  const all = leaves(json.figures, 'figures');
  const notFinite = all.filter(([, v]) => typeof v !== 'number' || !Number.isFinite(v));
  t.same(notFinite, [], 'every figure is a finite number');
  const paths = new Set(all.map(([p]) => p));
  for (const name of EXPECTED) t.ok(paths.has(`figures.${name}`), `figure ${name} is present`);
  for (const name of ['errors', 'mismatches', 'socketErrors', 'exhausted']) t.equal(json.figures[name], 0, `${name}: 0`);
  const f = json.figures as { rawTokenOpsPerSec: number; service: Record<string, { opsPerSec: number }>; embedded: { opsPerSec: number } };
  t.ok(f.rawTokenOpsPerSec > 0 && f.service.c1!.opsPerSec > 0 && f.service.c16!.opsPerSec > 0 && f.embedded.opsPerSec > 0, 'throughputs are positive');
  t.ok(json.targets.length >= 5 && json.targets.every((x) => typeof x.pass === 'boolean'), 'every target has a pass/fail');
  for (const c of ['c1', 'c16', 'embeddedC16']) {
    const p = json.profileFigures[c]!;
    t.ok(p.eventLoopUtilisation > 0 && p.eventLoopUtilisation <= 1, `${c}: event-loop utilisation in (0, 1]`);
    t.ok(p.sessionBusyFraction > 0 && p.sessionBusyFraction <= 1.01, `${c}: session busy fraction in (0, 1]`);
    t.ok(p.sessionHeldMsPerDecrypt > 0, `${c}: sessions are held a positive time per decrypt`);
  }
});

t.test('the wrk script counts a wrong body, and sends each signed request at most once', async (t) => {
  const seen = new Map<string, number>();
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const auth = req.headers.authorization ?? '';
      seen.set(auth, (seen.get(auth) ?? 0) + 1);
      // One request of the run gets a wrong plaintext; every other one the right answer.
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(auth === 'hawk-7' ? '{"body":"V1JPTkc="}' : '{"body":"UklHSFQ="}');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const requests = (n: number) => Array.from({ length: n }, (_, i) => ({ authorization: `hawk-${i}`, body: '{"keypairId":"k","body":"x"}' }));

  const right = await wrk.runWrk({ url, path: '/decrypt', requests: requests(200_000), expected: '{"body":"UklHSFQ="}', connections: 4, threads: 2, seconds: 1 });
  t.equal(right.mismatches, 1, 'the one wrong plaintext is counted');
  t.ok(right.ok > 10, `the other answers are ok (${right.ok})`);
  t.equal(right.failures, 1, 'and it is a failure of the run');
  t.match(right.errorSample, /^200 \{'body':'V1JPTkc='\}/, 'the sample shows the wrong body');
  t.ok(right.p50Ms > 0 && right.p99Ms >= right.p50Ms, 'latency percentiles come from wrk');

  const wrong = await wrk.runWrk({ url, path: '/decrypt', requests: requests(200_000), expected: '{"body":"T1RIRVI="}', connections: 2, seconds: 1 });
  t.equal(wrong.ok, 0, 'with the wrong expected plaintext nothing is ok');
  t.ok(wrong.mismatches > 10, `every answer is a mismatch (${wrong.mismatches})`);

  seen.clear();
  const short = await wrk.runWrk({ url, path: '/decrypt', requests: requests(50), expected: '{"body":"UklHSFQ="}', connections: 2, seconds: 5 });
  t.ok(short.exhausted >= 1, 'running out of signed requests is reported');
  t.ok(short.failures >= 1, 'and fails the run');
  t.equal(short.sent, 50, 'every signed request was used');
  t.same([...seen.values()].filter((v) => v > 1), [], 'no signed request reached the server twice');
});
