import pkcs11js from 'pkcs11js';
import type * as P11 from 'pkcs11js';
import { HsmError } from './errors.js';
import { DIGEST_BYTES, type DigestHash } from './key-spec.js';

/**
 * How to sign a caller's digest. Every parameter is explicit: the caller hashed the data, so the
 * store must not guess which hash (or salt) the verifier expects.
 */
export type SignScheme =
  /** RSASSA-PKCS1-v1_5 (RFC 8017 §8.2): the store builds the DigestInfo around the digest. */
  | { readonly scheme: 'rsa-pkcs1'; readonly hash: DigestHash }
  /** RSASSA-PSS (RFC 8017 §8.1) with MGF1 (JOSE PS256: sha256/sha256/32). */
  | { readonly scheme: 'rsa-pss'; readonly hash: DigestHash; readonly mgf1Hash: DigestHash; readonly saltLength: number }
  /** ECDSA (FIPS 186-4) over the digest; the signature comes back as DER SEQUENCE{r,s}. */
  | { readonly scheme: 'ecdsa'; readonly hash: DigestHash };

/*
 * DER of DigestInfo ::= SEQUENCE { SEQUENCE { OID, NULL }, OCTET STRING digest } up to the
 * digest itself (RFC 8017 §9.2, note 1).
 */
const DIGEST_INFO_PREFIX: Readonly<Record<DigestHash, Buffer>> = {
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  sha384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
  sha512: Buffer.from('3051300d060960864801650304020305000440', 'hex'),
};

const HASH_MECHANISM: Readonly<Record<DigestHash, number>> = {
  sha256: pkcs11js.CKM_SHA256,
  sha384: pkcs11js.CKM_SHA384,
  sha512: pkcs11js.CKM_SHA512,
};

const MGF1: Readonly<Record<DigestHash, number>> = {
  sha256: pkcs11js.CKG_MGF1_SHA256,
  sha384: pkcs11js.CKG_MGF1_SHA384,
  sha512: pkcs11js.CKG_MGF1_SHA512,
};

/** Refuse a digest of the wrong length before the token sees it (it would sign it regardless). */
export function checkDigest(hash: DigestHash, digest: Buffer): void {
  const want = hash in DIGEST_INFO_PREFIX ? DIGEST_BYTES[hash] : undefined;
  if (want === undefined) throw new HsmError('HSM_ERR_INPUT', `unsupported digest hash "${String(hash)}"`);
  if (digest.length !== want) throw new HsmError('HSM_ERR_INPUT', `a ${hash} digest is ${want} bytes, not ${digest.length}`);
}

/** DigestInfo DER around `digest` (EMSA-PKCS1-v1_5 step 2), the input of CKM_RSA_PKCS signing. */
export function digestInfo(hash: DigestHash, digest: Buffer): Buffer {
  checkDigest(hash, digest);
  return Buffer.concat([DIGEST_INFO_PREFIX[hash], digest]);
}

/** The PKCS#11 mechanism that signs a digest under `scheme` (PKCS#11 v2.40 §2.1.6, §2.1.10, §2.3.7). */
export function signMechanism(scheme: SignScheme): P11.Mechanism {
  switch (scheme.scheme) {
    case 'rsa-pkcs1':
      return { mechanism: pkcs11js.CKM_RSA_PKCS };
    case 'rsa-pss': {
      if (!(scheme.mgf1Hash in MGF1)) throw new HsmError('HSM_ERR_INPUT', `unsupported MGF1 hash "${String(scheme.mgf1Hash)}"`);
      if (!Number.isInteger(scheme.saltLength) || scheme.saltLength < 0) {
        throw new HsmError('HSM_ERR_INPUT', 'PSS salt length must be a non-negative integer');
      }
      return {
        mechanism: pkcs11js.CKM_RSA_PKCS_PSS,
        parameter: {
          type: pkcs11js.CK_PARAMS_RSA_PSS,
          hashAlg: HASH_MECHANISM[scheme.hash],
          mgf: MGF1[scheme.mgf1Hash],
          saltLen: scheme.saltLength,
        } satisfies P11.RsaPSS as P11.IParams,
      };
    }
    case 'ecdsa':
      return { mechanism: pkcs11js.CKM_ECDSA };
    default:
      throw new HsmError('HSM_ERR_INPUT', 'unknown signature scheme');
  }
}

/** What the token signs: the DigestInfo for PKCS#1 v1.5, the bare digest for PSS and ECDSA. */
export function signInput(scheme: SignScheme, digest: Buffer): Buffer {
  if (scheme.scheme === 'rsa-pkcs1') return digestInfo(scheme.hash, digest);
  checkDigest(scheme.hash, digest);
  return digest;
}

/** DER INTEGER of an unsigned big-endian value: minimal, with 0x00 when the top bit is set (X.690 §8.3). */
function derUnsignedInteger(bytes: Buffer): Buffer {
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0) start += 1;
  const body = bytes.subarray(start);
  const padded = (body[0] ?? 0) & 0x80 ? Buffer.concat([Buffer.from([0]), body]) : body;
  return Buffer.concat([Buffer.from([0x02]), derLength(padded.length), padded]);
}

function derLength(length: number): Buffer {
  if (length < 0x80) return Buffer.from([length]);
  if (length < 0x100) return Buffer.from([0x81, length]);
  return Buffer.from([0x82, length >> 8, length & 0xff]);
}

/**
 * CKM_ECDSA answers r‖s, each `coordinateBytes` long (PKCS#11 v2.40 §2.3.1). X.509, CMS and
 * the CSC API want Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } (RFC 3279 §2.2.3).
 */
export function ecdsaRawToDer(raw: Buffer, coordinateBytes: number): Buffer {
  if (raw.length !== 2 * coordinateBytes) {
    throw new HsmError('HSM_ERR_INTERNAL', `ECDSA signature is ${raw.length} bytes, expected ${2 * coordinateBytes}`);
  }
  const r = derUnsignedInteger(raw.subarray(0, coordinateBytes));
  const s = derUnsignedInteger(raw.subarray(coordinateBytes));
  return Buffer.concat([Buffer.from([0x30]), derLength(r.length + s.length), r, s]);
}
