import type { SecureContextOptions } from 'node:tls';
import type { Writable } from 'node:stream';
import sensible from '@fastify/sensible';
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { HsmError, type KeyStore } from '../hsm/index.js';
import { adminFailureLimit } from '../plugins/admin-auth.js';
import auditPlugin from '../plugins/audit.js';
import dbPlugin from '../plugins/db.js';
import errorHandler, { frameworkErrors, useErrorHandler } from '../plugins/error-handler.js';
import keyStorePlugin from '../plugins/keystore.js';
import rawJson from '../plugins/raw-json.js';
import ready from '../plugins/ready.js';
import { RequestLogController, refusalLogPlugin } from '../plugins/request-log.js';
import requestGuard, { clientErrorHandler } from '../plugins/request-guard.js';
import { runtimeMetrics } from '../plugins/runtime-metrics.js';
import shutdown from '../plugins/shutdown.js';
import type { Config, TlsConfig } from './config.js';
import type { CoreContext, EnabledFace } from './core/face.js';
import type { Database } from './db/database.js';
import { CORE_COMPONENT, migrateAll, migrations, type MigrationSet } from './db/migrations.js';
import { throttledWarn } from './health/degraded.js';
import { ensureServiceKeys } from './service-keys.js';
import { keyAdminRoutes } from './keys/admin-routes.js';
import { KeyLifecycle } from './keys/lifecycle.js';
import { KeypairRepository } from './db/keypairs.js';
import { reconcileKeys } from './keys/reconcile.js';

export interface BuildAppOptions {
  config: Config;
  /** A key store the caller owns (tests, CLI); otherwise the app opens the configured token. */
  keyStore?: KeyStore;
  /** A database the caller owns; otherwise the app opens (and migrates) the configured one. */
  db?: Database;
  /** Milliseconds since the epoch; tests move time instead of sleeping. */
  clock?: () => number;
  /** Where the JSON log goes (default stdout). */
  logStream?: Writable;
}

/**
 * What never reaches the log. Fastify's request serializer leaves headers out already; these
 * paths catch anything logged by hand.
 */
export const LOG_REDACT_PATHS = [
  'req.headers.authorization',
  'headers.authorization',
  '*.headers.authorization',
  'authorization',
  '*.authorization',
  'authKey',
  '*.authKey',
  'pin',
  '*.pin',
  'adminToken',
  '*.adminToken',
  'passphrase',
  '*.passphrase',
];

function loggerOptions(config: Config, stream: Writable | undefined): FastifyServerOptions['logger'] {
  return {
    level: config.logLevel,
    redact: { paths: LOG_REDACT_PATHS, censor: '[redacted]' },
    ...(stream && { stream }),
  };
}

function httpsOptions(tls: TlsConfig | undefined): SecureContextOptions | undefined {
  if (!tls) return undefined;
  const base: SecureContextOptions = { minVersion: 'TLSv1.2' };
  if (tls.kind === 'pem') return { ...base, cert: tls.cert, key: tls.key.reveal() };
  return { ...base, pfx: tls.pfx.reveal(), ...(tls.passphrase && { passphrase: tls.passphrase.reveal() }) };
}

/**
 * Refuse a token that would let an ordinary key wrap (export) our private keys. A probe that
 * cannot run (a token without AES key wrap, say) is logged, not fatal.
 */
async function requireCustody(app: FastifyInstance, keyStore: KeyStore): Promise<void> {
  const custody = await keyStore.checkCustody();
  if (custody.wrapWithTrusted === 'not-enforced') {
    throw new HsmError(
      'HSM_ERR_CUSTODY',
      `token "${keyStore.token.label}" does not enforce CKA_WRAP_WITH_TRUSTED (${custody.detail}): ` +
        'anyone with the user PIN could export the private keys; refusing to use it',
    );
  }
  if (custody.wrapWithTrusted === 'inconclusive') {
    app.log.warn({ detail: custody.detail }, 'could not verify that the token enforces CKA_WRAP_WITH_TRUSTED');
  }
}

/**
 * Mount one face in its own encapsulated scope under its prefix: its body limit on every route,
 * its error and 404 bodies, then whatever the face registers (parsers, auth, routes).
 */
async function registerFace(app: FastifyInstance, { face, config }: EnabledFace, core: CoreContext): Promise<void> {
  const bodyLimit = face.bodyLimit(config, core.config);
  await app.register(
    async (scope) => {
      scope.addHook('onRoute', (route) => {
        route.bodyLimit ??= bodyLimit;
      });
      useErrorHandler(scope, face.errorBody);
      await face.register(scope, core, config);
    },
    { prefix: face.prefix },
  );
}

/**
 * The application as a plugin tree: the one place that knows everything. It builds the core
 * (opens or is given the token and the database, migrates the core and every enabled face,
 * creates the token's service keys if they are missing, settles interrupted key generations),
 * mounts each enabled face in its own scope, then the core's routes: the admin API under
 * /admin/v1 and readiness.
 */
