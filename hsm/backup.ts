import { constants as cryptoConstants, createPublicKey, publicEncrypt, randomBytes, timingSafeEqual } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import type * as P11 from 'pkcs11js';
import { HsmError, ckrName, ckrOf } from './errors.js';
import { findKek, findKekUnwrap, kekCheck, kekMatches } from './kek.js';
import { AES_KWP, RSA_OAEP_SHA1 } from './mechanisms.js';
import type { RsaPublicKey } from './keystore.js';
import { decodeRsaPublicKey, unsigned } from './rsa-der.js';
import {
  backupMacKeyTemplate,
  backupMacVerifyTemplate,
  keyObjectId,
  rsaImportPublicTemplate,
  rsaPrivateKeyTemplate,
} from './templates.js';
import type { TokenSession } from './token-admin.js';

type Handle = P11.Handle;

export const BACKUP_FORMAT = 'strongroom-backup';
export const BACKUP_VERSION = 1;
const HMAC: P11.Mechanism = { mechanism: pkcs11js.CKM_SHA256_HMAC };
const MAC_BYTES = 32;

/** What the backup keeps about a keypair besides its wrapped key (the database row). */
export interface BackupKeyMeta {
  id: string;
  /** PKCS#1 RSAPublicKey DER. */
  publicKey: Buffer;
  modulusBits: number;
  dateCreated: Date;
  owner: string | null;
  state: string;
}

interface KeyEntryJson {
  id: string;
  publicKey: string;
  modulusBits: number;
  dateCreated: string;
  owner: string | null;
  state: string;
  wrappedPrivateKey: string;
}

interface BodyJson {
  format: typeof BACKUP_FORMAT;
  version: number;
  createdAt: string;
  token: { label: string; serial: string };
  kek: { id: string; check: string };
  wrapMechanism: 'CKM_AES_KEY_WRAP_PAD';
  mac: { mechanism: 'CKM_SHA256_HMAC'; wrappedKey: string };
  keys: KeyEntryJson[];
}

export interface BackupResult {
  /** The file: line 1 is the JSON body, line 2 `{"mac": base64}` over line 1's exact bytes. */
  bytes: Buffer;
  kekId: string;
  written: number;
  failures: { id: string; reason: string }[];
}

function describe(err: unknown): string {
  if (err instanceof HsmError) return err.message;
  const code = ckrOf(err);
  return code === undefined ? 'unexpected error' : ckrName(code);
}

function findPrivate(ts: TokenSession, keyId: string): Handle[] {
  return ts.find([
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
    { type: pkcs11js.CKA_ID, value: keyObjectId(keyId) },
  ]);
}

/**
 * Wrap every listed key under the KEK (the token does it: CKA_WRAP_WITH_TRUSTED keys leave only
 * under the trusted KEK) and seal the file with a fresh HMAC key that itself travels wrapped
 * under the KEK, so any token holding the KEK can check the file. User logged in.
 */
