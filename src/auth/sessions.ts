import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { toBuffer, type Queryable } from '../db/database.js';
import { hashOpaqueToken, isOpaqueToken, newOpaqueToken } from './opaque-token.js';

/** A live session as the face sees it; the id itself is only in the cookie. */
export interface OperatorSession {
  operator: string;
  createdAt: Date;
  /** When the session ends unless it is used again (slides on every verify, never past `expiresAt`). */
  idleExpiresAt: Date;
  /** The absolute end, fixed at creation. */
  expiresAt: Date;
  /** The CSRF token bound to this session (send it in `X-CSRF-TOKEN`). */
  csrfToken: string;
}

/** A session just created or rotated: `id` goes into the cookie and is never stored. */
export interface NewOperatorSession extends OperatorSession {
  id: string;
}

/** `unknown`: no such session (never existed, ended, rotated away or purged). */
export type SessionRefusal = 'unknown' | 'idle' | 'expired';

export type SessionVerification = { ok: true; session: OperatorSession } | { ok: false; reason: SessionRefusal };

export type SessionRotation = { ok: true; session: NewOperatorSession } | { ok: false; reason: SessionRefusal };

/** One stored session: the SHA-256 of its id, never the id. */
export interface SessionRow {
  idHash: Buffer;
  operator: string;
  csrfSecret: Buffer;
  createdAt: Date;
  idleExpiresAt: Date;
  expiresAt: Date;
}

/** Where sessions live. The database implementation is {@link PgSessionStorage}. */
export interface SessionStorage {
  insert(realm: string, row: SessionRow): Promise<void>;
  /** Slide the idle expiry of a live session to min(`idleUntil`, its absolute end); undefined when none is live at `now`. */
  touch(realm: string, idHash: Buffer, now: Date, idleUntil: Date): Promise<SessionRow | undefined>;
  /** The stored expiries of a session, live or not (only to tell why one was refused). */
  expiries(realm: string, idHash: Buffer): Promise<{ idleExpiresAt: Date; expiresAt: Date } | undefined>;
  /** Move a live session to a new id and CSRF secret; undefined when none is live at `now`. */
  rekey(realm: string, oldHash: Buffer, newHash: Buffer, csrfSecret: Buffer, now: Date, idleUntil: Date): Promise<SessionRow | undefined>;
  delete(realm: string, idHash: Buffer): Promise<boolean>;
  deleteOperator(realm: string, operator: string): Promise<number>;
  purgeExpired(realm: string, now: Date): Promise<number>;
}

interface Raw {
  id_hash: unknown;
  operator: string;
  csrf_secret: unknown;
  created_at: Date;
  idle_expires_at: Date;
  expires_at: Date;
}

const RETURNING = 'RETURNING id_hash, operator, csrf_secret, created_at, idle_expires_at, expires_at';

function fromRaw(r: Raw): SessionRow {
  return {
    idHash: toBuffer(r.id_hash),
    operator: r.operator,
    csrfSecret: toBuffer(r.csrf_secret),
    createdAt: new Date(r.created_at),
    idleExpiresAt: new Date(r.idle_expires_at),
    expiresAt: new Date(r.expires_at),
  };
}

/** Operator sessions in Postgres / PGlite (table `auth_session`, migration 30): every instance sees them. */
export class PgSessionStorage implements SessionStorage {
  readonly #db: Queryable;

  constructor(db: Queryable) {
    this.#db = db;
  }

