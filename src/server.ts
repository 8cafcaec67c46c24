#!/usr/bin/env node
import { writeSync } from 'node:fs';
import { buildApp } from './app.js';
import { ConfigError, loadConfig, type Config } from './config.js';
import { resolveCryptValues } from './config-crypt.js';

/** Exit status after an error nothing handled (EX_SOFTWARE): a supervisor restarts the process. */
const EXIT_FATAL = 70;

/**
 * Last resort: an error nothing handled leaves the process in an unknown state (a connection,
 * a token session or a lock may be half-held), so it logs one fatal line and exits rather than
 * hang half-alive. The line is pino's shape (level 60) on stdout, written synchronously, and
 * names the error by name, code and message only: no stack, no cause chain, no configuration.
 */
function fatal(kind: 'uncaughtException' | 'unhandledRejection', err: unknown): never {
  const e = (typeof err === 'object' && err !== null ? err : { message: String(err) }) as { name?: unknown; code?: unknown; message?: unknown };
  const line = {
    level: 60,
    time: Date.now(),
    pid: process.pid,
    msg: `${kind}: exiting`,
    err: {
      name: typeof e.name === 'string' ? e.name : 'Error',
      ...(typeof e.code === 'string' || typeof e.code === 'number' ? { code: e.code } : {}),
      message: typeof e.message === 'string' ? e.message.slice(0, 500) : '',
    },
  };
  try {
    writeSync(1, `${JSON.stringify(line)}\n`);
  } finally {
    process.exit(EXIT_FATAL);
  }
}
process.on('uncaughtException', (err) => fatal('uncaughtException', err));
process.on('unhandledRejection', (reason) => fatal('unhandledRejection', reason));

/** Process entry: config → app → listen → graceful shutdown. Everything else lives in buildApp. */
async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig(await resolveCryptValues(process.env));
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`strongroom: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }

  const app = await buildApp({ config });
  let closing = false;
  const shutdown = (signal: NodeJS.Signals) => {
    if (closing) return;
    closing = true;
    app.log.info({ signal }, 'shutting down: finishing requests in flight');
    app.close().then(
      () => process.exit(0),
      (err) => {
        app.log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);

  await app.listen({ port: config.server.port, host: config.server.host });
}

main().catch((err: unknown) => {
  // Start-up failures (token, PIN, database) end here; their messages carry no secrets.
  const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  process.stderr.write(`strongroom: cannot start: ${message}\n`);
  process.exit(1);
});
