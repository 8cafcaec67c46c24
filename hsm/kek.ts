import { createHash, createPublicKey, randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import type * as P11 from 'pkcs11js';
import { HsmError, ckrName, ckrOf } from './errors.js';
import { AES_KWP, RSA_OAEP_SHA1 } from './mechanisms.js';
import type { RsaPublicKey } from './keystore.js';
import { unsigned } from './rsa-der.js';
import {
  BACKUP_KEK_LABEL,
  BACKUP_UNWRAP_LABEL,
  TRANSPORT_KEY_LABEL,
  approvedTransportKeyTemplate,
  backupKekTemplate,
  backupKekUnwrapTemplate,
  backupUnwrapKeyTemplate,
  ceremonyKeyTemplate,
  kekCheckTemplate,
  kekInTransitTemplate,
  transportPrivateTemplate,
  transportPublicTemplate,
} from './templates.js';
import type { TokenSession } from './token-admin.js';

type Handle = P11.Handle;

/** Size of the transport key: RSA-3072, like every service key. */
export const TRANSPORT_KEY_BITS = 3072;

function secretKeyByLabel(ts: TokenSession, label: string): Handle[] {
  return ts.find([
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_LABEL, value: label },
  ]);
}

/** The KEK's wrap half (public: visible in any session), or undefined. */
export function findKek(ts: TokenSession): Handle | undefined {
  const found = secretKeyByLabel(ts, BACKUP_KEK_LABEL);
  if (found.length > 1) throw new HsmError('HSM_ERR_KEY_AMBIGUOUS', `token "${ts.label}" holds ${found.length} backup KEKs`);
  return found[0];
}

/** The KEK's unwrap half (private: needs the user login), or undefined. */
export function findKekUnwrap(ts: TokenSession): Handle | undefined {
  const found = secretKeyByLabel(ts, BACKUP_UNWRAP_LABEL);
  if (found.length > 1) throw new HsmError('HSM_ERR_KEY_AMBIGUOUS', `token "${ts.label}" holds ${found.length} backup KEK unwrap keys`);
  return found[0];
}

export interface KekCheck {
  /** 16 hex digits naming the KEK, the same on every token that holds it. */
  id: string;
  /** A known public value wrapped under the KEK: unwrapping it proves a token holds the same KEK. */
  check: Buffer;
}

/**
 * Name a KEK without revealing anything: AES-KWP (RFC 5649) is deterministic, so wrapping a
 * fixed public value gives the same bytes under the same key on any token. (SoftHSM leaves
 * CKA_CHECK_VALUE empty on unwrapped keys, so the standard check value cannot serve.)
 */
export function kekCheck(ts: TokenSession, wrapKey: Handle): KekCheck {
  const known = ts.p.C_CreateObject(ts.session, kekCheckTemplate());
  try {
    const check = Buffer.from(ts.p.C_WrapKey(ts.session, AES_KWP, wrapKey, known, Buffer.alloc(64)));
    return { id: createHash('sha256').update(check).digest().subarray(0, 8).toString('hex'), check };
  } finally {
    ts.destroy(known);
  }
}

/** Whether `unwrapKey` opens a check value made by `kekCheck` (i.e. holds the same KEK). */
export function kekMatches(ts: TokenSession, unwrapKey: Handle, check: Buffer): boolean {
  let opened: Handle | undefined;
  try {
    opened = ts.p.C_UnwrapKey(ts.session, AES_KWP, unwrapKey, check, kekCheckTemplate().filter((a) => a.type !== pkcs11js.CKA_VALUE));
    return true;
  } catch {
    return false;
  } finally {
    ts.destroy(opened);
  }
}

/** This token's KEK id (needs no login: the wrap half is public). */
export function tokenKekId(ts: TokenSession): string | undefined {
  const kek = findKek(ts);
  return kek === undefined ? undefined : kekCheck(ts, kek).id;
}

