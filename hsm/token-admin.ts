import { generateKeyPairSync } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import type * as P11 from 'pkcs11js';
import { HsmError, ckrName, ckrOf, translate } from './errors.js';
import { createBackupKek } from './kek.js';
import { rsaOaep } from './mechanisms.js';
import { findTokenSlot, loadModule, type LoadedModule } from './module.js';

type Handle = P11.Handle;

/** CK_SLOT_INFO flag (PKCS#11 v2.40 §3.2); pkcs11js does not export it. */
const CKF_TOKEN_PRESENT = 0x1;

/** Who a session is logged in as. */
export type TokenUser = 'so' | 'user';

/**
 * One read-write session on one token, for the operator's ceremonies (init, KEK, backup,
 * restore). Unlike the key store it logs in as the SO or the user on demand. Login state is
 * per process in PKCS#11: a key store open in the same process already holds the user login.
 */
export class TokenSession {
  readonly p: P11.PKCS11;
  readonly slot: Handle;
  readonly session: Handle;
  readonly label: string;
  readonly serial: string;
  readonly #module: LoadedModule;
  #loggedIn: TokenUser | undefined;

  constructor(module: LoadedModule, slot: Handle, session: Handle, label: string, serial: string) {
    this.#module = module;
    this.p = module.pkcs11;
    this.slot = slot;
    this.session = session;
    this.label = label;
    this.serial = serial;
  }

