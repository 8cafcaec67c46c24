// The built CLI as a process: stdin piped (empty unless given), killed at teardown or after 90 s,
// and a variant that asserts no secret reaches its output.
import { spawn } from 'node:child_process';
import { CLI_JS } from './paths.js';

interface TestLike {
  teardown(fn: () => unknown): void;
}

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `node CLI_JS ...args` with exactly `env`; `input` is piped to stdin (else stdin is empty). */
export async function runCli(t: TestLike, args: string[], env: Record<string, string>, input?: string): Promise<CliRun> {
  const child = spawn(process.execPath, ['--enable-source-maps', CLI_JS, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const killer = () => child.kill('SIGKILL');
  t.teardown(killer);
  child.stdin.end(input ?? '');
  const code = await new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.once('close', (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  return { code, stdout, stderr };
}

interface LeakCheck extends TestLike {
  notOk(value: unknown, message: string): unknown;
}

/**
 * The built CLI as `cli(t, args, env?, input?)`, with one more assertion per run: none of
 * `secrets` (read at each call, so a list may grow) appears in its stdout or stderr.
 */
export function secretCheckedCli(secrets: readonly string[], defaultEnv?: Record<string, string>) {
  return async (t: LeakCheck, args: string[], env = defaultEnv, input?: string): Promise<CliRun> => {
    if (!env) throw new Error('secretCheckedCli: no environment for this run');
    const run = await runCli(t, args, env, input);
    const leaked = secrets.filter((s) => run.stdout.includes(s) || run.stderr.includes(s));
    t.notOk(leaked.length, `strongroom ${args.join(' ')}: no secret in the output`);
    return run;
  };
}
