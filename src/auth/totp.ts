import { Secret, TOTP } from 'otpauth';
import type { Queryable } from '../db/database.js';

export type TotpAlgorithm = 'SHA1' | 'SHA256' | 'SHA512';

/** How codes are made: RFC 6238 §4 (T0 = 0). */
export interface TotpParameters {
  algorithm: TotpAlgorithm;
  /** Digits per code, 6..8 (RFC 4226 §5.3). */
  digits: number;
  /** Seconds per time step X, 10..300. */
  period: number;
}

/** What every authenticator app understands (the Key URI format's defaults). */
export const DEFAULT_TOTP_PARAMETERS: Readonly<TotpParameters> = Object.freeze({ algorithm: 'SHA1', digits: 6, period: 30 });

/** Bytes in a new secret: 160 bits, RFC 4226 §4 R6's recommendation (and the SHA-1 output size). */
export const TOTP_SECRET_BYTES = 20;
/** Fewest secret bytes verify accepts: RFC 4226 §4 R6's 128-bit minimum. */
const MIN_SECRET_BYTES = 16;

function checkParameters(p: TotpParameters): void {
  if (!['SHA1', 'SHA256', 'SHA512'].includes(p.algorithm)) throw new TypeError('algorithm must be SHA1, SHA256 or SHA512');
  if (!Number.isSafeInteger(p.digits) || p.digits < 6 || p.digits > 8) throw new TypeError('digits must be 6..8');
  if (!Number.isSafeInteger(p.period) || p.period < 10 || p.period > 300) throw new TypeError('period must be 10..300 seconds');
}

/** A new random TOTP secret, base32 (RFC 4648, no padding): 160 bits from the OS CSPRNG. */
export function newTotpSecret(): string {
  return new Secret({ size: TOTP_SECRET_BYTES }).base32;
}

function decodeSecret(base32: string): Secret {
  let secret: Secret;
  try {
    secret = Secret.fromBase32(base32);
  } catch (err) {
    throw new TypeError('the TOTP secret is not base32', { cause: err });
  }
  if (secret.bytes.length < MIN_SECRET_BYTES) throw new TypeError(`a TOTP secret must have at least ${MIN_SECRET_BYTES} bytes`);
  return secret;
}

export interface TotpUriRequest extends Partial<TotpParameters> {
  secret: string;
  issuer: string;
  account: string;
}

/**
 * The `otpauth://totp/Issuer:account?secret=…&issuer=…&algorithm=…&digits=…&period=…` URI an
 * authenticator app enrols from (usually shown as a QR code, once).
 */
export function totpUri(request: TotpUriRequest): string {
  const params = { ...DEFAULT_TOTP_PARAMETERS, ...pick(request) };
  checkParameters(params);
  // The label is `issuer:account`: a colon in either would make it ambiguous.
  for (const [what, v] of [['issuer', request.issuer], ['account', request.account]] as const) {
    if (typeof v !== 'string' || v.length === 0 || v.length > 256 || v.includes(':')) {
      throw new TypeError(`${what} must be 1..256 characters without ':'`);
    }
  }
  return new TOTP({ ...params, issuer: request.issuer, label: request.account, secret: decodeSecret(request.secret) }).toString();
}

function pick(p: Partial<TotpParameters>): Partial<TotpParameters> {
  const out: Partial<TotpParameters> = {};
  if (p.algorithm !== undefined) out.algorithm = p.algorithm;
  if (p.digits !== undefined) out.digits = p.digits;
  if (p.period !== undefined) out.period = p.period;
  return out;
}

/** Remembers the newest accepted time step per subject. The database implementation is {@link PgTotpStepStorage}. */
export interface TotpStepStorage {
  /** Record `step` as used by `subject` if it is newer than the last one used; false otherwise. */
  claim(realm: string, subject: string, step: number, at: Date): Promise<boolean>;
  /** Forget a subject (its credential was deleted); false when there was nothing to forget. */
  forget(realm: string, subject: string): Promise<boolean>;
}

