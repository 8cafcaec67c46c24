import type { SecureContextOptions } from 'node:tls';
import type { Writable } from 'node:stream';
import sensible from '@fastify/sensible';
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { HsmError, type KeyStore } from '../hsm/index.js';
import { adminFailureLimit } from '../plugins/admin-auth.js';
import auditPlugin from '../plugins/audit.js';
import dbPlugin from '../plugins/db.js';
import errorHandler, { frameworkErrors } from '../plugins/error-handler.js';
import keyStorePlugin from '../plugins/keystore.js';
import rawJson from '../plugins/raw-json.js';
import ready from '../plugins/ready.js';
import { RequestLogController, refusalLogPlugin } from '../plugins/request-log.js';
import requestGuard, { clientErrorHandler } from '../plugins/request-guard.js';
import { runtimeMetrics } from '../plugins/runtime-metrics.js';
import shutdown from '../plugins/shutdown.js';
import type { Config, TlsConfig } from './config.js';
import { CredentialRepository } from './db/credentials.js';
import type { Database } from './db/database.js';
import { KeypairRepository } from './db/keypairs.js';
import { NonceGuard, NonceRepository } from './db/nonces.js';
import { RequestLogRepository } from './db/request-log.js';
import { throttledWarn } from './health/degraded.js';
import { CredentialService } from './faces/lkm/credentials.js';
import { lkmRoutes } from './faces/lkm/routes.js';
import { LKM_MODULUS_BITS, LkmService } from './faces/lkm/service.js';
import { ensureServiceKeys } from './service-keys.js';
import { keyAdminRoutes } from './keys/admin-routes.js';
import { KeyGenerator } from './keys/generator.js';
import { KeyLifecycle } from './keys/lifecycle.js';
import { KeyPool } from './keys/pool.js';
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

/** Hawk's ±skew (seconds); nonces are kept for the whole window on both sides. */
const HAWK_SKEW_SEC = 60;
const NONCE_PURGE_INTERVAL_MS = 60_000;

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
 * The application as a plugin tree: the one place that knows everything. It opens (or is
 * given) the token and the database, creates the token's service keys if they are missing,
 * and mounts the Local Key Manager under /key-management/v1.
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
  await app.register(dbPlugin, options.db ? { db: options.db } : { config: config.database });
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
    await ensureServiceKeys(db, keyStore);
    await requireCustody(app, keyStore);
    // Settle key generations a killed process left behind before anything generates again.
    await reconcileKeys(db, keyStore, { clock, log: app.log });
  } catch (err) {
    await app.close();
    throw err;
  }

  const degraded = throttledWarn(() => app.log);
  const credentials = new CredentialService({
    repo: new CredentialRepository(db),
    onServedStale: (_id, err) => degraded('database unavailable: serving cached Hawk credentials', err),
    keyStore,
    clock,
    onSealedKeyRejected: (id, err) =>
      app.log.error({ hawkId: id, err }, 'stored Hawk key does not open with this token (wrong token or altered row)'),
    onMarkFailed: (_id, err) => degraded('could not record that a Hawk credential signs query strings', err),
  });
  // Requests authenticated by a path-only MAC, per credential (only ids whose MAC verified).
  const pathOnlyMac = new Map<string, number>();
  const keypairs = new KeypairRepository(db);
  const generator = new KeyGenerator({ db, keyStore, bits: LKM_MODULUS_BITS, clock });
  const keyPool = new KeyPool({ db, keyStore, generator, size: config.keyPool.size, log: app.log });
  const service = new LkmService({
    keyStore,
    keypairs,
    generator,
    usePool: config.keyPool.size > 0,
    onPoolKeyTaken: () => keyPool.poke(),
    clock,
    onMissingKey: (keypairId) =>
      app.log.warn({ keypairId }, 'the token does not show the key of a keypair the database lists (created by another instance just now, or lost); answering 503 KEY_ERR_NOT_YET_VISIBLE'),
    onStaleState: (_id, err) => degraded('database unavailable: using cached keypair states', err),
  });
  const lifecycle = new KeyLifecycle({
    keypairs,
    keyStore,
    audit: (event) => app.audit(event),
    clock,
    onChange: (keypairId) => service.forgetState(keypairId),
  });
  // The pool fills in the background once the app is ready; closing waits for the key in flight.
  app.addHook('onReady', async () => keyPool.start());
  app.addHook('preClose', async () => keyPool.stop());
  const nonceRepo = new NonceRepository(db);
  const windowMs = 2 * HAWK_SKEW_SEC * 1000;
  // During a database outage replays are refused by this instance only (see NonceGuard).
  const nonceGuard = new NonceGuard({
    repo: nonceRepo,
    windowMs,
    clock,
    onLocalClaim: (err) => degraded('database unavailable: Hawk nonces checked by this instance only', err),
  });
  const requestLog = new RequestLogRepository(db);

  const purge = setInterval(() => {
    nonceRepo.purge(new Date(clock())).catch((err) => app.log.warn({ err }, 'nonce purge failed'));
  }, NONCE_PURGE_INTERVAL_MS);
  purge.unref();
  app.addHook('onClose', async () => clearInterval(purge));

  await app.register(lkmRoutes, {
    prefix: '/key-management/v1',
    service,
    credentials,
    hawkCredentials: (id: string) => credentials.lookup(id),
    nonces: {
      claim: (hawkId: string, nonce: string) => nonceGuard.claim(hawkId, nonce),
    },
    requestLog,
    adminToken: config.adminToken,
    publicUrl: config.server.publicUrl,
    hawkFailures: config.hawkFailures,
    acceptPathOnlyMac: config.hawkAcceptPathOnlyMac,
    onPathOnlyMac: (id: string) => pathOnlyMac.set(id, (pathOnlyMac.get(id) ?? 0) + 1),
    clock,
  });
  await app.register(keyAdminRoutes, { prefix: '/admin/v1', lifecycle, adminToken: config.adminToken, clock });
  await app.register(runtimeMetrics, {
    prefix: '/admin/v1',
    adminToken: config.adminToken,
    keyStore,
    pathOnlyMac: () => Object.fromEntries(pathOnlyMac),
  });
  // Readiness beside /health: public, outside the Hawk and request-log scopes.
  await app.register(ready, { prefix: '/key-management/v1', db, keyStore });

  return app;
}
