import { randomBytes, timingSafeEqual } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import type * as P11 from 'pkcs11js';
import { ckrName, ckrOf } from './errors.js';
import { rsaOaep } from './mechanisms.js';
import { packMechanisms } from './usage-templates.js';

/** What the token does itself, found out at open (hsm/keystore-v2.ts decides from it). */
export interface TokenCapabilities {
  /**
   * RSA-OAEP with SHA-256 and MGF1-SHA-256 round-trips in the token. False on SoftHSM 2.6.1
   * (CKR_ARGUMENTS_BAD): then OAEP-SHA256 keys are raw-RSA keys and our code decodes.
   */
  readonly oaepSha256: boolean;
  /** The token refuses a mechanism missing from a key's CKA_ALLOWED_MECHANISMS. */
  readonly allowedMechanismsEnforced: boolean;
  /** Mechanisms the token lists (C_GetMechanismList) that KeyStore v2 uses. */
  readonly rsaX509: boolean;
  readonly rsaPss: boolean;
  readonly ecdsa: boolean;
  readonly ecKeyGeneration: boolean;
  /** Why a probe answered no, for `doctor` and logs (CKR names only). */
  readonly notes: readonly string[];
}

/*
 * 1024 bits: large enough for OAEP-SHA256 (2·32+2 bytes) and fast to generate; the key never
 * protects anything. Modules in a FIPS mode refuse sizes below 2048, so that is the fallback.
 */
const PROBE_BITS = [1024, 2048];

function describe(err: unknown): string {
  const code = ckrOf(err);
  return code === undefined ? 'not a PKCS#11 error' : ckrName(code);
}

/** A session-only RSA pair limited to OAEP, of the first size the module accepts. */
function probeKeyPair(p11: P11.PKCS11, session: P11.Handle): { pair: P11.KeyPair; bytes: number } {
  let failure: unknown;
  for (const bits of PROBE_BITS) {
    try {
      const pair = p11.C_GenerateKeyPair(
        session,
        { mechanism: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN },
        [
          { type: pkcs11js.CKA_TOKEN, value: false },
          { type: pkcs11js.CKA_ENCRYPT, value: true },
          { type: pkcs11js.CKA_MODULUS_BITS, value: bits },
          { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
        ],
        [
          { type: pkcs11js.CKA_TOKEN, value: false },
          { type: pkcs11js.CKA_SENSITIVE, value: true },
          { type: pkcs11js.CKA_DECRYPT, value: true },
          { type: pkcs11js.CKA_SIGN, value: false },
          { type: pkcs11js.CKA_ALLOWED_MECHANISMS, value: packMechanisms([pkcs11js.CKM_RSA_PKCS_OAEP]) },
        ],
      );
      return { pair, bytes: bits / 8 };
    } catch (err) {
      failure = err;
    }
  }
  throw failure;
}

/**
 * Probe `session` (logged in, idle) with a throw-away session key pair: encrypt and decrypt
 * with OAEP-SHA256, then ask for a mechanism the key does not allow. The key is a session
 * object (CKA_TOKEN=false) and is destroyed before returning.
 */
export function probeCapabilities(p11: P11.PKCS11, slot: P11.Handle, session: P11.Handle): TokenCapabilities {
  const notes: string[] = [];
  const listed = new Set(p11.C_GetMechanismList(slot));
  const { pair, bytes } = probeKeyPair(p11, session);
  try {
    let oaepSha256 = false;
    const secret = randomBytes(16);
    const mechanism = rsaOaep('sha256');
    try {
      p11.C_EncryptInit(session, mechanism, pair.publicKey);
      const ct = p11.C_Encrypt(session, secret, Buffer.alloc(bytes));
      p11.C_DecryptInit(session, mechanism, pair.privateKey);
      const pt = p11.C_Decrypt(session, ct, Buffer.alloc(bytes));
      oaepSha256 = pt.length === secret.length && timingSafeEqual(pt, secret);
      if (!oaepSha256) notes.push('OAEP-SHA256 round trip returned another value');
    } catch (err) {
      notes.push(`OAEP-SHA256: ${describe(err)}`);
    }
    let allowedMechanismsEnforced = false;
    try {
      // Allowed: OAEP only. Raw RSA must be refused at init; if it is not, the session is
      // closed by the caller, which ends the operation.
      p11.C_DecryptInit(session, { mechanism: pkcs11js.CKM_RSA_X_509 }, pair.privateKey);
      notes.push('CKA_ALLOWED_MECHANISMS: not enforced (raw RSA accepted on an OAEP-only key)');
    } catch (err) {
      allowedMechanismsEnforced = ckrOf(err) === pkcs11js.CKR_MECHANISM_INVALID;
      if (!allowedMechanismsEnforced) notes.push(`CKA_ALLOWED_MECHANISMS: ${describe(err)}`);
    }
    return {
      oaepSha256,
      allowedMechanismsEnforced,
      rsaX509: listed.has(pkcs11js.CKM_RSA_X_509),
      rsaPss: listed.has(pkcs11js.CKM_RSA_PKCS_PSS),
      ecdsa: listed.has(pkcs11js.CKM_ECDSA),
      ecKeyGeneration: listed.has(pkcs11js.CKM_EC_KEY_PAIR_GEN),
      notes,
    };
  } finally {
    for (const handle of [pair.privateKey, pair.publicKey]) {
      try {
        p11.C_DestroyObject(session, handle);
      } catch {
        // Session objects vanish with the session anyway.
      }
    }
  }
}