export function makeBackup(ts: TokenSession, keys: readonly BackupKeyMeta[], onKey: () => void = () => undefined): BackupResult {
  const kek = findKek(ts);
  if (kek === undefined) throw new HsmError('HSM_ERR_KEY_NOT_FOUND', `token "${ts.label}" has no backup KEK (made by \`strongroom token init\` or \`strongroom kek import\`)`);
  const check = kekCheck(ts, kek);
  const macKey = ts.p.C_GenerateKey(ts.session, { mechanism: pkcs11js.CKM_GENERIC_SECRET_KEY_GEN }, backupMacKeyTemplate());
  try {
    const wrappedMacKey = Buffer.from(ts.p.C_WrapKey(ts.session, AES_KWP, kek, macKey, Buffer.alloc(64)));
    const entries: KeyEntryJson[] = [];
    const failures: BackupResult['failures'] = [];
    for (const key of keys) {
      try {
        const handles = findPrivate(ts, key.id);
        if (handles.length !== 1) throw new HsmError('HSM_ERR_KEY_NOT_FOUND', handles.length === 0 ? 'the token does not hold this key' : 'several keys carry this id');
        const wrapped = ts.p.C_WrapKey(ts.session, AES_KWP, kek, handles[0] as Handle, Buffer.alloc(8192));
        entries.push({
          id: key.id,
          publicKey: key.publicKey.toString('base64'),
          modulusBits: key.modulusBits,
          dateCreated: key.dateCreated.toISOString(),
          owner: key.owner,
          state: key.state,
          wrappedPrivateKey: Buffer.from(wrapped).toString('base64'),
        });
      } catch (err) {
        failures.push({ id: key.id, reason: describe(err) });
      }
      onKey();
    }
    const body: BodyJson = {
      format: BACKUP_FORMAT,
      version: BACKUP_VERSION,
      createdAt: new Date().toISOString(),
      token: { label: ts.label, serial: ts.serial },
      kek: { id: check.id, check: check.check.toString('base64') },
      wrapMechanism: 'CKM_AES_KEY_WRAP_PAD',
      mac: { mechanism: 'CKM_SHA256_HMAC', wrappedKey: wrappedMacKey.toString('base64') },
      keys: entries,
    };
    const line = Buffer.from(`${JSON.stringify(body)}\n`, 'utf8');
    ts.p.C_SignInit(ts.session, HMAC, macKey);
    const mac = Buffer.from(ts.p.C_Sign(ts.session, line, Buffer.alloc(MAC_BYTES)));
    const bytes = Buffer.concat([line, Buffer.from(`${JSON.stringify({ mac: mac.toString('base64') })}\n`, 'utf8')]);
    return { bytes, kekId: check.id, written: entries.length, failures };
  } finally {
    ts.destroy(macKey);
  }
}

/** A backup file parsed, not yet authenticated. */
export interface ParsedBackup {
  signed: Buffer;
  mac: Buffer;
  token: { label: string; serial: string };
  createdAt: string;
  kek: { id: string; check: Buffer };
  wrappedMacKey: Buffer;
  keys: (BackupKeyMeta & { wrappedPrivateKey: Buffer; rsa: RsaPublicKey })[];
}