  /** Log in; a login already held by this process for the same user is accepted. */
  login(user: TokenUser, pin: string): void {
    if (this.#loggedIn === user) return;
    if (this.#loggedIn !== undefined) this.logout();
    try {
      this.p.C_Login(this.session, user === 'so' ? pkcs11js.CKU_SO : pkcs11js.CKU_USER, pin);
    } catch (err) {
      const code = ckrOf(err);
      if (!(user === 'user' && code === pkcs11js.CKR_USER_ALREADY_LOGGED_IN)) {
        const who = user === 'so' ? 'SO' : 'user';
        const ckr = code === undefined ? 'error' : ckrName(code);
        throw new HsmError('HSM_ERR_LOGIN', `${who} login to token "${this.label}" refused (${ckr})`, { cause: err, ckr });
      }
    }
    this.#loggedIn = user;
  }

  logout(): void {
    if (this.#loggedIn === undefined) return;
    try {
      this.p.C_Logout(this.session);
    } catch (err) {
      if (ckrOf(err) !== pkcs11js.CKR_USER_NOT_LOGGED_IN) throw err;
    }
    this.#loggedIn = undefined;
  }

  find(template: P11.Template): Handle[] {
    this.p.C_FindObjectsInit(this.session, template);
    try {
      const found: Handle[] = [];
      for (;;) {
        const batch = this.p.C_FindObjects(this.session, 64);
        if (batch.length === 0) return found;
        found.push(...batch);
      }
    } finally {
      this.p.C_FindObjectsFinal(this.session);
    }
  }

  /** Destroy a (session) object, ignoring one that is already gone. */
  destroy(handle: Handle | undefined): void {
    if (handle === undefined) return;
    try {
      this.p.C_DestroyObject(this.session, handle);
    } catch {
      // Session objects vanish with the session anyway.
    }
  }

  attribute(handle: Handle, type: number): Buffer {
    const [attr] = this.p.C_GetAttributeValue(this.session, handle, [{ type }]);
    return (attr?.value as Buffer | undefined) ?? Buffer.alloc(0);
  }

  /** Log out if this object logged in (a key store's login is left alone), close, release the module. */
  close(): void {
    try {
      if (this.#loggedIn === 'so') this.logout();
      this.p.C_CloseSession(this.session);
    } catch {
      // Nothing left to release in the token.
    } finally {
      this.#module.release();
    }
  }
}

/** Open a read-write session on the token labelled `label` (not logged in yet). */
export function openTokenSession(modulePath: string, label: string): TokenSession {
  const module = loadModule(modulePath);
  try {
    const slot = findTokenSlot(module.pkcs11, label);
    const info = module.pkcs11.C_GetTokenInfo(slot);
    const session = module.pkcs11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    return new TokenSession(module, slot, session, info.label.trim(), info.serialNumber.trim());
  } catch (err) {
    module.release();
    throw translate(err, 'HSM_ERR_INTERNAL', `cannot open a session on token "${label}"`);
  }
}

function padLabel(label: string): string {
  return label + ' '.repeat(Math.max(0, 32 - Buffer.byteLength(label, 'utf8')));
}

/** What strongroom needs from a token; `null` where it could not be determined. */
export interface TokenCapabilities {
  rsa3072Generate: boolean;
  oaepSha1: boolean | null;
  pkcs1: boolean;
  aesKeyWrapPad: boolean;
  oaepSha256: boolean | null;
}

export interface SlotDescription {
  /** Slot id as hex (SoftHSM assigns random-looking ids: select tokens by label). */
  slot: string;
  description: string;
  tokenPresent: boolean;
  /** `free`: a token that can be initialised; `used`: an initialised token. */
  state: 'free' | 'used' | 'empty';
  label: string | null;
  serial: string | null;
  manufacturer: string | null;
  model: string | null;
  flags: string[];
  capabilities: TokenCapabilities | null;
}

const TOKEN_FLAGS: [number, string][] = [
  [pkcs11js.CKF_TOKEN_INITIALIZED, 'initialized'],
  [pkcs11js.CKF_USER_PIN_INITIALIZED, 'user-pin-initialized'],
  [pkcs11js.CKF_LOGIN_REQUIRED, 'login-required'],
  [pkcs11js.CKF_WRITE_PROTECTED, 'write-protected'],
  [pkcs11js.CKF_RNG, 'rng'],
  [pkcs11js.CKF_USER_PIN_LOCKED, 'user-pin-locked'],
  [pkcs11js.CKF_SO_PIN_LOCKED, 'so-pin-locked'],
  [pkcs11js.CKF_USER_PIN_TO_BE_CHANGED, 'user-pin-to-be-changed'],
];

function mechanismOffers(p: P11.PKCS11, slot: Handle, list: Set<number>, mech: number, flags: number, bits?: number): boolean {
  if (!list.has(mech)) return false;
  const info = p.C_GetMechanismInfo(slot, mech);
  if ((info.flags & flags) !== flags) return false;
  return bits === undefined || (info.minKeySize <= bits && info.maxKeySize >= bits);
}

/** One throw-away RSA public key for the OAEP hash probes (public: no login needed). */
let probeKey: { modulus: Buffer; publicExponent: Buffer } | undefined;
function probePublicKey(): { modulus: Buffer; publicExponent: Buffer } {
  if (!probeKey) {
    const jwk = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ format: 'jwk' });
    probeKey = { modulus: Buffer.from(jwk.n as string, 'base64url'), publicExponent: Buffer.from(jwk.e as string, 'base64url') };
  }
  return probeKey;
}

/**
 * Whether the token encrypts with OAEP under `hash` (SHA-1 or SHA-256). The mechanism list cannot
 * say: SoftHSM 2.6.1 lists CKM_RSA_PKCS_OAEP but answers CKR_ARGUMENTS_BAD for SHA-256.
 */
function probeOaep(p: P11.PKCS11, slot: Handle, hash: 'sha1' | 'sha256'): boolean | null {
  let session: Handle;
  try {
    session = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
  } catch {
    return null;
  }
  try {
    const key = probePublicKey();
    const handle = p.C_CreateObject(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
      { type: pkcs11js.CKA_TOKEN, value: false },
      { type: pkcs11js.CKA_ENCRYPT, value: true },
      { type: pkcs11js.CKA_MODULUS, value: key.modulus },
      { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: key.publicExponent },
    ]);
    try {
      p.C_EncryptInit(session, rsaOaep(hash), handle);
      p.C_Encrypt(session, Buffer.alloc(16, 1), Buffer.alloc(256));
      return true;
    } catch {
      return false;
    }
  } catch {
    return null;
  } finally {
    try {
      p.C_CloseSession(session);
    } catch {
      // Probe objects vanish with the session.
    }
  }
}

function capabilities(p: P11.PKCS11, slot: Handle, initialised: boolean): TokenCapabilities {
  const list = new Set(p.C_GetMechanismList(slot));
  const oaep = mechanismOffers(p, slot, list, pkcs11js.CKM_RSA_PKCS_OAEP, pkcs11js.CKF_DECRYPT, 3072);
  return {
    rsa3072Generate: mechanismOffers(p, slot, list, pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN, pkcs11js.CKF_GENERATE_KEY_PAIR, 3072),
    oaepSha1: !oaep ? false : initialised ? probeOaep(p, slot, 'sha1') : null,
    pkcs1: mechanismOffers(p, slot, list, pkcs11js.CKM_RSA_PKCS, pkcs11js.CKF_DECRYPT, 3072),
    aesKeyWrapPad: mechanismOffers(p, slot, list, pkcs11js.CKM_AES_KEY_WRAP_PAD, pkcs11js.CKF_WRAP | pkcs11js.CKF_UNWRAP),
    oaepSha256: !oaep ? false : initialised ? probeOaep(p, slot, 'sha256') : null,
  };
}

/** Every slot of the module with its token and what the token can do. No login. */
export function listSlots(modulePath: string): SlotDescription[] {
  const module = loadModule(modulePath);
  try {
    const p = module.pkcs11;
    return p.C_GetSlotList(false).map((slot) => {
      const slotInfo = p.C_GetSlotInfo(slot);
      const base = {
        slot: slot.toString('hex'),
        description: slotInfo.slotDescription.trim(),
        tokenPresent: (slotInfo.flags & CKF_TOKEN_PRESENT) !== 0,
      };
      if (!base.tokenPresent) {
        return { ...base, state: 'empty', label: null, serial: null, manufacturer: null, model: null, flags: [], capabilities: null };
      }
      const info = p.C_GetTokenInfo(slot);
      const initialised = (info.flags & pkcs11js.CKF_TOKEN_INITIALIZED) !== 0;
      return {
        ...base,
        state: initialised ? 'used' : 'free',
        label: initialised ? info.label.trim() : null,
        serial: info.serialNumber.trim() || null,
        manufacturer: info.manufacturerID.trim(),
        model: info.model.trim(),
        flags: TOKEN_FLAGS.filter(([bit]) => (info.flags & bit) !== 0).map(([, name]) => name),
        capabilities: capabilities(p, slot, initialised),
      } satisfies SlotDescription;
    });
  } catch (err) {
    throw translate(err, 'HSM_ERR_INTERNAL', 'cannot list slots');
  } finally {
    module.release();
  }
}

export interface InitTokenOptions {
  modulePath: string;
  label: string;
  soPin: string;
  userPin: string;
  /** False for a token that will receive another token's KEK (`kek import`). Default true. */
  createKek?: boolean;
}

export interface InitTokenResult {
  label: string;
  serial: string;
  /** False when an initialised but empty token of that label was adopted (no C_InitToken). */
  initialised: boolean;
  /** Undefined when no KEK was created. */
  kekId: string | undefined;
}

/**
 * Count the objects a token holds, logged in as the user (private objects included): strongroom
 * never touches a token unless it can see that it is empty.
 */
function countObjects(p: P11.PKCS11, slot: Handle, userPin: string): number {
  const session = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
  try {
    try {
      p.C_Login(session, pkcs11js.CKU_USER, userPin);
    } catch (err) {
      if (ckrOf(err) !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) {
        throw new HsmError('HSM_ERR_TOKEN_IN_USE', 'the token is already initialised and the user PIN does not open it: cannot show it is empty, refusing', {
          cause: err,
        });
      }
    }
    p.C_FindObjectsInit(session, []);
    try {
      return p.C_FindObjects(session, 1000).length;
    } finally {
      p.C_FindObjectsFinal(session);
    }
  } finally {
    p.C_CloseSession(session);
  }
}

/**
 * Initialise a free slot (SO PIN, label, user PIN), or adopt an initialised token of that label
 * that holds nothing, then create the backup KEK (SO, then user: see kek.ts). The caller then
 * creates the service keys through the key store. A token holding any object is refused.
 */
export function initToken(options: InitTokenOptions): InitTokenResult {
  const module = loadModule(options.modulePath);
  try {
    const p = module.pkcs11;
    const present = p.C_GetSlotList(true);
    const existing = present.filter((s) => {
      const info = p.C_GetTokenInfo(s);
      return (info.flags & pkcs11js.CKF_TOKEN_INITIALIZED) !== 0 && info.label.trim() === options.label;
    });
    if (existing.length > 1) throw new HsmError('HSM_ERR_TOKEN_IN_USE', `${existing.length} tokens are labelled "${options.label}"`);
    let slot = existing[0];
    const initialised = slot === undefined;
    if (slot !== undefined) {
      const held = countObjects(p, slot, options.userPin);
      if (held > 0) {
        throw new HsmError('HSM_ERR_TOKEN_IN_USE', `token "${options.label}" already holds ${held} object${held === 1 ? '' : 's'}; strongroom never initialises a token holding keys`);
      }
    } else {
      slot = present.find((s) => (p.C_GetTokenInfo(s).flags & pkcs11js.CKF_TOKEN_INITIALIZED) === 0);
      if (slot === undefined) throw new HsmError('HSM_ERR_TOKEN_NOT_FOUND', 'no free slot: every token is initialised');
      try {
        // CK_UTF8CHAR[32], blank padded (PKCS#11 v2.40 §5.5); pkcs11js would pad with NULs.
        p.C_InitToken(slot, options.soPin, padLabel(options.label));
      } catch (err) {
        throw translate(err, 'HSM_ERR_INTERNAL', 'C_InitToken failed');
      }
    }
    const info = p.C_GetTokenInfo(slot);
    const session = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    const ts = new TokenSession(loadModule(options.modulePath), slot, session, options.label, info.serialNumber.trim());
    try {
      ts.login('so', options.soPin);
      if (initialised || (info.flags & pkcs11js.CKF_USER_PIN_INITIALIZED) === 0) ts.p.C_InitPIN(ts.session, options.userPin);
      const kekId = options.createKek === false ? undefined : createBackupKek(ts, options.userPin);
      ts.logout();
      return { label: options.label, serial: ts.serial, initialised, kekId };
    } finally {
      ts.close();
    }
  } catch (err) {
    throw translate(err, 'HSM_ERR_INTERNAL', 'token initialisation failed');
  } finally {
    module.release();
  }
}
