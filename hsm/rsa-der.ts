import { AsnConvert } from '@peculiar/asn1-schema';
import { RSAPrivateKey, RSAPublicKey } from '@peculiar/asn1-rsa';
import type { RsaPrivateKeyComponents, RsaPublicKey } from './keystore.js';

/** Drop leading zero bytes: PKCS#11 and JWK want unsigned big-endian integers. */
export function unsigned(bytes: Uint8Array): Buffer {
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0) start += 1;
  return Buffer.from(bytes.subarray(start));
}

/** DER INTEGER content is two's complement: prefix 0x00 when the high bit is set (X.690 §8.3). */
function derInteger(value: Buffer): ArrayBuffer {
  const u = unsigned(value);
  const out = (u[0] ?? 0) & 0x80 ? Buffer.concat([Buffer.from([0]), u]) : u;
  return out.buffer.slice(out.byteOffset, out.byteOffset + out.byteLength) as ArrayBuffer;
}

/** PKCS#1 RSAPublicKey DER (RFC 8017 A.1.1): SEQUENCE { modulus, publicExponent }, no algorithm OID. */
export function encodeRsaPublicKey(key: RsaPublicKey): Buffer {
  const asn = new RSAPublicKey({ modulus: derInteger(key.modulus), publicExponent: derInteger(key.publicExponent) });
  return Buffer.from(AsnConvert.serialize(asn));
}

/** Parse PKCS#1 RSAPublicKey DER. Throws on anything else (including SubjectPublicKeyInfo). */
export function decodeRsaPublicKey(der: Uint8Array): RsaPublicKey {
  const asn = AsnConvert.parse(der, RSAPublicKey);
  return { modulus: unsigned(new Uint8Array(asn.modulus)), publicExponent: unsigned(new Uint8Array(asn.publicExponent)) };
}

/** Parse PKCS#1 RSAPrivateKey DER (RFC 8017 A.1.2), two-prime keys only. */
export function decodeRsaPrivateKey(der: Uint8Array): RsaPrivateKeyComponents {
  const asn = AsnConvert.parse(der, RSAPrivateKey);
  if (asn.version !== 0 || asn.otherPrimeInfos !== undefined) {
    throw new RangeError('only two-prime RSA private keys are supported');
  }
  const u = (b: ArrayBuffer) => unsigned(new Uint8Array(b));
  return {
    modulus: u(asn.modulus),
    publicExponent: u(asn.publicExponent),
    privateExponent: u(asn.privateExponent),
    prime1: u(asn.prime1),
    prime2: u(asn.prime2),
    exponent1: u(asn.exponent1),
    exponent2: u(asn.exponent2),
    coefficient: u(asn.coefficient),
  };
}

/** Modulus size in bits, counted from the most significant set bit. */
export function modulusBits(modulus: Buffer): number {
  const u = unsigned(modulus);
  const top = u[0] ?? 0;
  return top === 0 ? 0 : (u.length - 1) * 8 + (32 - Math.clz32(top));
}
