import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/app.js';
import { loadConfig, type Config } from '../../src/config.js';
import type { Face } from '../../src/core/face.js';
import type { Database } from '../../src/db/database.js';
import { createTestDatabase } from './database.js';
import { send, type ClientCredential } from './hawk-client.js';
import { createTestToken, type TestToken } from './token.js';

export const PREFIX = '/key-management/v1';

export interface HarnessOptions {
  /** Extra environment for loadConfig (PUBLIC_URL, TLS_*, ...). */
  env?: Record<string, string>;
  clock?: () => number;
  /** Capture the JSON log at info level into `logs`. */
  captureLog?: boolean;
  /** Reuse a token (e.g. a second app on the same token). */
  token?: TestToken;
  /** Reuse a database URL (e.g. a second app on the same database). */
  databaseUrl?: string;
  /** Create (but do not listen) — for app.inject. */
  listen?: boolean;
  /** Start without ADMIN_TOKEN (POST /auth then answers 403); `register` is unusable. */
  withoutAdminToken?: boolean;
  /** The faces `FACES` may name (default: the build's own); test/face-registry.test.ts adds one. */
  faces?: readonly Face[];
}

export interface Harness {
  app: FastifyInstance;
  config: Config;
  token: TestToken;
  /** A pool on the app's database, for assertions. */
  db: Database;
  databaseUrl: string;
  adminToken: string;
  /** http(s)://127.0.0.1:port */
  origin: string;
  /** origin + /key-management/v1 */
  base: string;
  logs: string[];
  /** Register a Hawk credential through POST /auth. */
  register(id?: string): Promise<ClientCredential>;
}

interface TestLike {
  teardown(fn: () => unknown): void;
}

/** Boot the real app on a real token and a fresh database on the real Postgres server. */
export async function startHarness(t: TestLike, options: HarnessOptions = {}): Promise<Harness> {
  const token = options.token ?? createTestToken();
  let databaseUrl = options.databaseUrl;
  let db: Database;
  if (databaseUrl === undefined) {
    const created = await createTestDatabase(t);
    databaseUrl = created.url;
    db = created.db;
  } else {
    const { openPostgres } = await import('../../src/db/postgres.js');
    db = openPostgres({ url: databaseUrl, poolSize: 2 });
    t.teardown(() => db.close());
  }
  const adminToken = randomBytes(32).toString('base64url');
  const auditSpoolDir = mkdtempSync(join(tmpdir(), 'strongroom-spool-'));
  t.teardown(() => rmSync(auditSpoolDir, { recursive: true, force: true }));
  const config = loadConfig({
    PORT: '0',
    HOST: '127.0.0.1',
    PKCS11_MODULE: token.modulePath,
    PKCS11_TOKEN_LABEL: token.label,
    PKCS11_PIN: token.pin,
    DATABASE_URL: databaseUrl,
    ...(!options.withoutAdminToken && { ADMIN_TOKEN: adminToken }),
    LOG_LEVEL: options.captureLog ? 'info' : 'silent',
    // Each app its own audit spool: a spool is replayed into whichever database its owner uses.
    AUDIT_SPOOL_DIR: auditSpoolDir,
    // No background key generation unless a test asks for it (test/key-pool.test.ts): it costs CPU the other tests time.
    KEY_POOL_SIZE: '0',
    // Tests send many deliberate Hawk failures from 127.0.0.1; test/hawk-failure-limit.test.ts sets its own.
    HAWK_FAILURE_LIMIT: '100000',
    ADMIN_FAILURE_LIMIT: '100000',
    // ... and expect each refusal in the request log; test/edge-abuse.test.ts tests the sampling.
    AUDIT_REFUSALS_PER_ADDRESS: '1000000',
    AUDIT_REFUSALS_PER_MINUTE: '10000000',
    ...options.env,
  }, options.faces);
  const logs: string[] = [];
  const logStream = new Writable({
    write(chunk, _enc, done) {
      logs.push(String(chunk));
      done();
    },
  });
  const app = await buildApp({ config, logStream, ...(options.clock && { clock: options.clock }) });
  t.teardown(() => app.close());
  let origin = '';
  if (options.listen !== false) {
    await app.listen({ port: 0, host: '127.0.0.1' });
    const address = app.server.address();
    const port = typeof address === 'object' && address ? address.port : 0;
    origin = `${config.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  }
  const base = `${origin}${PREFIX}`;
  return {
    app,
    config,
    token,
    db,
    databaseUrl,
    adminToken,
    origin,
    base,
    logs,
    async register(id = `genesys-${randomBytes(4).toString('hex')}`) {
      const res = await send('POST', `${base}/auth`, { json: { id }, headers: { authorization: `Bearer ${adminToken}` } });
      if (res.status !== 200) throw new Error(`POST /auth answered ${res.status}: ${res.text}`);
      const body = res.json as { id: string; authKey: string; algorithm: 'sha256' };
      return { id: body.id, key: body.authKey, algorithm: body.algorithm };
    },
  };
}
