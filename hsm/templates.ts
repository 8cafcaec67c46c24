import pkcs11js from 'pkcs11js';
import type * as P11 from 'pkcs11js';
import type { RsaPrivateKeyComponents, RsaPublicKey } from './keystore.js';

type Template = P11.Template;

/** Label of the AES key that seals stored secrets (Hawk keys, CRYPT: config values). */
export const SECRETS_KEY_LABEL = 'strongroom-secrets';

/** RSA exponent F4 = 65537, the only public exponent strongroom generates. */
export const F4 = Buffer.from([0x01, 0x00, 0x01]);

/**
 * The one place key attributes are decided. Every RSA private key, generated or imported:
 * - lives in the token (CKA_TOKEN) and needs a login to use (CKA_PRIVATE);
 * - is never readable (CKA_SENSITIVE) and decrypts only: no sign, unwrap or derive;
 * - is exportable only wrapped under a CKA_TRUSTED key that only the SO can create
 *   (CKA_EXTRACTABLE with CKA_WRAP_WITH_TRUSTED, PKCS#11 v2.40 §4.9), which is what the
 *   backup ceremony needs and nothing else can use.
 * Object id and label both carry the keypair UUID, so `pkcs11-tool` shows which is which.
 */
export function rsaPrivateKeyTemplate(keyId: string): Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: true },
    { type: pkcs11js.CKA_WRAP_WITH_TRUSTED, value: true },
    { type: pkcs11js.CKA_DECRYPT, value: true },
    { type: pkcs11js.CKA_SIGN, value: false },
    { type: pkcs11js.CKA_SIGN_RECOVER, value: false },
    { type: pkcs11js.CKA_UNWRAP, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
    { type: pkcs11js.CKA_ID, value: keyObjectId(keyId) },
    { type: pkcs11js.CKA_LABEL, value: keyId },
  ];
}

/** The public half: encrypt-only, public, in the token so the pair stays whole there. */
export function rsaPublicKeyTemplate(keyId: string): Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: false },
    { type: pkcs11js.CKA_ENCRYPT, value: true },
    { type: pkcs11js.CKA_VERIFY, value: false },
    { type: pkcs11js.CKA_VERIFY_RECOVER, value: false },
    { type: pkcs11js.CKA_WRAP, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
    { type: pkcs11js.CKA_ID, value: keyObjectId(keyId) },
    { type: pkcs11js.CKA_LABEL, value: keyId },
  ];
}

/** Public-key template for C_GenerateKeyPair: the shared attributes plus size and exponent. */
export function rsaGeneratePublicTemplate(keyId: string, modulusBits: number): Template {
  return [
    ...rsaPublicKeyTemplate(keyId).filter((a) => a.type !== pkcs11js.CKA_CLASS && a.type !== pkcs11js.CKA_KEY_TYPE),
    { type: pkcs11js.CKA_MODULUS_BITS, value: modulusBits },
    { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: F4 },
  ];
}

/** Private-key template for C_GenerateKeyPair (class and type come from the mechanism). */
export function rsaGeneratePrivateTemplate(keyId: string): Template {
  return rsaPrivateKeyTemplate(keyId).filter((a) => a.type !== pkcs11js.CKA_CLASS && a.type !== pkcs11js.CKA_KEY_TYPE);
}

/** Template for C_CreateObject of an imported private key: the generated attributes plus the components. */
export function rsaImportPrivateTemplate(keyId: string, key: RsaPrivateKeyComponents): Template {
  return [
    ...rsaPrivateKeyTemplate(keyId),
    { type: pkcs11js.CKA_MODULUS, value: key.modulus },
    { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: key.publicExponent },
    { type: pkcs11js.CKA_PRIVATE_EXPONENT, value: key.privateExponent },
    { type: pkcs11js.CKA_PRIME_1, value: key.prime1 },
    { type: pkcs11js.CKA_PRIME_2, value: key.prime2 },
    { type: pkcs11js.CKA_EXPONENT_1, value: key.exponent1 },
    { type: pkcs11js.CKA_EXPONENT_2, value: key.exponent2 },
    { type: pkcs11js.CKA_COEFFICIENT, value: key.coefficient },
  ];
}

export function rsaImportPublicTemplate(keyId: string, key: RsaPublicKey): Template {
  return [
    ...rsaPublicKeyTemplate(keyId),
    { type: pkcs11js.CKA_MODULUS, value: key.modulus },
    { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: key.publicExponent },
  ];
}

