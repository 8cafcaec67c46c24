import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import type { DatabaseConfig } from '../src/config.js';
import type { Database } from '../src/db/database.js';
import type { MigrationSet } from '../src/db/migrations.js';
import { openDatabase } from '../src/db/open.js';

declare module 'fastify' {
  interface FastifyInstance {
    db: Database;
  }
}

export interface DbPluginOptions {
  /** Open (and migrate) this database; the app closes it in onClose... */
  config?: DatabaseConfig;
  /** ...with these components' migrations (default: the core's only). */
  migrations?: readonly MigrationSet[];
  /** ...or use one the caller owns. */
  db?: Database;
}

/** Decorates the app with its Database, migrated before the first request. */
async function dbPlugin(app: FastifyInstance, opts: DbPluginOptions): Promise<void> {
  let db = opts.db;
  if (!db) {
    if (!opts.config) throw new Error('db: give either config or db');
    const owned = await openDatabase(opts.config, (err) => app.log.warn({ err }, 'idle database connection failed'), opts.migrations);
    app.addHook('onClose', async () => owned.close());
    app.log.info({ kind: owned.kind }, 'database ready');
    db = owned;
  }
  app.decorate('db', db);
}

export default fp(dbPlugin, { name: 'db', fastify: '5.x' });
