import type { SecureContextOptions } from 'node:tls';
import type { Writable } from 'node:stream';
import sensible from '@fastify/sensible';
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import { HsmError, type KeyStore } from '../hsm/index.js';
import dbPlugin from '../plugins/db.js';
import errorHandler from '../plugins/error-handler.js';
import keyStorePlugin from '../plugins/keystore.js';
import rawJson from '../plugins/raw-json.js';
import shutdown from '../plugins/shutdown.js';
import type { Config, TlsConfig } from './config.js';
import { CredentialRepository } from './db/credentials.js';
import type { Database } from './db/database.js';
import { KeypairRepository } from './db/keypairs.js';
import { NonceRepository } from './db/nonces.js';
import { RequestLogRepository } from './db/request-log.js';
import { CredentialService } from './lkm/credentials.js';
import { lkmRoutes } from './lkm/routes.js';
import { LkmService } from './lkm/service.js';
import { ensureServiceKeys } from './service-keys.js';

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
  const app = Fastify({
    logger: loggerOptions(config, options.logStream),
    ...(https && { https }),
    bodyLimit: config.server.bodyLimit,
    trustProxy: config.server.trustProxy as boolean | string[],
    forceCloseConnections: 'idle',
  }) as unknown as FastifyInstance;

  await app.register(sensible);
  await app.register(shutdown);
  await app.register(errorHandler);
  await app.register(rawJson);
  await app.register(dbPlugin, options.db ? { db: options.db } : { config: config.database });
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
          },
        },
  );

  const { db, keyStore } = app;
  try {
    await ensureServiceKeys(db, keyStore);
    await requireCustody(app, keyStore);
  } catch (err) {
    await app.close();
    throw err;
  }

  const credentials = new CredentialService({
    repo: new CredentialRepository(db),
    keyStore,
    clock,
    onSealedKeyRejected: (id, err) =>
      app.log.error({ hawkId: id, err }, 'stored Hawk key does not open with this token (wrong token or altered row)'),
  });
  const service = new LkmService({
    keyStore,
    keypairs: new KeypairRepository(db),
    clock,
    onMissingKey: (keypairId) => app.log.error({ keypairId }, 'the database lists a keypair the token does not hold'),
    onOrphanKey: (keypairId, err) =>
      app.log.error({ keypairId, err }, 'keypair generated in the token but not recorded; it is kept in the token'),
  });
  const nonceRepo = new NonceRepository(db);
  const windowMs = 2 * HAWK_SKEW_SEC * 1000;
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
      claim: (hawkId: string, nonce: string) => {
        const now = clock();
        return nonceRepo.claim(hawkId, nonce, new Date(now), new Date(now + windowMs));
      },
    },
    requestLog,
    adminToken: config.adminToken,
    publicUrl: config.server.publicUrl,
    clock,
  });

  return app;
}
