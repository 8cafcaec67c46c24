import type { FastifyInstance } from 'fastify';
import { messageStatusBody } from '../../../plugins/error-handler.js';
import { useJsonBodies } from '../../../plugins/raw-json.js';
import type { CoreContext, Face } from '../../core/face.js';
import { CredentialRepository } from '../../db/credentials.js';
import { KeypairRepository } from '../../db/keypairs.js';
import { NonceGuard, NonceRepository } from '../../db/nonces.js';
import { RequestLogRepository } from '../../db/request-log.js';
import { KeyGenerator } from '../../keys/generator.js';
import { KeyPool } from '../../keys/pool.js';
import { authCommands } from './cli.js';
import { lkmConfigSchema, loadLkmConfig, type LkmConfig } from './config.js';
import { CredentialService } from './credentials.js';
import { lkmErrors } from './errors.js';
import { lkmRoutes } from './routes.js';
import { LKM_MODULUS_BITS, LkmService } from './service.js';

/** Hawk's ±skew (seconds); nonces are kept for the whole window on both sides. */
const HAWK_SKEW_SEC = 60;
const NONCE_PURGE_INTERVAL_MS = 60_000;

/** Wires the LKM's services on the core and mounts its routes in `scope`. */
async function register(scope: FastifyInstance, core: CoreContext, config: LkmConfig): Promise<void> {
  const { db, keyStore, clock, degraded } = core;
  useJsonBodies(scope);
  const credentials = new CredentialService({
    repo: new CredentialRepository(db),
    onServedStale: (_id, err) => degraded('database unavailable: serving cached Hawk credentials', err),
    keyStore,
    clock,
    onSealedKeyRejected: (id, err) =>
      core.log.error({ hawkId: id, err }, 'stored Hawk key does not open with this token (wrong token or altered row)'),
    onMarkFailed: (_id, err) => degraded('could not record that a Hawk credential signs query strings', err),
  });
  // Requests authenticated by a path-only MAC, per credential (only ids whose MAC verified).
  const pathOnlyMac = new Map<string, number>();
  core.addRuntimeFigures('hawk', () => ({ pathOnlyMac: Object.fromEntries(pathOnlyMac) }));
  const keypairs = new KeypairRepository(db);
  const generator = new KeyGenerator({ db, keyStore, bits: LKM_MODULUS_BITS, clock });
  const keyPool = new KeyPool({ db, keyStore, generator, size: config.keyPool.size, log: core.log });
  const service = new LkmService({
    keyStore,
    keypairs,
    generator,
    usePool: config.keyPool.size > 0,
    onPoolKeyTaken: () => keyPool.poke(),
    clock,
    onMissingKey: (keypairId) =>
      core.log.warn({ keypairId }, 'the token does not show the key of a keypair the database lists (created by another instance just now, or lost); answering 503 KEY_ERR_NOT_YET_VISIBLE'),
    onStaleState: (_id, err) => degraded('database unavailable: using cached keypair states', err),
  });
  core.keys.onChange((keypairId) => service.forgetState(keypairId));
  // The pool fills in the background once the app is ready; closing waits for the key in flight.
  scope.addHook('onReady', async () => keyPool.start());
  scope.addHook('preClose', async () => keyPool.stop());
  const nonceRepo = new NonceRepository(db);
  // During a database outage replays are refused by this instance only (see NonceGuard).
  const nonceGuard = new NonceGuard({
    repo: nonceRepo,
    windowMs: 2 * HAWK_SKEW_SEC * 1000,
    clock,
    onLocalClaim: (err) => degraded('database unavailable: Hawk nonces checked by this instance only', err),
  });
  const purge = setInterval(() => {
    nonceRepo.purge(new Date(clock())).catch((err) => core.log.warn({ err }, 'nonce purge failed'));
  }, NONCE_PURGE_INTERVAL_MS);
  purge.unref();
  scope.addHook('onClose', async () => clearInterval(purge));

  await scope.register(lkmRoutes, {
    service,
    credentials,
    hawkCredentials: (id: string) => credentials.lookup(id),
    nonces: { claim: (hawkId: string, nonce: string) => nonceGuard.claim(hawkId, nonce) },
    requestLog: new RequestLogRepository(db),
    adminToken: core.config.adminToken,
    publicUrl: core.config.server.publicUrl,
    hawkFailures: config.hawkFailures,
    acceptPathOnlyMac: config.hawkAcceptPathOnlyMac,
    onPathOnlyMac: (id: string) => pathOnlyMac.set(id, (pathOnlyMac.get(id) ?? 0) + 1),
    clock,
  });
}

/**
 * The Genesys Cloud Local Key Manager under /key-management/v1: Hawk, JSON bodies only, the
 * `{"message","status"}` error body, BODY_LIMIT. Its tables predate faces and keep their names
 * (they are in the core component's migrations 1–30): no migrations of its own yet.
 */
export const lkmFace: Face<LkmConfig, typeof lkmConfigSchema> = {
  name: 'lkm',
  prefix: '/key-management/v1',
  configSchema: lkmConfigSchema,
  loadConfig: (env) => loadLkmConfig(env),
  migrations: [],
  errors: lkmErrors,
  bodyLimit: (_config, core) => core.server.bodyLimit,
  errorBody: messageStatusBody,
  register,
  // Read when the CLI starts, not here: the commands' module imports the config, which lists the faces.
  get cli() {
    return authCommands;
  },
};
