import { createHash } from 'node:crypto';
import { HsmError } from './errors.js';

/** Hashes of the OAEP decoder (label hash and MGF1 use the same one, as RSA-OAEP and RSA-OAEP-256 do). */
export type OaepHash = 'sha1' | 'sha256';

const H_LEN: Readonly<Record<OaepHash, number>> = { sha1: 20, sha256: 32 };

/**
 * The one failure of every decryption, wherever it happened (token refusal, ciphertext ≥ n,
 * bad OAEP encoding): same code, same message, no cause and no CKR name. RFC 8017 §7.1.2 note:
 * an opponent who can tell the failures apart recovers plaintexts (Manger, CRYPTO 2001).
 */
export function decryptionRefused(): HsmError {
  return new HsmError('HSM_ERR_DECRYPT', 'decryption refused');
}

/** MGF1 (RFC 8017 B.2.1). Its running time depends only on the lengths, never on the bytes. */
function mgf1(hash: OaepHash, seed: Uint8Array, length: number): Buffer {
  const hLen = H_LEN[hash];
  const out = Buffer.alloc(Math.ceil(length / hLen) * hLen);
  const counter = Buffer.alloc(4);
  for (let i = 0, off = 0; off < length; i += 1, off += hLen) {
    counter.writeUInt32BE(i);
    createHash(hash).update(seed).update(counter).digest().copy(out, off);
  }
  return out.subarray(0, length);
}

/** 1 when the bytes are equal, else 0, without a branch. */
function eqByte(a: number, b: number): number {
  return (((a ^ b) - 1) >>> 31) & 1;
}

/**
 * EME-OAEP decoding (RFC 8017 §7.1.2 step 3) of `em`, the raw RSA output (exactly k bytes, as
 * CKM_RSA_X_509 returns it). Every check runs over every byte and the results are folded into
 * one flag, tested once at the end: a bad leading byte, a wrong label hash, a missing 0x01 and
 * a non-zero byte in the padding all take the same path and throw the same `decryptionRefused()`.
 * Only the length of the plaintext, public once decryption succeeds, shapes the copy.
 */
export function oaepDecode(em: Uint8Array, hash: OaepHash, label: Uint8Array = Buffer.alloc(0)): Buffer {
  const hLen = H_LEN[hash];
  if (hLen === undefined) throw new HsmError('HSM_ERR_INPUT', `unsupported OAEP hash "${String(hash)}"`);
  const k = em.length;
  // §7.1.2 step 1c: depends on the key size only, public.
  if (k < 2 * hLen + 2) throw new HsmError('HSM_ERR_INPUT', `a ${k}-byte modulus is too short for OAEP with ${hash}`);
  const lHash = createHash(hash).update(label).digest();
  const maskedSeed = em.subarray(1, 1 + hLen);
  const maskedDb = em.subarray(1 + hLen);
  const seed = mgf1(hash, maskedDb, hLen);
  for (let i = 0; i < hLen; i += 1) seed[i] = (seed[i] as number) ^ (maskedSeed[i] as number);
  const db = mgf1(hash, seed, k - hLen - 1);
  for (let i = 0; i < db.length; i += 1) db[i] = (db[i] as number) ^ (maskedDb[i] as number);

  // Y must be 0; lHash' must equal lHash.
  let bad = em[0] as number;
  for (let i = 0; i < hLen; i += 1) bad |= (db[i] as number) ^ (lHash[i] as number);

  // PS ‖ 0x01 ‖ M: the first non-zero byte after lHash' must be 0x01; remember where it is.
  let found = 0;
  let separator = 0;
  let stray = 0;
  for (let i = hLen; i < db.length; i += 1) {
    const b = db[i] as number;
    const isOne = eqByte(b, 1);
    const isZero = eqByte(b, 0);
    const first = isOne & (found ^ 1);
    separator |= -first & i;
    stray |= (found ^ 1) & (isOne ^ 1) & (isZero ^ 1);
    found |= isOne;
  }
  bad |= stray | (found ^ 1);
  seed.fill(0);
  if (bad !== 0) {
    db.fill(0);
    throw decryptionRefused();
  }
  const message = Buffer.from(db.subarray(separator + 1));
  db.fill(0);
  return message;
}
