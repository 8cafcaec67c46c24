import pkcs11js from 'pkcs11js';
import type * as P11 from 'pkcs11js';

/**
 * RSAES-OAEP (RFC 8017 §7.1) with `hash` and MGF1 of the same hash, empty label
 * (CKZ_DATA_SPECIFIED with no source data). SoftHSM 2.6.1 accepts only SHA-1.
 */
export function rsaOaep(hash: 'sha1' | 'sha256'): P11.Mechanism {
  const sha256 = hash === 'sha256';
  return {
    mechanism: pkcs11js.CKM_RSA_PKCS_OAEP,
    parameter: {
      type: pkcs11js.CK_PARAMS_RSA_OAEP,
      hashAlg: sha256 ? pkcs11js.CKM_SHA256 : pkcs11js.CKM_SHA_1,
      mgf: sha256 ? pkcs11js.CKG_MGF1_SHA256 : pkcs11js.CKG_MGF1_SHA1,
      source: 1,
    } satisfies P11.RsaOAEP as P11.IParams,
  };
}

/** RSA-OAEP, SHA-1/MGF1-SHA-1, empty label: the Local Key Manager's padding and the transport wrap. */
export const RSA_OAEP_SHA1: P11.Mechanism = rsaOaep('sha1');

/** RSAES-PKCS1-v1_5 (RFC 8017 §7.2), for Genesys Cloud's `decryptType=pkcs1`. */
export const RSA_PKCS1_V15: P11.Mechanism = { mechanism: pkcs11js.CKM_RSA_PKCS };

/** RFC 5649 AES key wrap with padding (PKCS#11 v2.40 CKM_AES_KEY_WRAP_PAD, 0x210A). */
export const AES_KWP: P11.Mechanism = { mechanism: pkcs11js.CKM_AES_KEY_WRAP_PAD };