  async insert(realm: string, row: SessionRow): Promise<void> {
    await this.#db.query(
      `INSERT INTO auth_session (id_hash, realm, operator, csrf_secret, created_at, last_seen_at, idle_expires_at, expires_at)
       VALUES ($1, $2, $3, $4, $5, $5, $6, $7)`,
      [row.idHash, realm, row.operator, row.csrfSecret, row.createdAt, row.idleExpiresAt, row.expiresAt],
    );
  }

  async touch(realm: string, idHash: Buffer, now: Date, idleUntil: Date): Promise<SessionRow | undefined> {
    const { rows } = await this.#db.query<Raw>(
      `UPDATE auth_session SET last_seen_at = $3, idle_expires_at = LEAST($4::timestamptz, expires_at)
       WHERE id_hash = $1 AND realm = $2 AND idle_expires_at > $3 AND expires_at > $3 ${RETURNING}`,
      [idHash, realm, now, idleUntil],
    );
    return rows[0] && fromRaw(rows[0]);
  }

  async expiries(realm: string, idHash: Buffer): Promise<{ idleExpiresAt: Date; expiresAt: Date } | undefined> {
    const { rows } = await this.#db.query<{ idle_expires_at: Date; expires_at: Date }>(
      'SELECT idle_expires_at, expires_at FROM auth_session WHERE id_hash = $1 AND realm = $2',
      [idHash, realm],
    );
    const r = rows[0];
    return r && { idleExpiresAt: new Date(r.idle_expires_at), expiresAt: new Date(r.expires_at) };
  }

  async rekey(
    realm: string,
    oldHash: Buffer,
    newHash: Buffer,
    csrfSecret: Buffer,
    now: Date,
    idleUntil: Date,
  ): Promise<SessionRow | undefined> {
    const { rows } = await this.#db.query<Raw>(
      `UPDATE auth_session
       SET id_hash = $3, csrf_secret = $4, last_seen_at = $5, idle_expires_at = LEAST($6::timestamptz, expires_at)
       WHERE id_hash = $1 AND realm = $2 AND idle_expires_at > $5 AND expires_at > $5 ${RETURNING}`,
      [oldHash, realm, newHash, csrfSecret, now, idleUntil],
    );
    return rows[0] && fromRaw(rows[0]);
  }

  async delete(realm: string, idHash: Buffer): Promise<boolean> {
    const { rowCount } = await this.#db.query('DELETE FROM auth_session WHERE id_hash = $1 AND realm = $2', [idHash, realm]);
    return rowCount === 1;
  }

  async deleteOperator(realm: string, operator: string): Promise<number> {
    const { rowCount } = await this.#db.query('DELETE FROM auth_session WHERE realm = $1 AND operator = $2', [
      realm,
      operator,
    ]);
    return rowCount;
  }

  async purgeExpired(realm: string, now: Date): Promise<number> {
    const { rowCount } = await this.#db.query(
      'DELETE FROM auth_session WHERE realm = $1 AND (idle_expires_at <= $2 OR expires_at <= $2)',
      [realm, now],
    );
    return rowCount;
  }
}

export interface OperatorSessionsOptions {
  storage: SessionStorage;
  /** Who owns these sessions (default `console`). */
  realm?: string;
  /** Milliseconds since the epoch; injected so tests control time. */
  clock?: () => number;
  /** Idle timeout in seconds (default 900, at least 30). */
  idleTimeoutSec?: number;
  /** Absolute lifetime in seconds (default 28,800, at least the idle timeout). */
  maxAgeSec?: number;
}

/** Domain separation of the CSRF MAC from any other use of the session secret. */
const CSRF_CONTEXT = Buffer.from('strongroom csrf v1\0', 'utf8');
const MAX_OPERATOR = 256;

/**
 * Server-side operator sessions (for the console): the cookie carries a 256-bit random id, the
 * database its SHA-256 (the id is a high-entropy token like a bearer token, see opaque-token.ts),
 * so a copy of the table opens no session. A session ends after `idleTimeoutSec` without use or
 * at `maxAgeSec` after login, whichever is first; every instance honours both because every
 * verify is a conditional UPDATE in the database.
 *
 * CSRF: the token is HMAC-SHA256 over the session id's hash under a random secret stored with the
 * session, so it is bound to that one session, changes when the id rotates, and reveals nothing
 * of the id.
 */
export class OperatorSessions {
  readonly #storage: SessionStorage;
  readonly #realm: string;
  readonly #clock: () => number;
  readonly #idleMs: number;
  readonly #maxAgeMs: number;

  constructor(options: OperatorSessionsOptions) {
    const realm = options.realm ?? 'console';
    if (!/^[a-z][a-z0-9-]{0,63}$/.test(realm)) throw new Error('sessions: realm must be 1..64 of a-z, 0-9 and -');
    const idle = options.idleTimeoutSec ?? 900;
    const maxAge = options.maxAgeSec ?? 28_800;
    if (!Number.isSafeInteger(idle) || idle < 30) throw new Error('sessions: idleTimeoutSec must be an integer of at least 30');
    if (!Number.isSafeInteger(maxAge) || maxAge < idle) {
      throw new Error('sessions: maxAgeSec must be an integer of at least idleTimeoutSec');
    }
    this.#storage = options.storage;
    this.#realm = realm;
    this.#clock = options.clock ?? Date.now;
    this.#idleMs = idle * 1000;
    this.#maxAgeMs = maxAge * 1000;
  }

