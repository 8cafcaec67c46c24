import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import { z } from 'zod';
import { SOFTHSM_CANDIDATES, findSoftHsmModule } from '../hsm/index.js';
import type { EnabledFace, Face } from './core/face.js';
import { knownFaces } from './faces/index.js';
import { Secret } from './secret.js';

/**
 * The environment the core reads, as one schema; each enabled face adds its own (`Face.configSchema`).
 * Names are a contract (scripts, README). Every field-level rule lives here; rules that span
 * fields or read files follow in `loadConfig`.
 */
export const envSchema = z.object({
  FACES: z.string().default('lkm'),
  PORT: z.coerce.number().int().min(0).max(65535).default(8080),
  HOST: z.string().default('127.0.0.1'),
  PUBLIC_URL: z
    .url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL' })
    .optional(),
  TRUST_PROXY: z.string().optional(),
  DATABASE_URL: z
    .string()
    .regex(/^postgres(ql)?:\/\//, 'must be a postgres:// or postgresql:// URL')
    .optional(),
  DATABASE_POOL_SIZE: z.coerce.number().int().min(1).max(100).default(10),
  DATABASE_STATEMENT_TIMEOUT_MS: z.coerce.number().int().min(0).max(3_600_000).default(30_000),
  DATABASE_LOCK_TIMEOUT_MS: z.coerce.number().int().min(0).max(3_600_000).default(5_000),
  DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: z.coerce.number().int().min(0).max(3_600_000).default(10_000),
  DATA_DIR: z.string().default('var/data'),
  PKCS11_MODULE: z.string().optional(),
  PKCS11_TOKEN_LABEL: z.string().min(1).max(32, 'a PKCS#11 token label has at most 32 characters').default('strongroom'),
  PKCS11_PIN: z.string().optional(),
  PKCS11_PIN_FILE: z.string().optional(),
  PKCS11_SESSIONS: z.coerce.number().int().min(1).max(64).default(4),
  PKCS11_SESSION_WAIT_MS: z.coerce.number().int().min(10).max(60000).default(5000),
  ADMIN_TOKEN: z.string().min(32, 'must be at least 32 characters').optional(),
  ADMIN_TOKEN_FILE: z.string().optional(),
  TLS_CERT: z.string().optional(),
  TLS_KEY: z.string().optional(),
  TLS_PFX: z.string().optional(),
  TLS_PFX_PASSPHRASE: z.string().optional(),
  BODY_LIMIT: z.coerce.number().int().min(1024).max(1048576).default(16384),
  REQUEST_TIMEOUT_MS: z.coerce.number().int().min(1000).max(600000).default(30000),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  AUDIT_SPOOL_DIR: z.string().optional(),
  AUDIT_RETENTION_DAYS: z.coerce.number().int().min(0).max(36500).default(0),
  AUDIT_SPOOL_MAX_MB: z.coerce.number().int().min(1).max(1_048_576).default(1024),
  ADMIN_FAILURE_LIMIT: z.coerce.number().int().min(1).max(100000).default(10),
  ADMIN_FAILURE_WINDOW_SEC: z.coerce.number().int().min(1).max(86400).default(60),
  AUDIT_REFUSALS_PER_ADDRESS: z.coerce.number().int().min(1).max(1000000).default(10),
  AUDIT_REFUSALS_PER_MINUTE: z.coerce.number().int().min(1).max(10000000).default(1000),
});

export type Env = z.infer<typeof envSchema>;
export type EnvName = keyof Env;

export type TlsConfig =
  | { kind: 'pem'; cert: Buffer; key: Secret<Buffer> }
  | { kind: 'pfx'; pfx: Secret<Buffer>; passphrase: Secret | undefined };

export type DatabaseConfig =
  | {
      kind: 'postgres';
      url: Secret;
      poolSize: number;
      /** Set on every connection; 0 leaves the server's own setting. */
      timeouts: { statementMs: number; lockMs: number; idleInTransactionMs: number };
    }
  | { kind: 'embedded'; dataDir: string };

/** The core's configuration section: what every face shares. */
export interface CoreConfig {
  server: {
    port: number;
    host: string;
    /** Host and port clients sign with Hawk when a proxy sits in front (from PUBLIC_URL). */
    publicUrl: { url: string; host: string; port: number } | undefined;
    trustProxy: boolean | number | string[];
    bodyLimit: number;
    /** Longest time to receive a request and to answer it (503 SERVICE_ERR_TIMEOUT after). */
    requestTimeoutMs: number;
  };
  tls: TlsConfig | undefined;
  database: DatabaseConfig;
  dataDir: string;
  /** `sessionWaitMs`: longest wait for a free session before HSM_ERR_BUSY. */
  pkcs11: { modulePath: string; tokenLabel: string; pin: Secret; sessions: number; sessionWaitMs: number };
  adminToken: Secret | undefined;
  logLevel: Env['LOG_LEVEL'];
  audit: {
    /** Where audit entries wait (fsync'd) while the database cannot take them. */
    spoolDir: string;
    /** Entries older than this are removed, leaving a chain anchor; 0 keeps everything. */
    retentionDays: number;
    /** Largest spool file; when full, requests are refused (503) rather than served unaudited. */
    spoolMaxBytes: number;
  };
  /**
   * Refusals before authentication written in full per client address and in all, per minute;
   * the rest are counted in one `auth.refusals` entry per minute.
   */
  refusalSampling: { perAddress: number; perWindow: number };
  /** Wrong admin bearer tokens allowed per client address within the window. */
  adminFailures: { limit: number; windowSec: number };
}

/** The whole configuration: the core section and, in `FACES` order, each enabled face with its own. */
export interface Config extends CoreConfig {
  readonly faces: readonly EnabledFace[];
}

/** Every problem found in the configuration, one line each. */
export class ConfigError extends Error {
  readonly problems: readonly string[];

  constructor(problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/** A face name as `FACES` lists it (also its migration component and table prefix). */
const FACE_NAME = /^[a-z][a-z0-9]*$/;

/** Only our variables, with empty strings treated as unset (as docker-compose and systemd write them). */
function pick(env: Record<string, string | undefined>, faces: readonly Face[]): Record<string, string> {
  const out: Record<string, string> = {};
  const names = new Set([...Object.keys(envSchema.shape), ...faces.flatMap((f) => Object.keys(f.configSchema.shape))]);
  for (const name of names) {
    const value = env[name];
    if (value !== undefined && value !== '') out[name] = value;
  }
  return out;
}

/** A secret file holds the value; one trailing newline (as `echo` writes) is not part of it. */
function readSecretFile(path: string): string {
  return readFileSync(path, 'utf8').replace(/\r?\n$/, '');
}

function parseTrustProxy(value: string | undefined): boolean | number | string[] {
  if (value === undefined || value === 'false') return false;
  if (value === 'true') return true;
  if (/^\d+$/.test(value)) return Number(value);
  return value.split(',').map((s) => s.trim()).filter(Boolean);
}

/**
 * The faces `FACES` names, in its order: an unknown or repeated name is a problem. Only these
 * faces' variables are validated (a disabled face's settings are not read at all).
 */
function selectFaces(value: string, known: readonly Face[], problems: string[]): Face[] {
  const names = value.split(',').map((s) => s.trim()).filter(Boolean);
  if (names.length === 0) problems.push('FACES: name at least one face');
  const selected: Face[] = [];
  for (const name of names) {
    const face = known.find((f) => f.name === name);
    if (!face) problems.push(`FACES: unknown face "${name.slice(0, 40)}" (known: ${known.map((f) => f.name).join(', ')})`);
    else if (selected.includes(face)) problems.push(`FACES: ${name} is listed twice`);
    else selected.push(face);
  }
  return selected;
}

/**
 * Validate `env` once and return a frozen Config, or throw ConfigError listing every problem:
 * the core's and every enabled face's together. `known` is the registry (src/faces/index.ts);
 * tests add faces of their own. Nothing else in strongroom reads process.env.
 */
export function loadConfig(env: Record<string, string | undefined>, known: readonly Face[] = knownFaces()): Config {
  for (const face of known) {
    if (!FACE_NAME.test(face.name)) throw new TypeError(`face name ${face.name} is not [a-z][a-z0-9]*`);
  }
  const raw = pick(env, known);
  const problems: string[] = [];
  const parsed = envSchema.safeParse(raw);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) problems.push(`${issue.path.join('.')}: ${issue.message}`);
  }
  const faces = selectFaces(raw.FACES ?? 'lkm', known, problems);
  const sections = faces.map((face) => {
    const section = face.configSchema.safeParse(raw);
    if (!section.success) {
      for (const issue of section.error.issues) problems.push(`${issue.path.join('.')}: ${issue.message}`);
      return undefined;
    }
    return face.loadConfig(section.data, problems);
  });

  const readFile = (name: EnvName, secret: boolean): string | Buffer | undefined => {
    const path = raw[name];
    if (path === undefined) return undefined;
    try {
      return secret ? readSecretFile(path) : readFileSync(path);
    } catch (err) {
      problems.push(`${name}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
      return undefined;
    }
  };

  const oneOf = (direct: EnvName, file: EnvName, required: boolean): string | undefined => {
    if (raw[direct] !== undefined && raw[file] !== undefined) {
      problems.push(`${direct} and ${file} are both set; set only one`);
      return undefined;
    }
    if (raw[direct] !== undefined) return raw[direct];
    if (raw[file] !== undefined) {
      const value = readFile(file, true) as string | undefined;
      if (value === '') problems.push(`${file}: ${raw[file]} is empty`);
      return value || undefined;
    }
    if (required) problems.push(`${direct} or ${file} is required`);
    return undefined;
  };

  const pin = oneOf('PKCS11_PIN', 'PKCS11_PIN_FILE', true);
  const adminToken = oneOf('ADMIN_TOKEN', 'ADMIN_TOKEN_FILE', false);
  if (raw.ADMIN_TOKEN_FILE !== undefined && adminToken !== undefined && adminToken.length < 32) {
    problems.push('ADMIN_TOKEN_FILE: the token must be at least 32 characters');
  }

  let modulePath = raw.PKCS11_MODULE;
  if (modulePath === undefined) {
    modulePath = findSoftHsmModule();
    if (modulePath === undefined) {
      problems.push(`PKCS11_MODULE: not set, and no SoftHSM2 library in ${SOFTHSM_CANDIDATES.join(', ')}`);
    }
  } else {
    readFile('PKCS11_MODULE', false);
  }

  const tls = loadTls(raw, problems, readFile);

  if (problems.length > 0 || !parsed.success) throw new ConfigError(problems);
  const e = parsed.data;

  let publicUrl: Config['server']['publicUrl'];
  if (e.PUBLIC_URL !== undefined) {
    const url = new URL(e.PUBLIC_URL);
    publicUrl = {
      url: url.origin,
      host: url.hostname.toLowerCase(),
      port: url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port),
    };
  }

  const core: CoreConfig = {
    server: {
      port: e.PORT,
      host: e.HOST,
      publicUrl,
      trustProxy: parseTrustProxy(e.TRUST_PROXY),
      bodyLimit: e.BODY_LIMIT,
      requestTimeoutMs: e.REQUEST_TIMEOUT_MS,
    },
    tls,
    database:
      e.DATABASE_URL === undefined
        ? { kind: 'embedded', dataDir: resolve(e.DATA_DIR, 'db') }
        : {
            kind: 'postgres',
            url: new Secret(e.DATABASE_URL),
            poolSize: e.DATABASE_POOL_SIZE,
            timeouts: {
              statementMs: e.DATABASE_STATEMENT_TIMEOUT_MS,
              lockMs: e.DATABASE_LOCK_TIMEOUT_MS,
              idleInTransactionMs: e.DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS,
            },
          },
    dataDir: resolve(e.DATA_DIR),
    pkcs11: {
      modulePath: modulePath as string,
      tokenLabel: e.PKCS11_TOKEN_LABEL,
      pin: new Secret(pin as string),
      sessions: e.PKCS11_SESSIONS,
      sessionWaitMs: e.PKCS11_SESSION_WAIT_MS,
    },
    adminToken: adminToken === undefined ? undefined : new Secret(adminToken),
    logLevel: e.LOG_LEVEL,
    audit: {
      spoolDir: resolve(e.AUDIT_SPOOL_DIR ?? resolve(e.DATA_DIR, 'audit-spool')),
      retentionDays: e.AUDIT_RETENTION_DAYS,
      spoolMaxBytes: e.AUDIT_SPOOL_MAX_MB * 1024 * 1024,
    },
    refusalSampling: { perAddress: e.AUDIT_REFUSALS_PER_ADDRESS, perWindow: e.AUDIT_REFUSALS_PER_MINUTE },
    adminFailures: { limit: e.ADMIN_FAILURE_LIMIT, windowSec: e.ADMIN_FAILURE_WINDOW_SEC },
  };
  // The face objects themselves are not frozen (zod schemas cache lazily); their sections are.
  const enabled = faces.map((face, i): EnabledFace => Object.freeze({ face, config: deepFreeze(sections[i]) }));
  return Object.freeze({ ...deepFreeze(core), faces: Object.freeze(enabled) });
}

function loadTls(
  raw: Record<string, string>,
  problems: string[],
  readFile: (name: EnvName, secret: boolean) => string | Buffer | undefined,
): TlsConfig | undefined {
  const pem = raw.TLS_CERT !== undefined || raw.TLS_KEY !== undefined;
  const pfx = raw.TLS_PFX !== undefined;
  if (pem && pfx) {
    problems.push('TLS_CERT/TLS_KEY and TLS_PFX are both set; choose PEM files or one PKCS#12 file');
    return undefined;
  }
  if (raw.TLS_PFX_PASSPHRASE !== undefined && !pfx) problems.push('TLS_PFX_PASSPHRASE is set without TLS_PFX');
  if (pem) {
    if (raw.TLS_CERT === undefined) problems.push('TLS_KEY is set without TLS_CERT');
    if (raw.TLS_KEY === undefined) problems.push('TLS_CERT is set without TLS_KEY');
    const cert = readFile('TLS_CERT', false) as Buffer | undefined;
    const key = readFile('TLS_KEY', false) as Buffer | undefined;
    if (!cert || !key) return undefined;
    try {
      createSecureContext({ cert, key });
      // OpenSSL only notices a mismatch between keys of one algorithm; an RSA key with an EC
      // certificate would pass and then fail every handshake.
      if (!new X509Certificate(cert).checkPrivateKey(createPrivateKey(key))) throw Object.assign(new Error(), { code: 'KEY_MISMATCH' });
    } catch (err) {
      problems.push(`TLS_CERT/TLS_KEY: not a usable certificate and matching private key (${describe(err)})`);
      return undefined;
    }
    return { kind: 'pem', cert, key: new Secret(key) };
  }
  if (pfx) {
    const file = readFile('TLS_PFX', false) as Buffer | undefined;
    if (!file) return undefined;
    const passphrase = raw.TLS_PFX_PASSPHRASE;
    try {
      createSecureContext(passphrase === undefined ? { pfx: file } : { pfx: file, passphrase });
    } catch (err) {
      problems.push(`TLS_PFX: cannot open the PKCS#12 file (${describe(err)}); check TLS_PFX_PASSPHRASE`);
      return undefined;
    }
    return { kind: 'pfx', pfx: new Secret(file), passphrase: passphrase === undefined ? undefined : new Secret(passphrase) };
  }
  return undefined;
}

/** OpenSSL's reason without anything that could echo input back. */
function describe(err: unknown): string {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : 'unreadable';
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Buffer.isBuffer(value) && !(value instanceof Secret)) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
