import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { toBuffer, type Queryable } from '../db/database.js';
import { digestsEqual, hashOpaqueToken, isOpaqueToken, newOpaqueToken } from './opaque-token.js';

/** Who a valid bearer token stands for. */
export interface BearerPrincipal {
  /** The OAuth client the token was issued to. */
  clientId: string;
  /** A narrower subject within the client (e.g. a signing seat), or null. */
  subject: string | null;
  /** Space-separated scope tokens (RFC 6749 §3.3), possibly empty. */
  scope: string;
  issuedAt: Date;
  expiresAt: Date;
}

/** Why a token is refused. A token that is malformed or was purged is `unknown`. */
export type BearerRefusal = 'unknown' | 'expired' | 'revoked';

export type BearerVerification = { ok: true; principal: BearerPrincipal } | { ok: false; reason: BearerRefusal };

/** One stored token: never the token itself, only its SHA-256. */
export interface BearerTokenRow extends BearerPrincipal {
  tokenHash: Buffer;
  revokedAt: Date | null;
}

/** Where tokens live. The database implementation is {@link PgBearerTokenStorage}. */
export interface BearerTokenStorage {
  insert(realm: string, row: BearerTokenRow): Promise<void>;
  findByHash(realm: string, tokenHash: Buffer): Promise<BearerTokenRow | undefined>;
  /** Mark one token revoked at `at`; false when it is unknown or already revoked. */
  revoke(realm: string, tokenHash: Buffer, at: Date): Promise<boolean>;
  /** Revoke every live token of a client; returns how many. */
  revokeClient(realm: string, clientId: string, at: Date): Promise<number>;
  /** Delete tokens that expired before `before`; returns how many. */
  purgeExpired(realm: string, before: Date): Promise<number>;
}

interface Raw {
  token_hash: unknown;
  client_id: string;
  subject: string | null;
  scope: string;
  issued_at: Date;
  expires_at: Date;
  revoked_at: Date | null;
}

/** Bearer tokens in Postgres / PGlite (table `auth_bearer_token`, migration 30). */
export class PgBearerTokenStorage implements BearerTokenStorage {
  readonly #db: Queryable;

  constructor(db: Queryable) {
    this.#db = db;
  }