/** TOTP steps in Postgres / PGlite (table `auth_totp_step`, migration 30). */
export class PgTotpStepStorage implements TotpStepStorage {
  readonly #db: Queryable;

  constructor(db: Queryable) {
    this.#db = db;
  }

  async claim(realm: string, subject: string, step: number, at: Date): Promise<boolean> {
    // One statement, atomic per row: of two instances claiming one step, exactly one gets a row back.
    const { rows } = await this.#db.query(
      `INSERT INTO auth_totp_step (realm, subject, last_step, used_at) VALUES ($1, $2, $3, $4)
       ON CONFLICT (realm, subject) DO UPDATE SET last_step = EXCLUDED.last_step, used_at = EXCLUDED.used_at
       WHERE auth_totp_step.last_step < EXCLUDED.last_step
       RETURNING last_step`,
      [realm, subject, step, at],
    );
    return rows.length === 1;
  }

  async forget(realm: string, subject: string): Promise<boolean> {
    const { rowCount } = await this.#db.query('DELETE FROM auth_totp_step WHERE realm = $1 AND subject = $2', [
      realm,
      subject,
    ]);
    return rowCount === 1;
  }
}

/** `malformed`: not `digits` decimal digits; `invalid`: no match within the window; `reused`: its step (or a later one) was already used. */
export type TotpRefusal = 'malformed' | 'invalid' | 'reused';

export type TotpVerification = { ok: true; step: number } | { ok: false; reason: TotpRefusal };

export interface TotpVerifierOptions {
  storage: TotpStepStorage;
  /** Who owns the subjects (a face, e.g. `console` or `signing`). */
  realm: string;
  /** Milliseconds since the epoch; injected so tests control time. */
  clock?: () => number;
}

/**
 * RFC 6238 verification through `otpauth`, with the two rules of §5.2 the package leaves to its
 * caller: at most one step of drift either way, and each code accepted once: a step at or below
 * the last step accepted for the subject is refused, at every instance, because the last step is
 * claimed in the database. Counting failed attempts and locking out is the face's policy.
 */
export class TotpVerifier {
  readonly #storage: TotpStepStorage;
  readonly #realm: string;
  readonly #clock: () => number;

  constructor(options: TotpVerifierOptions) {
    if (!/^[a-z][a-z0-9-]{0,63}$/.test(options.realm)) throw new Error('totp: realm must be 1..64 of a-z, 0-9 and -');
    this.#storage = options.storage;
    this.#realm = options.realm;
    this.#clock = options.clock ?? Date.now;
  }

  /**
   * Check `code` for `subject` (e.g. an operator name or a credential id) with its base32
   * `secret`; on success its time step is spent. Throws a TypeError for a bad secret or parameters
   * (stored data, not caller input).
   */
  async verify(subject: string, secret: string, code: unknown, parameters: Partial<TotpParameters> = {}): Promise<TotpVerification> {
    if (typeof subject !== 'string' || subject.length === 0 || subject.length > 256) {
      throw new TypeError('subject must be 1..256 characters');
    }
    const params = { ...DEFAULT_TOTP_PARAMETERS, ...pick(parameters) };
    checkParameters(params);
    const key = decodeSecret(secret);
    // Digits only, exact length: otpauth's compare would throw on multi-byte input of the right length.
    if (typeof code !== 'string' || code.length !== params.digits || !/^[0-9]+$/.test(code)) {
      return { ok: false, reason: 'malformed' };
    }
    const now = this.#clock();
    const totp = new TOTP({ ...params, secret: key });
    const delta = totp.validate({ token: code, timestamp: now, window: 1 });
    if (delta === null) return { ok: false, reason: 'invalid' };
    const step = TOTP.counter({ period: params.period, timestamp: now }) + delta;
    const claimed = await this.#storage.claim(this.#realm, subject, step, new Date(now));
    return claimed ? { ok: true, step } : { ok: false, reason: 'reused' };
  }

  /** Forget a subject's last step (its credential or operator was deleted). */
  async forget(subject: string): Promise<boolean> {
    return this.#storage.forget(this.#realm, subject);
  }
}
