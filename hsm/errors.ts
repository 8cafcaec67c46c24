import pkcs11js from 'pkcs11js';
import type * as P11 from 'pkcs11js';

/**
 * Stable codes for everything the key store can report. Callers branch on these,
 * never on message text; the PKCS#11 return value (if any) is kept in `ckr`.
 */
export type HsmErrorCode =
  /** The PKCS#11 module could not be loaded or initialised. */
  | 'HSM_ERR_MODULE'
  /** No token (or more than one) carries the configured label. */
  | 'HSM_ERR_TOKEN_NOT_FOUND'
  /** The user PIN was refused, or the PIN is locked. */
  | 'HSM_ERR_LOGIN'
  /** The token cannot serve right now (session, device or login lost). */
  | 'HSM_ERR_UNAVAILABLE'
  /** Every session stayed busy for the whole acquire timeout: the token is overloaded, not broken. */
  | 'HSM_ERR_BUSY'
  /** No key object with the requested id. */
  | 'HSM_ERR_KEY_NOT_FOUND'
  /** Several key objects share one id: the store refuses to guess. */
  | 'HSM_ERR_KEY_AMBIGUOUS'
  /** A key with this id already exists in the token. */
  | 'HSM_ERR_KEY_EXISTS'
  /** The input was refused before it reached the token (length, size, shape). */
  | 'HSM_ERR_INPUT'
  /** The token refused to decrypt: padding, wrong key, out-of-range value. One code for all. */
  | 'HSM_ERR_DECRYPT'
  /** A stored secret did not authenticate (tampered, wrong context or wrong token). */
  | 'HSM_ERR_SECRET_INVALID'
  /** The token does not enforce what key custody relies on (CKA_WRAP_WITH_TRUSTED). */
  | 'HSM_ERR_CUSTODY'
  /** An imported key failed its consistency check. */
  | 'HSM_ERR_KEY_INVALID'
  /** A backup or wrapped-KEK file is malformed, tampered with, or made under another KEK. */
  | 'HSM_ERR_BACKUP_INVALID'
  /** The token already holds keys (or a KEK) and strongroom refuses to overwrite them. */
  | 'HSM_ERR_TOKEN_IN_USE'
  /** Anything else the token reported. */
  | 'HSM_ERR_INTERNAL'
  /** The key (or the token) does not allow this operation or scheme: wrong usage, mechanism not allowed. */
  | 'HSM_ERR_KEY_USAGE';

export interface HsmErrorOptions {
  cause?: unknown;
  ckr?: string;
}

/** The one error type thrown by `hsm/`. Messages never carry PINs or key material. */
export class HsmError extends Error {
  readonly code: HsmErrorCode;
  /** Name of the PKCS#11 return value that caused this error, e.g. `CKR_DEVICE_ERROR`. */
  readonly ckr: string | undefined;

  constructor(code: HsmErrorCode, message: string, options: HsmErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'HsmError';
    this.code = code;
    this.ckr = options.ckr;
  }
}

const ckrNames = new Map<number, string>();
for (const [name, value] of Object.entries(pkcs11js)) {
  if (name.startsWith('CKR_') && typeof value === 'number' && !ckrNames.has(value)) {
    ckrNames.set(value, name);
  }
}

/** The PKCS#11 return value of a pkcs11js error, or undefined for any other error. */
export function ckrOf(err: unknown): number | undefined {
  if (err instanceof pkcs11js.Pkcs11Error) return err.code;
  return undefined;
}

export function ckrName(code: number): string {
  return ckrNames.get(code) ?? `CKR_0x${code.toString(16)}`;
}

/**
 * Return values meaning the session, the login or the device is gone: the request cannot be
 * served now, and the session that saw it must not be reused.
 */
const unavailable = new Set<number>([
  pkcs11js.CKR_SESSION_HANDLE_INVALID,
  pkcs11js.CKR_SESSION_CLOSED,
  pkcs11js.CKR_SESSION_COUNT,
  pkcs11js.CKR_DEVICE_ERROR,
  pkcs11js.CKR_DEVICE_MEMORY,
  pkcs11js.CKR_DEVICE_REMOVED,
  pkcs11js.CKR_TOKEN_NOT_PRESENT,
  pkcs11js.CKR_TOKEN_NOT_RECOGNIZED,
  pkcs11js.CKR_USER_NOT_LOGGED_IN,
  pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED,
  pkcs11js.CKR_HOST_MEMORY,
]);

/**
 * Return values after which the session itself cannot be trusted: it is gone, the device or the
 * library is, or an operation may still be active on it. Every other return value ends the
 * operation and leaves the session usable (PKCS#11 v2.40 §5.2: a call to C_Decrypt always
 * terminates the active decryption operation unless it returns CKR_BUFFER_TOO_SMALL), so a
 * refused ciphertext does not cost a session.
 */
const sessionBroken = new Set<number>([
  ...unavailable,
  pkcs11js.CKR_OPERATION_ACTIVE,
  pkcs11js.CKR_BUFFER_TOO_SMALL,
]);

/**
 * Whether a session that saw `err` must be closed and replaced. A PKCS#11 refusal (or an
 * HsmError wrapping one) is judged by its return value; an HsmError with no PKCS#11 cause was
 * raised by strongroom before or after the token call and leaves the session as it was; any
 * other error (a native binding's type check, a bug) may have left an operation active.
 */
export function breaksSession(err: unknown): boolean {
  const cause = err instanceof HsmError ? err.cause : err;
  if (err instanceof HsmError && cause === undefined) return err.code === 'HSM_ERR_UNAVAILABLE';
  if (cause instanceof HsmError) return breaksSession(cause);
  const code = ckrOf(cause);
  if (code === undefined) return true;
  return sessionBroken.has(code);
}

/** Object handles that stopped being valid (object destroyed, token re-opened). */
export function isStaleHandle(err: unknown): boolean {
  const code = ckrOf(err);
  return code === pkcs11js.CKR_OBJECT_HANDLE_INVALID || code === pkcs11js.CKR_KEY_HANDLE_INVALID;
}

/**
 * Translate a foreign error at the boundary, by return value, keeping it as `cause`.
 * `fallback` is the code for token refusals that are not availability problems.
 */
export function translate(err: unknown, fallback: HsmErrorCode, message: string): HsmError {
  if (err instanceof HsmError) return err;
  const code = ckrOf(err);
  if (code === undefined) return new HsmError('HSM_ERR_INTERNAL', message, { cause: err });
  const ckr = ckrName(code);
  if (unavailable.has(code)) {
    return new HsmError('HSM_ERR_UNAVAILABLE', `${message}: token unavailable (${ckr})`, { cause: err, ckr });
  }
  return new HsmError(fallback, `${message} (${ckr})`, { cause: err, ckr });
}