  async insert(realm: string, row: BearerTokenRow): Promise<void> {
    await this.#db.query(
      `INSERT INTO auth_bearer_token (token_hash, realm, client_id, subject, scope, issued_at, expires_at, revoked_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
      [row.tokenHash, realm, row.clientId, row.subject, row.scope, row.issuedAt, row.expiresAt, row.revokedAt],
    );
  }

  async findByHash(realm: string, tokenHash: Buffer): Promise<BearerTokenRow | undefined> {
    const { rows } = await this.#db.query<Raw>(
      `SELECT token_hash, client_id, subject, scope, issued_at, expires_at, revoked_at
       FROM auth_bearer_token WHERE token_hash = $1 AND realm = $2`,
      [tokenHash, realm],
    );
    const r = rows[0];
    if (!r) return undefined;
    return {
      tokenHash: toBuffer(r.token_hash),
      clientId: r.client_id,
      subject: r.subject,
      scope: r.scope,
      issuedAt: new Date(r.issued_at),
      expiresAt: new Date(r.expires_at),
      revokedAt: r.revoked_at === null ? null : new Date(r.revoked_at),
    };
  }

  async revoke(realm: string, tokenHash: Buffer, at: Date): Promise<boolean> {
    const { rowCount } = await this.#db.query(
      'UPDATE auth_bearer_token SET revoked_at = $3 WHERE token_hash = $1 AND realm = $2 AND revoked_at IS NULL',
      [tokenHash, realm, at],
    );
    return rowCount === 1;
  }

  async revokeClient(realm: string, clientId: string, at: Date): Promise<number> {
    const { rowCount } = await this.#db.query(
      `UPDATE auth_bearer_token SET revoked_at = $3
       WHERE realm = $1 AND client_id = $2 AND revoked_at IS NULL AND expires_at > $3`,
      [realm, clientId, at],
    );
    return rowCount;
  }

  async purgeExpired(realm: string, before: Date): Promise<number> {
    const { rowCount } = await this.#db.query('DELETE FROM auth_bearer_token WHERE realm = $1 AND expires_at < $2', [
      realm,
      before,
    ]);
    return rowCount;
  }
}

/** RFC 6749 §3.3: scope tokens of %x21 / %x23-5B / %x5D-7E, separated by single spaces. */
const SCOPE = /^(?:[\x21\x23-\x5B\x5D-\x7E]+(?: [\x21\x23-\x5B\x5D-\x7E]+)*)?$/;
const MAX_NAME = 256;
const MAX_SCOPE = 1024;

export interface BearerTokensOptions {
  storage: BearerTokenStorage;
  /** Who owns these tokens (a face, e.g. `signing`): a token of one realm is unknown in every other. */
  realm: string;
  /** Milliseconds since the epoch; injected so tests control time. */
  clock?: () => number;
  /** Longest lifetime `issue` accepts, in seconds (default 86,400). */
  maxTtlSec?: number;
}

export interface IssueRequest {
  clientId: string;
  subject?: string | null;
  scope?: string;
  /** Lifetime in seconds (e.g. an OAuth client's accessTokenValidity). */
  ttlSec: number;
}

/** A freshly issued token: `token` is shown to the client once and never stored. */
export interface IssuedToken {
  token: string;
  principal: BearerPrincipal;
}

/**
 * Opaque bearer tokens (RFC 6750) issued, verified and revoked through the database.
 *
 * There is no cache: every `verify` is one lookup by primary key, so a revocation or expiry is
 * honoured by every instance from the moment it is committed (the bound is zero).
 */
export class BearerTokens {
  readonly #storage: BearerTokenStorage;
  readonly #realm: string;
  readonly #clock: () => number;
  readonly #maxTtlSec: number;

  constructor(options: BearerTokensOptions) {
    if (typeof options.realm !== 'string' || !/^[a-z][a-z0-9-]{0,63}$/.test(options.realm)) {
      throw new Error('bearer-tokens: realm must be 1..64 of a-z, 0-9 and -, starting with a letter');
    }
    const maxTtl = options.maxTtlSec ?? 86_400;
    if (!Number.isSafeInteger(maxTtl) || maxTtl < 1) throw new Error('bearer-tokens: maxTtlSec must be a positive integer');
    this.#storage = options.storage;
    this.#realm = options.realm;
    this.#clock = options.clock ?? Date.now;
    this.#maxTtlSec = maxTtl;
  }

  /** Issue a new token; throws a TypeError on a malformed request (a programming error of the face). */
  async issue(request: IssueRequest): Promise<IssuedToken> {
    const { clientId, ttlSec } = request;
    const subject = request.subject ?? null;
    const scope = request.scope ?? '';
    if (typeof clientId !== 'string' || clientId.length === 0 || clientId.length > MAX_NAME) {
      throw new TypeError(`clientId must be 1..${MAX_NAME} characters`);
    }
    if (subject !== null && (typeof subject !== 'string' || subject.length === 0 || subject.length > MAX_NAME)) {
      throw new TypeError(`subject must be null or 1..${MAX_NAME} characters`);
    }
    if (typeof scope !== 'string' || scope.length > MAX_SCOPE || !SCOPE.test(scope)) {
      throw new TypeError('scope must be space-separated RFC 6749 scope tokens');
    }
    if (!Number.isSafeInteger(ttlSec) || ttlSec < 1 || ttlSec > this.#maxTtlSec) {
      throw new TypeError(`ttlSec must be an integer in 1..${this.#maxTtlSec}`);
    }
    const now = this.#clock();
    const token = newOpaqueToken();
    const principal: BearerPrincipal = {
      clientId,
      subject,
      scope,
      issuedAt: new Date(now),
      expiresAt: new Date(now + ttlSec * 1000),
    };
    await this.#storage.insert(this.#realm, { ...principal, tokenHash: hashOpaqueToken(token), revokedAt: null });
    return { token, principal };
  }

