import pkcs11js from 'pkcs11js';
import type * as P11 from 'pkcs11js';
import { HsmError } from './errors.js';
import { specInfo, type KeyRef, type KeySpec, type KeyUsage } from './key-spec.js';
import type { RsaPrivateKeyComponents } from './keystore.js';
import { F4 } from './templates.js';

type Template = P11.Template;

/**
 * CKA_ALLOWED_MECHANISMS is a CK_MECHANISM_TYPE array: CK_ULONGs, 8 bytes little-endian on
 * this platform (measured with SoftHSM 2.6.1 on x86-64 Linux).
 */
export function packMechanisms(mechanisms: readonly number[]): Buffer {
  const out = Buffer.alloc(mechanisms.length * 8);
  mechanisms.forEach((m, i) => out.writeBigUInt64LE(BigInt(m), i * 8));
  return out;
}

/** Inverse of `packMechanisms`; an empty attribute means "no restriction" (PKCS#11 v2.40 §4.4). */
export function unpackMechanisms(packed: Buffer): number[] {
  const out: number[] = [];
  for (let off = 0; off + 8 <= packed.length; off += 8) out.push(Number(packed.readBigUInt64LE(off)));
  return out;
}

/** CKA_EC_POINT is DER OCTET STRING { 04 ‖ X ‖ Y } (PKCS#11 v2.40 §2.3.3, X9.62 uncompressed). */
export function encodeEcPoint(point: Buffer): Buffer {
  const len = point.length < 0x80 ? Buffer.from([point.length]) : Buffer.from([0x81, point.length]);
  return Buffer.concat([Buffer.from([0x04]), len, point]);
}

/** The uncompressed point inside CKA_EC_POINT; also accepts a bare point (some modules omit the DER). */
export function decodeEcPoint(value: Buffer, coordinateBytes: number): Buffer {
  const pointLength = 1 + 2 * coordinateBytes;
  if (value.length === pointLength && value[0] === 0x04) return value;
  const header = value[1] === 0x81 ? 3 : 2;
  const point = value.subarray(header);
  if (value[0] !== 0x04 || point.length !== pointLength || point[0] !== 0x04) {
    throw new HsmError('HSM_ERR_INTERNAL', 'CKA_EC_POINT is not an uncompressed point of the key\'s curve');
  }
  return point;
}

/** A public key as the token stores it. */
export type PublicKeyMaterial =
  | { readonly kind: 'rsa'; readonly modulus: Buffer; readonly publicExponent: Buffer }
  /** `point` is the uncompressed X9.62 point 04 ‖ X ‖ Y. */
  | { readonly kind: 'ec'; readonly params: Buffer; readonly point: Buffer };

export interface KeyPairTemplates {
  readonly mechanism: P11.Mechanism;
  readonly publicTemplate: Template;
  readonly privateTemplate: Template;
}

const identity = (ref: KeyRef): Template => [
  { type: pkcs11js.CKA_ID, value: ref.id },
  { type: pkcs11js.CKA_LABEL, value: ref.alias },
];

/*
 * CKA_MODIFIABLE=false closes the way around the usage: without it, C_SetAttributeValue could
 * turn CKA_SIGN on for a decrypt key. SoftHSM applies a template in order and refuses
 * attributes after CKA_MODIFIABLE=false, so it comes last. CKA_COPYABLE=false: C_CopyObject
 * takes a template too.
 */
const frozen: Template = [
  { type: pkcs11js.CKA_COPYABLE, value: false },
  { type: pkcs11js.CKA_MODIFIABLE, value: false },
];

const usageOf = (usage: KeyUsage, allowed: readonly number[]) => {
  if (allowed.length === 0) throw new HsmError('HSM_ERR_INPUT', 'a key needs at least one allowed mechanism');
  return { decrypt: usage === 'decrypt', mechanisms: { type: pkcs11js.CKA_ALLOWED_MECHANISMS, value: packMechanisms(allowed) } };
};

/** Public-key attributes of a usage, before the key's numbers: encrypt-only or verify-only. */
function publicAttributes(usage: KeyUsage, allowed: readonly number[]): Template {
  const { decrypt, mechanisms } = usageOf(usage, allowed);
  return [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: false },
    { type: pkcs11js.CKA_ENCRYPT, value: decrypt },
    { type: pkcs11js.CKA_VERIFY, value: !decrypt },
    { type: pkcs11js.CKA_VERIFY_RECOVER, value: false },
    { type: pkcs11js.CKA_WRAP, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
    mechanisms,
  ];
}

/** Private-key attributes of a usage: exactly one of CKA_DECRYPT and CKA_SIGN. */
function privateAttributes(usage: KeyUsage, allowed: readonly number[]): Template {
  const { decrypt, mechanisms } = usageOf(usage, allowed);
  return [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: true },
    { type: pkcs11js.CKA_WRAP_WITH_TRUSTED, value: true },
    { type: pkcs11js.CKA_DECRYPT, value: decrypt },
    { type: pkcs11js.CKA_SIGN, value: !decrypt },
    { type: pkcs11js.CKA_SIGN_RECOVER, value: false },
    { type: pkcs11js.CKA_UNWRAP, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
    mechanisms,
  ];
}

