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