/**
 * Create the backup KEK on a token whose session is logged in as the SO; ends logged in as the
 * user. The SO generates the trusted wrap half and a trusted session key, wraps the KEK under it
 * and logs out; the user, in the same session (public session objects survive C_Logout),
 * unwraps it as the private unwrap half. The KEK never leaves the token unencrypted.
 */
export function createBackupKek(ts: TokenSession, userPin: string): string {
  if (findKek(ts) !== undefined) throw new HsmError('HSM_ERR_TOKEN_IN_USE', `token "${ts.label}" already has a backup KEK`);
  const objectId = randomBytes(16);
  const kek = ts.p.C_GenerateKey(ts.session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, backupKekTemplate(objectId));
  const carrier = ts.p.C_GenerateKey(ts.session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, ceremonyKeyTemplate(true));
  try {
    const carried = ts.p.C_WrapKey(ts.session, AES_KWP, carrier, kek, Buffer.alloc(64));
    ts.logout();
    ts.login('user', userPin);
    ts.p.C_UnwrapKey(ts.session, AES_KWP, carrier, carried, backupUnwrapKeyTemplate(objectId));
  } finally {
    ts.destroy(carrier);
  }
  return kekCheck(ts, kek).id;
}

/** SHA-256 of the SubjectPublicKeyInfo DER, as colon-separated hex (what `openssl` shows). */
export function publicKeyFingerprint(key: RsaPublicKey): string {
  return (createHash('sha256').update(spkiDer(key)).digest('hex').match(/../g) ?? []).join(':');
}

export function spkiDer(key: RsaPublicKey): Buffer {
  return createPublicKey({
    key: { kty: 'RSA', n: key.modulus.toString('base64url'), e: key.publicExponent.toString('base64url') },
    format: 'jwk',
  }).export({ type: 'spki', format: 'der' });
}

/** The transport key's public half, or undefined. */
export function findTransportKey(ts: TokenSession): RsaPublicKey | undefined {
  const [pub] = ts.find([
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
    { type: pkcs11js.CKA_LABEL, value: TRANSPORT_KEY_LABEL },
  ]);
  if (pub === undefined) return undefined;
  return { modulus: unsigned(ts.attribute(pub, pkcs11js.CKA_MODULUS)), publicExponent: unsigned(ts.attribute(pub, pkcs11js.CKA_PUBLIC_EXPONENT)) };
}

function destroyTransportKeys(ts: TokenSession): number {
  const handles = ts.find([{ type: pkcs11js.CKA_LABEL, value: TRANSPORT_KEY_LABEL }]);
  for (const h of handles) ts.p.C_DestroyObject(ts.session, h);
  return handles.length;
}

/**
 * On the token that will receive the KEK (user logged in): a fresh RSA transport pair whose
 * private half only unwraps and never leaves the token. Replaces an earlier one.
 */
export function createTransportKey(ts: TokenSession): { publicKey: RsaPublicKey; replaced: boolean } {
  if (findKek(ts) !== undefined) {
    throw new HsmError('HSM_ERR_TOKEN_IN_USE', `token "${ts.label}" already has a backup KEK; a transport key is for a token without one`);
  }
  const replaced = destroyTransportKeys(ts) > 0;
  const objectId = randomBytes(16);
  const pair = ts.p.C_GenerateKeyPair(
    ts.session,
    { mechanism: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN },
    transportPublicTemplate(objectId, TRANSPORT_KEY_BITS),
    transportPrivateTemplate(objectId),
  );
  const publicKey = {
    modulus: unsigned(ts.attribute(pair.publicKey, pkcs11js.CKA_MODULUS)),
    publicExponent: unsigned(ts.attribute(pair.publicKey, pkcs11js.CKA_PUBLIC_EXPONENT)),
  };
  return { publicKey, replaced };
}

/**
 * On the old token (SO logged in): the SO's approval makes `transportKey` a trusted session
 * key for this one call; the token wraps the KEK under it with RSA-OAEP.
 */
