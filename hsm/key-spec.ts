import { randomBytes } from 'node:crypto';
import { HsmError } from './errors.js';

/** What kind of key, and how large: the only shapes KeyStore v2 creates or accepts. */
export type KeySpec = 'rsa-2048' | 'rsa-3072' | 'rsa-4096' | 'ec-p256' | 'ec-p384';

/** Every key spec, in a stable order (for tests, CLIs and listings). */
export const KEY_SPECS: readonly KeySpec[] = ['rsa-2048', 'rsa-3072', 'rsa-4096', 'ec-p256', 'ec-p384'];

/**
 * What a key pair is for, fixed at creation. A key never both decrypts and signs: the usage
 * picks the template (hsm/usage-templates.ts), and the token refuses the other operation.
 * For an imported partner key the usage names what the partner's private half does: `sign`
 * (we verify with it) or `decrypt` (we encrypt to it).
 */
export type KeyUsage = 'decrypt' | 'sign';

/** Decryption schemes (RFC 8017 §7.1 with an empty label, §7.2). */
export type DecryptScheme = 'oaep-sha1' | 'oaep-sha256' | 'pkcs1';

/** Hashes a caller's digest may come from. */
export type DigestHash = 'sha256' | 'sha384' | 'sha512';

export type EcCurve = 'P-256' | 'P-384';

export type SpecInfo =
  | { readonly kind: 'rsa'; readonly bits: number }
  | {
      readonly kind: 'ec';
      readonly curve: EcCurve;
      /** DER of the named-curve OID: the value of CKA_EC_PARAMS. */
      readonly params: Buffer;
      /** Bytes of one coordinate (and of r and s in a signature). */
      readonly coordinateBytes: number;
    };

// X9.62 / SEC 2 curve OIDs, DER-encoded (prime256v1 1.2.840.10045.3.1.7, secp384r1 1.3.132.0.34).
const P256_PARAMS = Buffer.from('06082a8648ce3d030107', 'hex');
const P384_PARAMS = Buffer.from('06052b81040022', 'hex');

const SPECS: Record<KeySpec, SpecInfo> = {
  'rsa-2048': { kind: 'rsa', bits: 2048 },
  'rsa-3072': { kind: 'rsa', bits: 3072 },
  'rsa-4096': { kind: 'rsa', bits: 4096 },
  'ec-p256': { kind: 'ec', curve: 'P-256', params: P256_PARAMS, coordinateBytes: 32 },
  'ec-p384': { kind: 'ec', curve: 'P-384', params: P384_PARAMS, coordinateBytes: 48 },
};

/** Size and curve of `spec`; HSM_ERR_INPUT for anything else. */
export function specInfo(spec: KeySpec): SpecInfo {
  const info = (SPECS as Record<string, SpecInfo | undefined>)[spec];
  if (info === undefined) throw new HsmError('HSM_ERR_INPUT', `unknown key spec "${String(spec)}"`);
  return info;
}

/** The spec of an RSA modulus size or an EC curve parameter set; undefined when v2 does not support it. */
export function specOfRsaBits(bits: number): KeySpec | undefined {
  return KEY_SPECS.find((s) => {
    const info = SPECS[s];
    return info.kind === 'rsa' && info.bits === bits;
  });
}

export function specOfEcParams(params: Buffer): KeySpec | undefined {
  return KEY_SPECS.find((s) => {
    const info = SPECS[s];
    return info.kind === 'ec' && info.params.equals(params);
  });
}

export function specOfCurve(curve: string): KeySpec | undefined {
  return KEY_SPECS.find((s) => {
    const info = SPECS[s];
    return info.kind === 'ec' && info.curve === curve;
  });
}

/**
 * A key in the token: `id` is its CKA_ID (16 random bytes, shared by the private key, the public
 * key and a certificate), `alias` its CKA_LABEL. Keys made before v2 carry their keypair UUID in
 * both, and are found the same way.
 */
export interface KeyRef {
  readonly id: Buffer;
  readonly alias: string;
}

/** How callers name a key: by its CKA_ID or by its alias. */
export type KeyLookup = { readonly id: Buffer } | { readonly alias: string };

/** A fresh CKA_ID. Random, so two instances creating keys at once cannot collide. */
export function newKeyId(): Buffer {
  return randomBytes(16);
}

// Printable ASCII without spaces: safe in CKA_LABEL, in pkcs11-tool output, URLs and logs.
const ALIAS = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/;

/** Refuse aliases that are empty, too long (128) or carry characters beyond `[A-Za-z0-9._:@-]`. */
export function checkAlias(alias: string): string {
  if (typeof alias !== 'string' || !ALIAS.test(alias)) {
    throw new HsmError('HSM_ERR_INPUT', 'alias must be 1-128 characters of A-Z a-z 0-9 . _ : @ - starting with a letter or digit');
  }
  return alias;
}

/** Digest length in bytes of each supported hash. */
export const DIGEST_BYTES: Readonly<Record<DigestHash | 'sha1', number>> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 };