/**
 * The one template per usage for a key pair generated in the token. Every attribute is set
 * (the defaults are not what custody needs):
 * - private key: token object, login required, never readable (CKA_SENSITIVE), exportable only
 *   wrapped under a CKA_TRUSTED key (the backup ceremony), and exactly one of CKA_DECRYPT and
 *   CKA_SIGN; never unwrap, derive or sign-recover;
 * - public key: public token object, encrypt-only or verify-only to match;
 * - both: CKA_ALLOWED_MECHANISMS = `allowed`, the mechanisms of this usage and no other;
 *   frozen (no attribute changes, no copies).
 */
export function keyPairTemplates(spec: KeySpec, usage: KeyUsage, ref: KeyRef, allowed: readonly number[]): KeyPairTemplates {
  const info = specInfo(spec);
  if (info.kind === 'ec' && usage !== 'sign') {
    throw new HsmError('HSM_ERR_INPUT', `an ${spec} key can only sign (EC decryption is not a scheme strongroom offers)`);
  }
  const publicTemplate: Template = [
    ...publicAttributes(usage, allowed),
    ...(info.kind === 'rsa'
      ? [
          { type: pkcs11js.CKA_MODULUS_BITS, value: info.bits },
          { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: F4 },
        ]
      : [{ type: pkcs11js.CKA_EC_PARAMS, value: info.params }]),
    ...identity(ref),
    ...frozen,
  ];
  const privateTemplate: Template = [...privateAttributes(usage, allowed), ...identity(ref), ...frozen];
  const mechanism = { mechanism: info.kind === 'rsa' ? pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN : pkcs11js.CKM_EC_KEY_PAIR_GEN };
  return { mechanism, publicTemplate, privateTemplate };
}

/** The same two templates for C_CreateObject of an existing RSA key (legacy import, known-answer vectors). */
export function importedRsaKeyPairTemplates(
  usage: KeyUsage,
  ref: KeyRef,
  allowed: readonly number[],
  key: RsaPrivateKeyComponents,
): Omit<KeyPairTemplates, 'mechanism'> {
  const rsa = (cls: number): Template => [
    { type: pkcs11js.CKA_CLASS, value: cls },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
  ];
  const publicNumbers: Template = [
    { type: pkcs11js.CKA_MODULUS, value: key.modulus },
    { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: key.publicExponent },
  ];
  return {
    publicTemplate: [...rsa(pkcs11js.CKO_PUBLIC_KEY), ...publicAttributes(usage, allowed), ...publicNumbers, ...identity(ref), ...frozen],
    privateTemplate: [
      ...rsa(pkcs11js.CKO_PRIVATE_KEY),
      ...privateAttributes(usage, allowed),
      ...publicNumbers,
      { type: pkcs11js.CKA_PRIVATE_EXPONENT, value: key.privateExponent },
      { type: pkcs11js.CKA_PRIME_1, value: key.prime1 },
      { type: pkcs11js.CKA_PRIME_2, value: key.prime2 },
      { type: pkcs11js.CKA_EXPONENT_1, value: key.exponent1 },
      { type: pkcs11js.CKA_EXPONENT_2, value: key.exponent2 },
      { type: pkcs11js.CKA_COEFFICIENT, value: key.coefficient },
      ...identity(ref),
      ...frozen,
    ],
  };
}

/**
 * A partner's public key: public data, not a secret (CKA_PRIVATE=false), verify-only for a
 * signing partner, encrypt-only for one we encrypt to. No allowed-mechanism list: the token
 * never uses it for our own private operations.
 */
export function partnerPublicKeyTemplate(ref: KeyRef, usage: KeyUsage, key: PublicKeyMaterial): Template {
  if (key.kind === 'ec' && usage !== 'sign') throw new HsmError('HSM_ERR_INPUT', 'an EC public key can only verify');
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: key.kind === 'rsa' ? pkcs11js.CKK_RSA : pkcs11js.CKK_EC },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: false },
    { type: pkcs11js.CKA_ENCRYPT, value: usage === 'decrypt' },
    { type: pkcs11js.CKA_VERIFY, value: usage === 'sign' },
    { type: pkcs11js.CKA_VERIFY_RECOVER, value: false },
    { type: pkcs11js.CKA_WRAP, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
    ...(key.kind === 'rsa'
      ? [
          { type: pkcs11js.CKA_MODULUS, value: key.modulus },
          { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: key.publicExponent },
        ]
      : [
          { type: pkcs11js.CKA_EC_PARAMS, value: key.params },
          { type: pkcs11js.CKA_EC_POINT, value: encodeEcPoint(key.point) },
        ]),
    ...identity(ref),
    ...frozen,
  ];
}

export interface CertificateFields {
  readonly der: Buffer;
  readonly subject: Buffer;
  readonly issuer: Buffer;
  readonly serialNumber: Buffer;
}

/** A partner's X.509 certificate, public, next to its public key under the same CKA_ID. */
export function certificateTemplate(ref: KeyRef, cert: CertificateFields): Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_CERTIFICATE },
    { type: pkcs11js.CKA_CERTIFICATE_TYPE, value: pkcs11js.CKC_X_509 },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: false },
    // PKCS#11 v2.40 §4.6.2: 3 = "other entity" (a partner, not our own and not a CA).
    { type: pkcs11js.CKA_CERTIFICATE_CATEGORY, value: 3 },
    { type: pkcs11js.CKA_SUBJECT, value: cert.subject },
    { type: pkcs11js.CKA_ISSUER, value: cert.issuer },
    { type: pkcs11js.CKA_SERIAL_NUMBER, value: cert.serialNumber },
    { type: pkcs11js.CKA_VALUE, value: cert.der },
    ...identity(ref),
    ...frozen,
  ];
}