function invalid(why: string): HsmError {
  return new HsmError('HSM_ERR_BACKUP_INVALID', `not a valid strongroom backup: ${why}`);
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function b64(value: unknown, what: string): Buffer {
  if (typeof value !== 'string' || value.length % 4 !== 0 || !BASE64.test(value)) throw invalid(`${what} is not base64`);
  return Buffer.from(value, 'base64');
}

/** Split and shape-check a backup file. Nothing here touches the token. */
export function parseBackup(bytes: Buffer): ParsedBackup {
  const cut = bytes.indexOf(0x0a);
  if (cut < 0 || cut === bytes.length - 1) throw invalid('no MAC line');
  const signed = bytes.subarray(0, cut + 1);
  const rest = bytes.subarray(cut + 1).toString('utf8');
  let body: BodyJson;
  let macLine: { mac?: unknown };
  try {
    body = JSON.parse(signed.toString('utf8')) as BodyJson;
    macLine = JSON.parse(rest) as { mac?: unknown };
  } catch {
    throw invalid('it does not parse');
  }
  if (!rest.endsWith('\n') || rest.indexOf('\n') !== rest.length - 1) throw invalid('trailing data after the MAC line');
  if (body?.format !== BACKUP_FORMAT) throw invalid('unknown format');
  if (body.version !== BACKUP_VERSION) throw invalid(`version ${String(body.version)} is not supported`);
  if (body.wrapMechanism !== 'CKM_AES_KEY_WRAP_PAD' || body.mac?.mechanism !== 'CKM_SHA256_HMAC') throw invalid('unknown mechanisms');
  if (typeof body.kek?.id !== 'string' || !Array.isArray(body.keys)) throw invalid('missing fields');
  const mac = b64(macLine.mac, 'the MAC');
  if (mac.length !== MAC_BYTES) throw invalid('the MAC has the wrong length');
  const seen = new Set<string>();
  const keys = body.keys.map((k, i) => {
    if (typeof k?.id !== 'string' || !UUID.test(k.id) || seen.has(k.id)) throw invalid(`key ${i}: bad or duplicate id`);
    seen.add(k.id);
    const publicKey = b64(k.publicKey, `key ${k.id}: public key`);
    let rsa: RsaPublicKey;
    try {
      rsa = decodeRsaPublicKey(publicKey);
    } catch {
      throw invalid(`key ${k.id}: public key does not parse`);
    }
    const dateCreated = new Date(k.dateCreated);
    if (Number.isNaN(dateCreated.getTime())) throw invalid(`key ${k.id}: bad date`);
    if (!Number.isInteger(k.modulusBits) || typeof k.state !== 'string' || (k.owner !== null && typeof k.owner !== 'string')) {
      throw invalid(`key ${k.id}: bad metadata`);
    }
    return {
      id: k.id,
      publicKey,
      rsa,
      modulusBits: k.modulusBits,
      dateCreated,
      owner: k.owner,
      state: k.state,
      wrappedPrivateKey: b64(k.wrappedPrivateKey, `key ${k.id}: wrapped key`),
    };
  });
  return {
    signed,
    mac,
    token: { label: String(body.token?.label ?? ''), serial: String(body.token?.serial ?? '') },
    createdAt: String(body.createdAt),
    kek: { id: body.kek.id, check: b64(body.kek.check, 'the KEK check') },
    wrappedMacKey: b64(body.mac.wrappedKey, 'the MAC key'),
    keys,
  };
}

/**
 * Prove the file came, unmodified, from a token holding this token's KEK: the KEK check
 * opens under the unwrap half, and the HMAC key unwrapped with it verifies every byte of the
 * body. Only session objects are created; the token's contents are untouched. User logged in.
 */
export function verifyBackup(ts: TokenSession, backup: ParsedBackup): void {
  const unwrapKey = findKekUnwrap(ts);
  if (unwrapKey === undefined) {
    throw new HsmError('HSM_ERR_KEY_NOT_FOUND', `token "${ts.label}" has no backup KEK (import it with \`strongroom kek import\`)`);
  }
  if (!kekMatches(ts, unwrapKey, backup.kek.check)) {
    throw new HsmError('HSM_ERR_BACKUP_INVALID', `the backup was made under KEK ${backup.kek.id}, which this token does not hold (or the file is damaged)`);
  }
  let macKey: Handle | undefined;
  try {
    macKey = ts.p.C_UnwrapKey(ts.session, AES_KWP, unwrapKey, backup.wrappedMacKey, backupMacVerifyTemplate());
  } catch {
    throw new HsmError('HSM_ERR_BACKUP_INVALID', 'the backup file failed its integrity check (MAC key)');
  }
  try {
    ts.p.C_VerifyInit(ts.session, HMAC, macKey);
    // PKCS#11 v2.40 §5.13: C_Verify compares in the token and answers CKR_SIGNATURE_INVALID.
    const ok = ts.p.C_Verify(ts.session, backup.signed, backup.mac);
    if (!ok) throw new Error('mac');
  } catch {
    throw new HsmError('HSM_ERR_BACKUP_INVALID', 'the backup file failed its integrity check (MAC)');
  } finally {
    ts.destroy(macKey);
  }
}

export type RestoreOutcome = 'restored' | 'present';

function readPublic(ts: TokenSession, handle: Handle): RsaPublicKey {
  return { modulus: unsigned(ts.attribute(handle, pkcs11js.CKA_MODULUS)), publicExponent: unsigned(ts.attribute(handle, pkcs11js.CKA_PUBLIC_EXPONENT)) };
}

function samePublic(a: RsaPublicKey, b: RsaPublicKey): boolean {
  return a.modulus.equals(unsigned(b.modulus)) && a.publicExponent.equals(unsigned(b.publicExponent));
}

/** Encrypt a random value in software, decrypt it in the token: the key works before it counts. */
function roundTrip(ts: TokenSession, privateKey: Handle, pub: RsaPublicKey): boolean {
  const probe = randomBytes(32);
  const key = createPublicKey({
    key: { kty: 'RSA', n: pub.modulus.toString('base64url'), e: pub.publicExponent.toString('base64url') },
    format: 'jwk',
  });
  const ciphertext = publicEncrypt({ key, padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, probe);
  // A separate session: a failed C_Decrypt can leave an operation active on the one it ran on.
  const session = ts.p.C_OpenSession(ts.slot, pkcs11js.CKF_SERIAL_SESSION);
  try {
    ts.p.C_DecryptInit(session, RSA_OAEP_SHA1, privateKey);
    const out = ts.p.C_Decrypt(session, ciphertext, Buffer.alloc(pub.modulus.length));
    return out.length === probe.length && timingSafeEqual(out, probe);
  } catch {
    return false;
  } finally {
    ts.p.C_CloseSession(session);
  }
}

/**
 * Put one key of a verified backup into the token with the attributes of a generated key
 * (sensitive, CKA_WRAP_WITH_TRUSTED), recreate its public object, and prove it: the public key
 * must match the metadata and a round trip must succeed, else both objects are destroyed.
 * A key already present (same id, same public key) is left alone.
 */
export function restoreKey(ts: TokenSession, backup: ParsedBackup, keyId: string): RestoreOutcome {
  const entry = backup.keys.find((k) => k.id === keyId);
  if (entry === undefined) throw new HsmError('HSM_ERR_KEY_NOT_FOUND', `key ${keyId} is not in the backup`);
  const existing = findPrivate(ts, keyId);
  if (existing.length > 1) throw new HsmError('HSM_ERR_KEY_AMBIGUOUS', 'several keys carry this id');
  if (existing.length === 1) {
    if (!samePublic(readPublic(ts, existing[0] as Handle), entry.rsa)) {
      throw new HsmError('HSM_ERR_KEY_EXISTS', 'the token holds a different key under this id');
    }
    ensurePublicObject(ts, keyId, entry.rsa);
    return 'present';
  }
  const unwrapKey = findKekUnwrap(ts);
  if (unwrapKey === undefined) throw new HsmError('HSM_ERR_KEY_NOT_FOUND', 'no backup KEK');
  let privateKey: Handle;
  try {
    privateKey = ts.p.C_UnwrapKey(ts.session, AES_KWP, unwrapKey, entry.wrappedPrivateKey, rsaPrivateKeyTemplate(keyId));
  } catch (err) {
    throw new HsmError('HSM_ERR_KEY_INVALID', `the token refused to unwrap the key (${describe(err)})`, { cause: err });
  }
  let publicKey: Handle | undefined;
  try {
    if (!samePublic(readPublic(ts, privateKey), entry.rsa)) throw new HsmError('HSM_ERR_KEY_INVALID', 'the unwrapped key does not match its public key');
    publicKey = ensurePublicObject(ts, keyId, entry.rsa);
    if (!roundTrip(ts, privateKey, entry.rsa)) throw new HsmError('HSM_ERR_KEY_INVALID', 'the restored key failed its round trip');
    return 'restored';
  } catch (err) {
    ts.destroy(privateKey);
    ts.destroy(publicKey);
    throw err;
  }
}

function ensurePublicObject(ts: TokenSession, keyId: string, pub: RsaPublicKey): Handle | undefined {
  const [present] = ts.find([
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
    { type: pkcs11js.CKA_ID, value: keyObjectId(keyId) },
  ]);
  if (present !== undefined) return undefined;
  return ts.p.C_CreateObject(ts.session, rsaImportPublicTemplate(keyId, { modulus: unsigned(pub.modulus), publicExponent: unsigned(pub.publicExponent) }));
}