export async function buildApp(options: BuildAppOptions): Promise<FastifyInstance> {
  const { config } = options;
  const clock = options.clock ?? Date.now;
  const https = httpsOptions(config.tls);
  let built: FastifyInstance | undefined;
  const app = Fastify({
    logger: loggerOptions(config, options.logStream),
    ...(https && { https }),
    bodyLimit: config.server.bodyLimit,
    // A slow client (requestTimeout) and a slow answer (handlerTimeout → 503 SERVICE_ERR_TIMEOUT) are both bounded.
    requestTimeout: config.server.requestTimeoutMs,
    handlerTimeout: config.server.requestTimeoutMs,
    trustProxy: config.server.trustProxy as boolean | string[],
    forceCloseConnections: 'idle',
    // plugins/shutdown.ts refuses requests that arrive while closing, with the contract body and
    // an audit entry; Fastify's own 503 would answer first, bare and unlogged.
    return503OnClosing: false,
    frameworkErrors,
    // One line per request, at completion; refusals beyond the sampling budget log nothing.
    logController: new RequestLogController(),
    // Node's own parser refusals get the contract body, the error-code header and an audit entry.
    clientErrorHandler: clientErrorHandler(() => built),
  }) as unknown as FastifyInstance;
  built = app;
  if (config.server.trustProxy === true) {
    app.log.warn(
      'TRUST_PROXY=true believes every X-Forwarded-For hop: any client can choose the address it is logged and ' +
        'failure-limited under. List the proxy addresses instead (TRUST_PROXY=10.0.0.5,10.0.0.6 or a CIDR)',
    );
  }

  await app.register(sensible);
  await app.register(shutdown);
  await app.register(errorHandler);
  await app.register(requestGuard);
  await app.register(rawJson);
  const faceMigrations: MigrationSet[] = config.faces.map(({ face }) => ({ component: face.name, migrations: face.migrations }));
  await app.register(
    dbPlugin,
    options.db ? { db: options.db } : { config: config.database, migrations: [{ component: CORE_COMPONENT, migrations }, ...faceMigrations] },
  );
  await app.register(auditPlugin, { ...config.audit, clock });
  await app.register(refusalLogPlugin, { ...config.refusalSampling, clock });
  await app.register(adminFailureLimit, { ...config.adminFailures, clock });
  await app.register(
    keyStorePlugin,
    options.keyStore
      ? { keyStore: options.keyStore }
      : {
          pkcs11: {
            modulePath: config.pkcs11.modulePath,
            tokenLabel: config.pkcs11.tokenLabel,
            pin: config.pkcs11.pin.reveal(),
            sessions: config.pkcs11.sessions,
            sessionWaitMs: config.pkcs11.sessionWaitMs,
          },
        },
  );

  const { db, keyStore } = app;
  try {
    // A database the caller owns has the core schema already; the enabled faces' is applied here.
    if (options.db && faceMigrations.some((set) => set.migrations.length > 0)) await migrateAll(db, faceMigrations);
    await ensureServiceKeys(db, keyStore);
    await requireCustody(app, keyStore);
    // Settle key generations a killed process left behind before anything generates again.
    await reconcileKeys(db, keyStore, { clock, log: app.log });
  } catch (err) {
    await app.close();
    throw err;
  }

  const readinessChecks = new Map<string, () => Promise<unknown>>();
  const runtimeFigures = new Map<string, () => unknown>();
  const keypairListeners: Array<(keypairId: string) => void> = [];
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  const degraded = throttledWarn(() => app.log);
  const lifecycle = new KeyLifecycle({
    keypairs: new KeypairRepository(db),
    keyStore,
    audit: (event) => app.audit(event),
    clock,
    onChange: (keypairId) => keypairListeners.forEach((listener) => listener(keypairId)),
  });
  const core: CoreContext = {
    config,
    db,
    keyStore,
    audit: (event) => app.audit(event),
    clock,
    log: app.log,
    degraded: (message, err) => degraded(message, err),
    isClosing: () => closing,
    keys: { lifecycle, onChange: (listener) => keypairListeners.push(listener) },
    addReadinessCheck(name, check) {
      if (['database', 'token', 'canary'].includes(name) || readinessChecks.has(name)) throw new Error(`readiness check ${name} is already defined`);
      readinessChecks.set(name, check);
    },
    addRuntimeFigures(name, read) {
      if (['rssBytes', 'heapUsedBytes', 'eventLoopDelayMs', 'since', 'keyStore'].includes(name) || runtimeFigures.has(name)) {
        throw new Error(`runtime section ${name} is already defined`);
      }
      runtimeFigures.set(name, read);
    },
  };

  for (const enabled of config.faces) await registerFace(app, enabled, core);

  await app.register(keyAdminRoutes, { prefix: '/admin/v1', lifecycle, adminToken: config.adminToken, clock });
  await app.register(runtimeMetrics, { prefix: '/admin/v1', adminToken: config.adminToken, keyStore, figures: runtimeFigures });
  // Readiness: public, outside every face's auth and request-log scopes (its path predates faces).
  await app.register(ready, { prefix: '/key-management/v1', db, keyStore, extraChecks: readinessChecks });

  return app;
}