/** The token's secrets key: AES-256, never extractable, encrypt/decrypt only. */
export function secretsKeyTemplate(objectId: Buffer): Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    { type: pkcs11js.CKA_ENCRYPT, value: true },
    { type: pkcs11js.CKA_DECRYPT, value: true },
    { type: pkcs11js.CKA_WRAP, value: false },
    { type: pkcs11js.CKA_UNWRAP, value: false },
    { type: pkcs11js.CKA_SIGN, value: false },
    { type: pkcs11js.CKA_VERIFY, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
    { type: pkcs11js.CKA_ID, value: objectId },
    { type: pkcs11js.CKA_LABEL, value: SECRETS_KEY_LABEL },
  ];
}

/** Custody probe: a session AES key carrying the same export rule as every private key. */
export function custodyProbeTemplate(): Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    { type: pkcs11js.CKA_TOKEN, value: false },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: true },
    { type: pkcs11js.CKA_WRAP_WITH_TRUSTED, value: true },
    { type: pkcs11js.CKA_LABEL, value: 'strongroom-custody-probe' },
  ];
}

/** Custody probe: an ordinary (not CKA_TRUSTED) session key allowed to wrap. */
export function custodyWrapperTemplate(): Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    { type: pkcs11js.CKA_TOKEN, value: false },
    { type: pkcs11js.CKA_WRAP, value: true },
    { type: pkcs11js.CKA_LABEL, value: 'strongroom-custody-probe-wrapper' },
  ];
}

/** Label of the backup KEK's wrap half (CKA_TRUSTED, created by the SO). */
export const BACKUP_KEK_LABEL = 'strongroom-backup-kek';
/** Label of the backup KEK's unwrap half (same value, private to the user). */
export const BACKUP_UNWRAP_LABEL = 'strongroom-backup-kek-unwrap';
/** Label of the RSA pair a new token offers to receive the KEK. */
export const TRANSPORT_KEY_LABEL = 'strongroom-transport';

const aes256 = (token: boolean): Template => [
  { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
  { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
  { type: pkcs11js.CKA_TOKEN, value: token },
  { type: pkcs11js.CKA_SENSITIVE, value: true },
  { type: pkcs11js.CKA_ENCRYPT, value: false },
  { type: pkcs11js.CKA_DECRYPT, value: false },
  { type: pkcs11js.CKA_SIGN, value: false },
  { type: pkcs11js.CKA_VERIFY, value: false },
  { type: pkcs11js.CKA_DERIVE, value: false },
];

/*
 * The backup KEK is two objects with one value. Only the SO may set CKA_TRUSTED and the SO
 * reaches only public objects (SoftHSM 2.6.1: CKR_ATTRIBUTE_READ_ONLY for the user,
 * CKR_USER_NOT_LOGGED_IN for a private SO object), so the trusted half is public. A public key
 * that could unwrap would let a session without any PIN turn a backup file into plaintext keys
 * (measured), so the public half only wraps and is frozen; unwrapping belongs to a private twin.
 * SoftHSM applies unwrap templates in order and refuses anything after CKA_MODIFIABLE=false:
 * it stays last.
 */

/** The KEK's wrap half: public, CKA_TRUSTED, wrap-only, leaves the token only under a trusted key. */
export function backupKekTemplate(objectId: Buffer): Template {
  return [
    ...aes256(true),
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    { type: pkcs11js.CKA_PRIVATE, value: false },
    { type: pkcs11js.CKA_TRUSTED, value: true },
    { type: pkcs11js.CKA_WRAP, value: true },
    { type: pkcs11js.CKA_UNWRAP, value: false },
    { type: pkcs11js.CKA_EXTRACTABLE, value: true },
    { type: pkcs11js.CKA_WRAP_WITH_TRUSTED, value: true },
    { type: pkcs11js.CKA_COPYABLE, value: false },
    { type: pkcs11js.CKA_DESTROYABLE, value: false },
    { type: pkcs11js.CKA_ID, value: objectId },
    { type: pkcs11js.CKA_LABEL, value: BACKUP_KEK_LABEL },
    { type: pkcs11js.CKA_MODIFIABLE, value: false },
  ];
}

/** The KEK's unwrap half: private, unwrap-only, never extractable. For C_UnwrapKey (no VALUE_LEN). */
export function backupUnwrapKeyTemplate(objectId: Buffer): Template {
  return [
    ...aes256(true),
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_WRAP, value: false },
    { type: pkcs11js.CKA_UNWRAP, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    { type: pkcs11js.CKA_COPYABLE, value: false },
    { type: pkcs11js.CKA_ID, value: objectId },
    { type: pkcs11js.CKA_LABEL, value: BACKUP_UNWRAP_LABEL },
    { type: pkcs11js.CKA_MODIFIABLE, value: false },
  ];
}

/**
 * A session-only AES key that carries the KEK between the SO's and the user's login inside one
 * session (public session objects survive C_Logout). `trusted` only when the SO makes it.
 */
export function ceremonyKeyTemplate(trusted: boolean): Template {
  return [
    ...aes256(false),
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    { type: pkcs11js.CKA_PRIVATE, value: false },
    ...(trusted ? [{ type: pkcs11js.CKA_TRUSTED, value: true }] : []),
    { type: pkcs11js.CKA_WRAP, value: true },
    { type: pkcs11js.CKA_UNWRAP, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
  ];
}

/** The KEK as a private session object while it is being imported (C_UnwrapKey template). */
export function kekInTransitTemplate(): Template {
  return [
    ...aes256(false),
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_WRAP, value: true },
    { type: pkcs11js.CKA_UNWRAP, value: false },
    { type: pkcs11js.CKA_EXTRACTABLE, value: true },
  ];
}

/** The KEK's wrap half as unwrapped by the SO on a new token (C_UnwrapKey template). */
export function backupKekUnwrapTemplate(objectId: Buffer): Template {
  return backupKekTemplate(objectId).filter((a) => a.type !== pkcs11js.CKA_VALUE_LEN);
}

/** A known, public AES value wrapped under the KEK names the KEK (AES-KWP is deterministic). */
export function kekCheckTemplate(): Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_TOKEN, value: false },
    { type: pkcs11js.CKA_PRIVATE, value: false },
    { type: pkcs11js.CKA_VALUE, value: Buffer.alloc(32) },
    { type: pkcs11js.CKA_EXTRACTABLE, value: true },
  ];
}

