import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import type { z } from 'zod';
import type { KeyStore } from '../../hsm/index.js';
import type { RecordAuditEvent } from '../audit/events.js';
import type { Command } from '../cli/command.js';
import type { CoreConfig } from '../config.js';
import type { Database } from '../db/database.js';
import type { Migration } from '../db/migrations.js';
import type { FaceCatalogue } from '../errors.js';
import type { KeyLifecycle } from '../keys/lifecycle.js';
import type { ErrorBodyFormat } from '../../plugins/error-handler.js';

/**
 * A face: one API strongroom offers (the LKM, JOSE message security, remote signing, the
 * console), built on what every face shares (the core). A face lives in `src/faces/<name>/`,
 * never imports another face, and is listed once in `src/faces/index.ts`.
 *
 * Method shorthand on purpose: a `Face<LkmConfig>` is then a `Face` in the registry's list,
 * and the app hands each face the section its own `loadConfig` made.
 */
export interface Face<Config = unknown, Schema extends z.ZodObject = z.ZodObject> {
  /**
   * Lower-case name (`[a-z][a-z0-9]*`): the value in `FACES`, the migration component, the
   * prefix of its tables (`<name>_…`), the `face` of its audit entries.
   */
  readonly name: string;
  /** The URL prefix of its scope, e.g. `/key-management/v1`; every route of the face is under it. */
  readonly prefix: string;
  /**
   * The environment variables it reads, one zod object (names are a contract: README table).
   * Validated only when the face is enabled; every issue is listed with the core's problems.
   */
  readonly configSchema: Schema;
  /**
   * Its typed configuration section from the validated variables. Rules that span variables
   * or read files push one line per problem onto `problems` (never a secret value); the
   * section is discarded when any problem is found anywhere. The result is deep-frozen.
   */
  loadConfig(env: z.output<Schema>, problems: string[]): Config;
  /**
   * Its schema, versions 1..n of its own component (`name`): applied in order, each once, in
   * the start-up migration transaction. New tables are prefixed `<name>_`.
   */
  readonly migrations: readonly Migration[];
  /** Its error codes (defineCatalogue in its errors.ts); the core's shared codes stay usable. */
  readonly errors: FaceCatalogue<string>;
  /**
   * Largest request body (bytes) of every route of the face unless a route sets its own;
   * beyond it: 413 REQ_ERR_BODY_TOO_LARGE in the face's error body.
   */
  bodyLimit(config: Config, core: CoreConfig): number;
  /** Writes every error and 404 answer of the face's scope (status and `strongroom-error-code` are set first). */
  readonly errorBody: ErrorBodyFormat;
  /**
   * Mount the face. `scope` is its own encapsulated plugin context under `prefix`, already
   * holding the face's body limit, error handler and 404 handler, and the root's JSON-only
   * parser: a face with other media types calls `scope.removeAllContentTypeParsers()` and adds
   * its own. Here it adds its authentication hooks (inside its scope, never by URL matching) and
   * its routes, and tells the core what to check and count.
   */
  register(scope: FastifyInstance, core: CoreContext, config: Config): Promise<void>;
  /** Its `strongroom` commands (every known face's, whether enabled or not: the CLI runs beside the service). */
  readonly cli?: readonly Command[];
}

/** Result of one readiness check: resolve = ok; reject or a timeout = failed. */
export type ReadinessCheck = () => Promise<unknown>;

/** What every face is given: the shared services, already open, and hooks into the core. */
export interface CoreContext {
  /** The core's configuration section (server, database, token, audit, admin token, …). */
  readonly config: CoreConfig;
  /** The migrated database (every enabled face's migrations applied). */
  readonly db: Database;
  /** The token, logged in, service keys present, custody checked. */
  readonly keyStore: KeyStore;
  /** Append an event to the audit chain (refused with AUDIT_ERR_UNAVAILABLE when it cannot be kept). */
  readonly audit: RecordAuditEvent;
  /** Milliseconds since the epoch; tests move it. */
  readonly clock: () => number;
  /** The application's logger (a request's own is `request.log`). */
  readonly log: FastifyBaseLogger;
  /** One warning per message per minute while a dependency is degraded (the database, say). */
  degraded(message: string, err: unknown): void;
  /** True from the moment shutdown begins (new requests are refused 503 by the core). */
  isClosing(): boolean;
  /** The keypairs the admin API manages; a face that caches their state listens for changes. */
  readonly keys: {
    readonly lifecycle: KeyLifecycle;
    /** Called with a keypair id after an admin act changed its state. */
    onChange(listener: (keypairId: string) => void): void;
  };
  /** Add a check to `GET /ready` (its result appears under `checks.<name>`); before the app is ready. */
  addReadinessCheck(name: string, check: ReadinessCheck): void;
  /** Add a section to `GET /admin/v1/runtime` (read on every call; JSON-serialisable). */
  addRuntimeFigures(name: string, read: () => unknown): void;
}

/** A face enabled by `FACES`, with the configuration section its own `loadConfig` made. */
export interface EnabledFace {
  readonly face: Face;
  readonly config: unknown;
}