  /** A new session for `operator` with a new id (call at every login, after the credentials checked out). */
  async create(operator: string): Promise<NewOperatorSession> {
    if (typeof operator !== 'string' || operator.length === 0 || operator.length > MAX_OPERATOR) {
      throw new TypeError(`operator must be 1..${MAX_OPERATOR} characters`);
    }
    const now = this.#clock();
    const id = newOpaqueToken();
    const row: SessionRow = {
      idHash: hashOpaqueToken(id),
      operator,
      csrfSecret: randomBytes(32),
      createdAt: new Date(now),
      idleExpiresAt: new Date(now + this.#idleMs),
      expiresAt: new Date(now + this.#maxAgeMs),
    };
    await this.#storage.insert(this.#realm, row);
    return { id, ...this.#view(row) };
  }

  /** Verify the cookie's id and slide its idle expiry; the session or why it is refused. */
  async verify(id: string): Promise<SessionVerification> {
    if (!isOpaqueToken(id)) return { ok: false, reason: 'unknown' };
    const hash = hashOpaqueToken(id);
    const now = this.#clock();
    const row = await this.#storage.touch(this.#realm, hash, new Date(now), new Date(now + this.#idleMs));
    if (row) return { ok: true, session: this.#view(row) };
    return { ok: false, reason: await this.#why(hash, now) };
  }

  /**
   * Give a live session a new id and CSRF token, keeping its operator and absolute end (e.g. after
   * a second factor or a change of privileges); the old id stops working at once.
   */
  async rotate(id: string): Promise<SessionRotation> {
    if (!isOpaqueToken(id)) return { ok: false, reason: 'unknown' };
    const hash = hashOpaqueToken(id);
    const now = this.#clock();
    const next = newOpaqueToken();
    const row = await this.#storage.rekey(
      this.#realm,
      hash,
      hashOpaqueToken(next),
      randomBytes(32),
      new Date(now),
      new Date(now + this.#idleMs),
    );
    if (row) return { ok: true, session: { id: next, ...this.#view(row) } };
    return { ok: false, reason: await this.#why(hash, now) };
  }

  /** End one session (logout); false when it did not exist. */
  async end(id: string): Promise<boolean> {
    if (!isOpaqueToken(id)) return false;
    return this.#storage.delete(this.#realm, hashOpaqueToken(id));
  }

  /** End every session of `operator` (logout everywhere, operator disabled); returns how many. */
  async endAllFor(operator: string): Promise<number> {
    return this.#storage.deleteOperator(this.#realm, operator);
  }

  /** Delete sessions past either expiry; returns how many. */
  async purgeExpired(): Promise<number> {
    return this.#storage.purgeExpired(this.#realm, new Date(this.#clock()));
  }

  #view(row: SessionRow): OperatorSession {
    return {
      operator: row.operator,
      createdAt: row.createdAt,
      idleExpiresAt: row.idleExpiresAt,
      expiresAt: row.expiresAt,
      csrfToken: csrfToken(row.csrfSecret, row.idHash),
    };
  }

  async #why(hash: Buffer, now: number): Promise<SessionRefusal> {
    const stored = await this.#storage.expiries(this.#realm, hash);
    if (!stored) return 'unknown';
    return stored.expiresAt.getTime() <= now ? 'expired' : 'idle';
  }
}

function csrfToken(secret: Buffer, idHash: Buffer): string {
  return createHmac('sha256', secret).update(CSRF_CONTEXT).update(idHash).digest('base64url');
}

/**
 * True when `presented` (the `X-CSRF-TOKEN` header) is the token of `session`, compared in fixed
 * time. A missing, repeated (array) or differently sized value is false.
 */
export function csrfTokenMatches(session: OperatorSession, presented: unknown): boolean {
  if (typeof presented !== 'string') return false;
  const expected = Buffer.from(session.csrfToken, 'utf8');
  const given = Buffer.from(presented, 'utf8');
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/** The value of cookie `name` in a `Cookie` header (RFC 6265 §5.4), or undefined; the first wins. */
export function readCookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const pair of header.split(';')) {
    const eq = pair.indexOf('=');
    if (eq > 0 && pair.slice(0, eq).trim() === name) return pair.slice(eq + 1).trim();
  }
  return undefined;
}

export interface SessionCookieOptions {
  /** The console's path: the cookie is sent nowhere else. */
  path: string;
  /** Set whenever the service or its public URL is https. */
  secure: boolean;
}

/**
 * A `Set-Cookie` value for the session id: HttpOnly (no script reads it), SameSite=Strict (no
 * cross-site request carries it), Secure over https, limited to `path`. It has no Max-Age: the
 * server ends the session, the browser forgets it when it closes. `value` undefined clears it.
 */
export function sessionCookie(name: string, value: string | undefined, options: SessionCookieOptions): string {
  if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) throw new TypeError('cookie name must be an RFC 6265 token');
  if (value !== undefined && !isOpaqueToken(value)) throw new TypeError('cookie value must be a session id');
  if (!/^\/[\x21-\x3a\x3c-\x7e]*$/.test(options.path)) throw new TypeError('cookie path must start with / and hold no ; or space');
  const parts = [`${name}=${value ?? ''}`, `Path=${options.path}`, 'HttpOnly', 'SameSite=Strict'];
  if (options.secure) parts.push('Secure');
  if (value === undefined) parts.push('Max-Age=0');
  return parts.join('; ');
}
