// `npm run bench -- --quick` must keep working: it runs the built service against a fresh token
// and database, and every figure of its JSON must be a finite number with no errors.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { serverUrl } from './helpers/database.js';
import { BUILD_ROOT, REPO_ROOT } from './helpers/paths.js';

const dir = mkdtempSync(join(tmpdir(), 'strongroom-bench-test-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const out = join(dir, 'bench.json');

function run(): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(REPO_ROOT, 'scripts', 'bench.mjs'), '--quick', '--build', BUILD_ROOT, '--out', out], {
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
  'service.c32.p50Ms',
  'ratioServiceToRaw.c8',
  'ratioServiceToMachine.c32',
  'p99c8OverP50c1',
  'keypairPostP50Ms',
  'keypairPostP99Ms',
  'ratioRefillingToNot',
  'ratioManyToTenKeys',
  'requestLogGetP50Ms',
  'requestLogWindowGetP50Ms',
  'rssIdleMb',
  'rssLoadMb',
  'eventLoopDelayP99Ms',
  'errors',
];

t.setTimeout(300_000);

t.test('npm run bench -- --quick: a table, and JSON with every figure finite and no errors', async (t) => {
  const { code, stdout, stderr } = await run();
  t.equal(code, 0, `bench exits 0${code === 0 ? '' : `: ${stderr.slice(-2000)}`}`);
  t.match(stdout, /\| service: POST \/decrypt \(Hawk, end to end\)\s+\| c=8/, 'the table has the service rows');
  t.match(stdout, new RegExp(`figures: ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`), 'the JSON path is printed');
  const json = JSON.parse(readFileSync(out, 'utf8')) as { quick: boolean; figures: Record<string, unknown> };
  t.equal(json.quick, true, 'quick mode is recorded');
  const all = leaves(json.figures, 'figures');
  const notFinite = all.filter(([, v]) => typeof v !== 'number' || !Number.isFinite(v));
  t.same(notFinite, [], 'every figure is a finite number');
  const paths = new Set(all.map(([p]) => p));
  for (const name of EXPECTED) t.ok(paths.has(`figures.${name}`), `figure ${name} is present`);
  t.equal(json.figures.errors, 0, 'no request failed');
  t.ok((json.figures.rawTokenOpsPerSec as number) > 0 && (json.figures.service as { c1: { opsPerSec: number } }).c1.opsPerSec > 0, 'throughputs are positive');
});