/** The transport pair's public half: only its numbers matter (the file carries them). */
export function transportPublicTemplate(objectId: Buffer, modulusBits: number): Template {
  return [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: false },
    { type: pkcs11js.CKA_ENCRYPT, value: false },
    { type: pkcs11js.CKA_WRAP, value: false },
    { type: pkcs11js.CKA_VERIFY, value: false },
    { type: pkcs11js.CKA_MODULUS_BITS, value: modulusBits },
    { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: F4 },
    { type: pkcs11js.CKA_ID, value: objectId },
    { type: pkcs11js.CKA_LABEL, value: TRANSPORT_KEY_LABEL },
  ];
}

/** The transport pair's private half: unwraps only, never leaves the token. */
export function transportPrivateTemplate(objectId: Buffer): Template {
  return [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    { type: pkcs11js.CKA_UNWRAP, value: true },
    { type: pkcs11js.CKA_DECRYPT, value: false },
    { type: pkcs11js.CKA_SIGN, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
    { type: pkcs11js.CKA_ID, value: objectId },
    { type: pkcs11js.CKA_LABEL, value: TRANSPORT_KEY_LABEL },
  ];
}

/** A new token's transport key as approved by the old token's SO: session-only, trusted, wrap-only. */
export function approvedTransportKeyTemplate(key: RsaPublicKey): Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
    { type: pkcs11js.CKA_TOKEN, value: false },
    { type: pkcs11js.CKA_PRIVATE, value: false },
    { type: pkcs11js.CKA_TRUSTED, value: true },
    { type: pkcs11js.CKA_WRAP, value: true },
    { type: pkcs11js.CKA_ENCRYPT, value: false },
    { type: pkcs11js.CKA_VERIFY, value: false },
    { type: pkcs11js.CKA_MODULUS, value: key.modulus },
    { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: key.publicExponent },
  ];
}

/** A fresh per-backup HMAC key: generated, wrapped under the KEK into the file, then dropped. */
export function backupMacKeyTemplate(): Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_GENERIC_SECRET },
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    { type: pkcs11js.CKA_TOKEN, value: false },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: true },
    { type: pkcs11js.CKA_SIGN, value: true },
    { type: pkcs11js.CKA_VERIFY, value: false },
  ];
}

/** The per-backup HMAC key as unwrapped at restore: verify only (C_UnwrapKey template). */
export function backupMacVerifyTemplate(): Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_GENERIC_SECRET },
    { type: pkcs11js.CKA_TOKEN, value: false },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    { type: pkcs11js.CKA_SIGN, value: false },
    { type: pkcs11js.CKA_VERIFY, value: true },
  ];
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** CKA_ID of a keypair: the 16 bytes of its UUID. */
export function keyObjectId(keyId: string): Buffer {
  if (!UUID.test(keyId)) throw new RangeError('key id must be a UUID');
  return Buffer.from(keyId.replace(/-/g, ''), 'hex');
}

/** Inverse of `keyObjectId`; undefined for ids strongroom did not create. */
export function keyIdFromObjectId(objectId: Buffer): string | undefined {
  if (objectId.length !== 16) return undefined;
  const hex = objectId.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