export function exportKek(ts: TokenSession, transportKey: RsaPublicKey): { wrapped: Buffer; kekId: string } {
  const kek = findKek(ts);
  if (kek === undefined) throw new HsmError('HSM_ERR_KEY_NOT_FOUND', `token "${ts.label}" has no backup KEK (made by \`strongroom token init\`)`);
  const approved = ts.p.C_CreateObject(ts.session, approvedTransportKeyTemplate(transportKey));
  try {
    const wrapped = Buffer.from(ts.p.C_WrapKey(ts.session, RSA_OAEP_SHA1, approved, kek, Buffer.alloc(transportKey.modulus.length)));
    return { wrapped, kekId: kekCheck(ts, kek).id };
  } finally {
    ts.destroy(approved);
  }
}

/**
 * On the new token: unwrap the KEK with the transport key (user), check it is the announced
 * KEK before anything persistent is created, store the unwrap half, hand the value to the SO
 * through a session key, and let the SO store the trusted wrap half. The transport pair is
 * destroyed, so the wrapped file is useless afterwards. Ends logged out.
 */
export function importKek(ts: TokenSession, soPin: string, userPin: string, wrapped: Buffer, expectedKekId: string): { kekId: string; already: boolean } {
  ts.login('so', soPin); // fail on a wrong SO PIN before anything changes
  const present = findKek(ts);
  if (present !== undefined) {
    const id = kekCheck(ts, present).id;
    ts.logout();
    if (id === expectedKekId) return { kekId: id, already: true };
    throw new HsmError('HSM_ERR_TOKEN_IN_USE', `token "${ts.label}" already holds another backup KEK (${id})`);
  }
  ts.logout();
  ts.login('user', userPin);
  if (findKekUnwrap(ts) !== undefined) throw new HsmError('HSM_ERR_TOKEN_IN_USE', `token "${ts.label}" already holds a backup KEK unwrap key`);
  const [transport] = ts.find([
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
    { type: pkcs11js.CKA_LABEL, value: TRANSPORT_KEY_LABEL },
  ]);
  if (transport === undefined) {
    throw new HsmError('HSM_ERR_KEY_NOT_FOUND', `token "${ts.label}" has no transport key (run \`strongroom kek transport-key\` on it first)`);
  }
  let inTransit: Handle;
  try {
    inTransit = ts.p.C_UnwrapKey(ts.session, RSA_OAEP_SHA1, transport, wrapped, kekInTransitTemplate());
  } catch (err) {
    const code = ckrOf(err);
    throw new HsmError('HSM_ERR_BACKUP_INVALID', `the wrapped KEK does not open with this token's transport key (${code === undefined ? 'error' : ckrName(code)})`, { cause: err });
  }
  const objectId = randomBytes(16);
  const carrier = ts.p.C_GenerateKey(ts.session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, ceremonyKeyTemplate(false));
  try {
    let carried: Buffer;
    try {
      const { id } = kekCheck(ts, inTransit);
      if (id !== expectedKekId) throw new HsmError('HSM_ERR_BACKUP_INVALID', `the wrapped KEK is ${id}, not the announced ${expectedKekId}`);
      ts.p.C_UnwrapKey(ts.session, RSA_OAEP_SHA1, transport, wrapped, backupUnwrapKeyTemplate(objectId));
      carried = Buffer.from(ts.p.C_WrapKey(ts.session, AES_KWP, carrier, inTransit, Buffer.alloc(64)));
    } finally {
      ts.destroy(inTransit);
    }
    destroyTransportKeys(ts);
    ts.logout();
    ts.login('so', soPin);
    const kek = ts.p.C_UnwrapKey(ts.session, AES_KWP, carrier, carried, backupKekUnwrapTemplate(objectId));
    const { id } = kekCheck(ts, kek);
    ts.logout();
    return { kekId: id, already: false };
  } finally {
    ts.destroy(carrier);
  }
}