  /** The principal of a live token, or why it is refused. */
  async verify(token: string): Promise<BearerVerification> {
    if (!isOpaqueToken(token)) return { ok: false, reason: 'unknown' };
    const hash = hashOpaqueToken(token);
    const row = await this.#storage.findByHash(this.#realm, hash);
    // The lookup matched on the hash already; the fixed-time compare keeps any storage that
    // matches loosely (or a future cache) from turning into a timing oracle.
    if (!row || !digestsEqual(row.tokenHash, hash)) return { ok: false, reason: 'unknown' };
    if (row.revokedAt !== null) return { ok: false, reason: 'revoked' };
    if (row.expiresAt.getTime() <= this.#clock()) return { ok: false, reason: 'expired' };
    const { clientId, subject, scope, issuedAt, expiresAt } = row;
    return { ok: true, principal: { clientId, subject, scope, issuedAt, expiresAt } };
  }

  /** Revoke one token (RFC 7009); false when it is unknown, malformed or already revoked. */
  async revoke(token: string): Promise<boolean> {
    if (!isOpaqueToken(token)) return false;
    return this.#storage.revoke(this.#realm, hashOpaqueToken(token), new Date(this.#clock()));
  }

  /** Revoke every live token of a client (its secret changed, it was deleted); returns how many. */
  async revokeAllForClient(clientId: string): Promise<number> {
    return this.#storage.revokeClient(this.#realm, clientId, new Date(this.#clock()));
  }

  /**
   * Delete the rows of tokens expired more than `graceSec` ago (default 0). A purged token is
   * `unknown` from then on: it still never works again.
   */
  async purgeExpired(graceSec = 0): Promise<number> {
    return this.#storage.purgeExpired(this.#realm, new Date(this.#clock() - graceSec * 1000));
  }
}

/** Why the bearer hook refused a request: no usable `Authorization: Bearer` header, or the token's refusal. */
export type BearerFailure = 'missing' | BearerRefusal;

export interface BearerAuthOptions {
  tokens: BearerTokens;
  /**
   * The error to throw for a refusal, in the face's own catalogue and body format (for OAuth,
   * RFC 6750 §3 `invalid_token` with a `WWW-Authenticate: Bearer` header).
   */
  failure: (reason: BearerFailure, request: FastifyRequest) => Error;
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The authenticated bearer principal; null outside a scope with bearer-auth, or before it ran. */
    bearer: BearerPrincipal | null;
  }
}

/** RFC 6750 §2.1: `Bearer` (any case), one space, the token. */
const BEARER = /^Bearer +(\S+)$/i;

async function bearerAuth(app: FastifyInstance, opts: BearerAuthOptions): Promise<void> {
  if (!(opts.tokens instanceof BearerTokens)) throw new Error('bearer-auth: a BearerTokens instance is required');
  if (typeof opts.failure !== 'function') throw new Error('bearer-auth: a failure function is required');
  app.decorateRequest('bearer', null);
  app.addHook('onRequest', async (request) => {
    const match = BEARER.exec(request.headers.authorization ?? '');
    if (!match?.[1]) throw opts.failure('missing', request);
    const result = await opts.tokens.verify(match[1]);
    if (!result.ok) throw opts.failure(result.reason, request);
    request.bearer = result.principal;
  });
}

/**
 * Bearer authentication for every route of the scope that registers it (a face's scope, never the
 * root): wrapped with fastify-plugin so its hook and `request.bearer` reach that scope's routes.
 */
export const bearerAuthPlugin = fp(bearerAuth, { name: 'bearer-auth', fastify: '5.x' });
