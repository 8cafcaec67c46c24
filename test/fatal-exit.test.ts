// The last-resort handler of the BUILT server: an exception or rejection nothing handled ends
// the process with one fatal JSON line (name, code, message; no stack, no secret) and a
// non-zero status, so a supervisor restarts it instead of it hanging half-alive.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import t from 'tap';
import { SERVER_JS } from './helpers/paths.js';
import { baseEnv, freePort, tempDir, tokenEnv, waitExit, writeSecretFile, type Proc } from './helpers/process-util.js';
import { createTestToken } from './helpers/token.js';

const token = createTestToken();
const work = tempDir(t, 'fatal-exit');
const pinFile = writeSecretFile(work, 'pin', `${token.pin}\n`);

/** The server with a preloaded module that raises `what` once it has run for a moment. */
async function serverThatFails(name: string, what: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const preload = join(work, `${name}.mjs`);
  writeFileSync(preload, `setTimeout(() => { ${what} }, 2500);\n`);
  const env = { ...baseEnv(), ...tokenEnv(token, pinFile), DATA_DIR: join(work, `data-${name}`), PORT: String(await freePort()), KEY_POOL_SIZE: '0' };
  const child = spawn(process.execPath, ['--import', preload, SERVER_JS], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
  t.teardown(() => void child.kill('SIGKILL'));
  const proc = { pid: child.pid ?? -1, exit } as unknown as Proc;
  const { code } = await waitExit(proc, 60_000);
  return { code, stdout, stderr };
}

for (const [kind, what] of [
  ['uncaughtException', `throw Object.assign(new Error('boom from the test'), { code: 'E_TEST' });`],
  ['unhandledRejection', `Promise.reject(Object.assign(new Error('rejected by the test'), { code: 'E_TEST' }));`],
] as const) {
  t.test(`${kind}: one fatal line, exit 70`, async (t) => {
    const run = await serverThatFails(kind, what);
    t.equal(run.code, 70, 'exits with status 70');
    const fatal = run.stdout
      .trim()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { level: number; msg: string; err: Record<string, unknown> })
      .filter((l) => l.level === 60);
    t.equal(fatal.length, 1, 'one fatal-level JSON line on stdout');
    const line = fatal[0] ?? { level: 0, msg: '', err: {} };
    const last = JSON.stringify(line);
    t.equal(line.msg, `${kind}: exiting`);
    t.same(Object.keys(line.err).sort(), ['code', 'message', 'name'], 'the error by name, code and message only');
    t.equal(line.err.code, 'E_TEST');
    t.notOk(run.stdout.includes(token.pin) || run.stderr.includes(token.pin), 'no PIN in the output');
    t.notOk(last.includes('at '), 'no stack');
  });
}
