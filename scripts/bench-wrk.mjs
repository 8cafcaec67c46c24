// The C load generator of scripts/bench.mjs: wrk (Debian package `wrk`) replaying requests signed
// ahead (scripts/bench-wrk.lua checks every response body). Importable by the bench and its test.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const LUA = join(HERE, 'bench-wrk.lua');

/** Hawk's ±60 s window less a margin for signing and start-up: the longest phase we sign ahead. */
export const MAX_PHASE_SECONDS = 50;

const found = () => {
  try {
    execFileSync('wrk', ['--version'], { stdio: 'ignore' });
    return true;
  } catch (err) {
    // wrk --version exits 1 after printing its usage; only a missing binary is ENOENT.
    return err.code !== 'ENOENT';
  }
};

/** wrk on the PATH, installed through scripts/lib.sh (ensure_wrk, apt-get) when missing. */
export function ensureWrk() {
  if (found()) return;
  process.stderr.write('bench: wrk is missing: installing it (scripts/lib.sh ensure_wrk)\n');
  execFileSync('bash', ['-c', `. "${join(HERE, 'lib.sh')}" && ensure_wrk`], { stdio: 'inherit' });
  if (!found()) throw new Error('wrk is still missing after ensure_wrk');
}

/** CPU (user + system) of this process's waited-for children, in clock ticks: wrk's, once it exits. */
function childrenTicks() {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[13]) + Number(f[14]);
}

/**
 * One wrk run over `requests` ({ authorization, body } each, sent once, in order, split over the
 * threads), every response expected to be `200 expected`. `onStart`/`onEnd` run right before wrk
 * starts and right after it exits (CPU snapshots). Returns the Lua script's counts, latency
 * percentiles in ms, ops/s of the ok responses, and wrk's own CPU in clock ticks.
 * @param {{ url: string, path: string, requests: Array<{authorization: string, body: string}>,
 *   expected: string, connections: number, threads?: number, seconds: number,
 *   timeoutSeconds?: number, onStart?: () => void, onEnd?: () => void }} o
 */
export async function runWrk(o) {
  // wrk takes whole seconds.
  if (!Number.isInteger(o.seconds) || o.seconds < 1) throw new Error(`a wrk phase lasts a whole number of seconds, not ${o.seconds}`);
  if (o.seconds > MAX_PHASE_SECONDS) throw new Error(`a wrk phase is at most ${MAX_PHASE_SECONDS} s (Hawk's ±60 s window), not ${o.seconds}`);
  const threads = Math.max(1, Math.min(o.threads ?? 1, o.connections));
  const dir = mkdtempSync(join(tmpdir(), 'strongroom-wrk-'));
  try {
    const prefix = join(dir, 'requests');
    for (let t = 0; t < threads; t += 1) {
      const lines = [];
      for (let i = t; i < o.requests.length; i += threads) {
        const r = o.requests[i];
        if (/[\t\n]/.test(r.authorization) || /[\t\n]/.test(r.body)) throw new Error('a request line may not contain a tab or a newline');
        lines.push(`${r.authorization}\t${r.body}`);
      }
      writeFileSync(`${prefix}.${t}`, `${lines.join('\n')}\n`);
    }
    const expectedFile = join(dir, 'expected');
    writeFileSync(expectedFile, o.expected);
    const argv = ['-t', String(threads), '-c', String(o.connections), '-d', `${o.seconds}s`, '--timeout', `${o.timeoutSeconds ?? 10}s`, '-s', LUA, o.url, '--', prefix, expectedFile, o.path];
    const ticks0 = childrenTicks();
    o.onStart?.();
    const child = spawn('wrk', argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const code = await new Promise((res, rej) => {
      child.once('error', rej);
      child.once('exit', res);
    });
    o.onEnd?.();
    const wrkTicks = childrenTicks() - ticks0;
    const line = stdout.split('\n').find((l) => l.startsWith('BENCH-WRK '));
    if (code !== 0 || !line) throw new Error(`wrk exited ${code}: ${stderr.trim() || stdout.trim()}`);
    const r = JSON.parse(line.slice('BENCH-WRK '.length));
    const seconds = r.durationUs / 1e6;
    const socketErrors = Object.values(r.errors).reduce((a, b) => a + b, 0) - r.errors.status;
    return {
      ok: r.ok,
      mismatches: r.mismatches,
      exhausted: r.exhausted,
      loaded: r.loaded,
      sent: r.sent,
      socketErrors,
      /** What the bench counts as failed requests: wrong answers, socket errors, or running out. */
      failures: r.mismatches + socketErrors + r.exhausted,
      errorSample: r.sample || (socketErrors ? JSON.stringify(r.errors) : r.exhausted ? 'ran out of signed requests' : undefined),
      seconds,
      opsPerSec: r.ok / seconds,
      p50Ms: r.latencyUs.p50 / 1000,
      p90Ms: r.latencyUs.p90 / 1000,
      p99Ms: r.latencyUs.p99 / 1000,
      maxMs: r.latencyUs.max / 1000,
      wrkTicks,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
