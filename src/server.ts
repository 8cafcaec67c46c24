#!/usr/bin/env node
import { buildApp } from './app.js';
import { ConfigError, loadConfig, type Config } from './config.js';
import { resolveCryptValues } from './config-crypt.js';

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
