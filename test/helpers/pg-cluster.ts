// A private Postgres cluster for fault tests: stopping it (pg_ctl stop -m fast | immediate)
// touches no other test. initdb refuses to run as root, so every server command runs as the
// `postgres` OS user (through runuser when this process is root).
import { execFile, execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './process-util.js';

const run = promisify(execFile);
const BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';
const OS_USER = 'postgres';

interface TestLike {
  teardown(fn: () => unknown): void;
}

export type StopMode = 'fast' | 'immediate';

export interface PgCluster {
  /** `postgres://postgres@127.0.0.1:<port>/postgres`. */
  readonly url: string;
  readonly port: number;
  /** `pg_ctl stop -m <mode>`: fast sends every backend 57P01; immediate kills them (crash recovery at start). */
  stop(mode: StopMode): Promise<void>;
  /** Start it again on the same port; resolves once it accepts connections. */
  start(): Promise<void>;
}

function command(cmd: string, args: string[]): [string, string[]] {
  return process.getuid?.() === 0 ? ['runuser', ['-u', OS_USER, '--', join(BIN, cmd), ...args]] : [join(BIN, cmd), args];
}

async function asPostgres(cmd: string, args: string[]): Promise<string> {
  const [file, argv] = command(cmd, args);
  const { stdout } = await run(file, argv, { timeout: 60_000 });
  return stdout;
}

/**
 * initdb into a fresh temporary directory, start on a free port (TCP on 127.0.0.1, its socket in
 * the directory, trust authentication), and stop it -m immediate and remove it at teardown.
 */
export async function startPgCluster(t: TestLike): Promise<PgCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'strongroom-pg-'));
  const data = join(dir, 'data');
  if (process.getuid?.() === 0) {
    const { stdout } = await run('id', ['-u', OS_USER]);
    const { stdout: gid } = await run('id', ['-g', OS_USER]);
    chownSync(dir, Number(stdout.trim()), Number(gid.trim()));
  }
  chmodSync(dir, 0o700);
  let running = false;
  // A test process killed before its teardown must not leave a server running.
  const onExit = () => {
    if (running) {
      try {
        execFileSync(...command('pg_ctl', ['-D', data, 'stop', '-m', 'immediate', '-w']), { stdio: 'ignore', timeout: 30_000 });
      } catch {
        // Already gone.
      }
    }
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', onExit);
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.once(signal, () => process.exit(1));
  t.teardown(async () => {
    process.removeListener('exit', onExit);
    if (running) await asPostgres('pg_ctl', ['-D', data, 'stop', '-m', 'immediate', '-w']).catch(() => undefined);
    running = false;
    rmSync(dir, { recursive: true, force: true });
  });
  await asPostgres('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C']);
  const port = await freePort();
  // fsync off: the tests stop the server, they do not pull the power; it keeps initdb and
  // crash recovery fast on a shared machine.
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60`;
  const cluster: PgCluster = {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    async stop(mode) {
      await asPostgres('pg_ctl', ['-D', data, 'stop', '-m', mode, '-w']);
      running = false;
    },
    async start() {
      await asPostgres('pg_ctl', ['-D', data, '-o', options, '-l', join(dir, 'log'), 'start', '-w', '-t', '60']);
      running = true;
    },
  };
  await cluster.start();
  return cluster;
}
