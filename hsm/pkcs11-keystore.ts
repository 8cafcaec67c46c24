import { createPublicKey, publicEncrypt, randomBytes, constants as cryptoConstants, timingSafeEqual } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import type * as P11 from 'pkcs11js';
import { HsmError, breaksSession, ckrName, ckrOf, isStaleHandle, translate, type HsmErrorCode } from './errors.js';
import type {
  CustodyCheck,
  KeyStore,
  KeyStoreStats,
  RsaPadding,
  RsaPrivateKeyComponents,
  RsaPublicKey,
  TokenDescription,
} from './keystore.js';
import { RSA_OAEP_SHA1, RSA_PKCS1_V15 } from './mechanisms.js';
import { findTokenSlot, loadModule, type LoadedModule } from './module.js';
import { modulusBits, unsigned } from './rsa-der.js';
import { SessionPool } from './session-pool.js';
import {
  SECRETS_KEY_LABEL,
  custodyProbeTemplate,
  custodyWrapperTemplate,
  keyIdFromObjectId,
  keyObjectId,
  rsaGeneratePrivateTemplate,
  rsaGeneratePublicTemplate,
  rsaImportPrivateTemplate,
  rsaImportPublicTemplate,
  secretsKeyTemplate,
} from './templates.js';

type Handle = P11.Handle;

export interface Pkcs11KeyStoreOptions {
  /** Path of the PKCS#11 library. */
  modulePath: string;
  /** Label of the token to use (slot ids are not stable: SoftHSM assigns them at init). */
  tokenLabel: string;
  /** User PIN. Kept in memory only, to log in again if the token drops the login. */
  pin: string;
  /** Number of sessions kept open; each runs one operation at a time. */
  sessions: number;
  /** NSS-style library parameters, for modules that need them (NSS softoken). */
  libraryParameters?: string;
  /** Longest wait for a free session before an operation fails with HSM_ERR_BUSY (default 5 s). */
  sessionWaitMs?: number;
  /**
   * Re-initialise the library when a key is not found, to confirm the miss (default: only for
   * SoftHSM, whose file object store can hide another process's new objects; see `#key`).
   */
  refreshOnMiss?: boolean;
}

/** Smallest RSA modulus the store accepts for import (NIST SP 800-131A: 2048). */
const MIN_IMPORT_BITS = 2048;
/** Sealed secret layout: version (1) ‖ IV (12) ‖ ciphertext ‖ GCM tag (16). */
const SEAL_VERSION = 0x01;
const GCM_IV_BYTES = 12;
const GCM_TAG_BYTES = 16;
/** How long close() waits for running operations before giving up on finalising the module. */
const CLOSE_TIMEOUT_MS = 10_000;
/** At most one token refresh per this interval; misses meanwhile wait for the next one. */
const REFRESH_INTERVAL_MS = 1_000;
/**
 * How long a refresh waits for running operations (an RSA-3072 generation takes up to ~1 s
 * here) before it gives up and the miss is answered as "token unavailable".
 */
const REFRESH_DRAIN_MS = 2_000;
/** SoftHSM2's CKA_MANUFACTURER_ID in C_GetTokenInfo. */
const SOFTHSM_MANUFACTURER = 'SoftHSM project';

// PKCS#11 session states (v2.40 §5.6); pkcs11js does not export CKS_*.
const CKS_RO_USER_FUNCTIONS = 1;
const CKS_RW_USER_FUNCTIONS = 3;

interface KeyEntry {
  privateKey: Handle;
  modulusBytes: number;
  /** The library initialisation the handle belongs to: handles do not survive a refresh. */
  epoch: number;
}

/** A handle from before a refresh reached an operation: look the key up again. */
class StaleEpochError extends HsmError {
  constructor() {
    super('HSM_ERR_INTERNAL', 'key handle from before a token refresh');
  }
}

function mechanismFor(padding: RsaPadding): P11.Mechanism {
  return padding === 'pkcs1' ? RSA_PKCS1_V15 : RSA_OAEP_SHA1;
}

function gcm(iv: Buffer, context: string): P11.Mechanism {
  return {
    mechanism: pkcs11js.CKM_AES_GCM,
    parameter: {
      type: pkcs11js.CK_PARAMS_AES_GCM_v240,
      iv,
      aad: Buffer.from(context, 'utf8'),
      ivBits: GCM_IV_BYTES * 8,
      tagBits: GCM_TAG_BYTES * 8,
    } satisfies P11.AesGCM as P11.IParams,
  };
}

/** Open the token, log in and fill the session pool. */
export async function openPkcs11KeyStore(options: Pkcs11KeyStoreOptions): Promise<Pkcs11KeyStore> {
  const module = loadModule(options.modulePath, options.libraryParameters);
  let store: Pkcs11KeyStore | undefined;
  try {
    const slot = findTokenSlot(module.pkcs11, options.tokenLabel);
    const info = module.pkcs11.C_GetTokenInfo(slot);
    if ((info.flags & pkcs11js.CKF_USER_PIN_INITIALIZED) === 0) {
      throw new HsmError('HSM_ERR_LOGIN', `token "${options.tokenLabel}" has no user PIN yet`);
    }
    if ((info.flags & pkcs11js.CKF_USER_PIN_LOCKED) !== 0) {
      throw new HsmError('HSM_ERR_LOGIN', `the user PIN of token "${options.tokenLabel}" is locked`);
    }
    const token: TokenDescription = {
      modulePath: options.modulePath,
      label: info.label.trim(),
      serialNumber: info.serialNumber.trim(),
      manufacturer: info.manufacturerID.trim(),
      model: info.model.trim(),
    };
    store = new Pkcs11KeyStore(module, slot, token, options);
    store.start();
    return store;
  } catch (err) {
    // The store owns the module once it exists: closing it closes any session already opened.
    if (store) await store.close();
    else module.release();
    throw err;
  }
}

/** KeyStore over a PKCS#11 token, with every RSA operation on libuv's thread pool. */
export class Pkcs11KeyStore implements KeyStore {
  readonly token: TokenDescription;
  readonly #module: LoadedModule;
  readonly #p: P11.PKCS11;
  #slot: Handle;
  readonly #pin: string;
  readonly #pool: SessionPool<Handle>;
  readonly #keys = new Map<string, KeyEntry>();
  #secretsKey: { handle: Handle; epoch: number } | undefined;
  #searches = 0;
  #closed = false;
  readonly #refreshOnMiss: boolean;
  /** Library initialisations so far (1 after open); bumped by every refresh. */
  #epoch = 1;
  #refreshing: Promise<boolean> | undefined;
  #lastRefreshAt = Number.NEGATIVE_INFINITY;
  #refreshes = 0;
  #refreshMs = 0;

  constructor(module: LoadedModule, slot: Handle, token: TokenDescription, options: Pkcs11KeyStoreOptions) {
    this.#module = module;
    this.#p = module.pkcs11;
    this.#slot = slot;
    this.#pin = options.pin;
    this.token = token;
    this.#pool = new SessionPool<Handle>(
      {
        open: () => this.#openSession(),
        close: (s) => this.#closeSession(s),
        isFatal: (err) => translate(err, 'HSM_ERR_INTERNAL', '').code === 'HSM_ERR_UNAVAILABLE',
        breaks: breaksSession,
      },
      options.sessions,
      options.sessionWaitMs === undefined ? {} : { acquireTimeoutMs: options.sessionWaitMs },
    );
    this.#refreshOnMiss = options.refreshOnMiss ?? token.manufacturer === SOFTHSM_MANUFACTURER;
  }

  /** Open all sessions now: a wrong PIN or a missing token fails the start, not the first request. */
  start(): void {
    this.#pool.fill();
    this.#indexKeys();
  }

  /**
   * One search over every RSA private key, once at open: afterwards no decrypt, not even the
   * first one of a key, searches the token (a search costs O(objects in the token)). Keys that
   * other instances create later miss here and are found by `#key`'s search.
   */
  #indexKeys(): void {
    const session = this.#openSession();
    try {
      const seen = new Set<string>();
      const handles = this.#find(session, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
      ]);
      for (const privateKey of handles) {
        const [id, modulus] = this.#p.C_GetAttributeValue(session, privateKey, [
          { type: pkcs11js.CKA_ID },
          { type: pkcs11js.CKA_MODULUS },
        ]);
        const keyId = keyIdFromObjectId((id?.value as Buffer) ?? Buffer.alloc(0));
        if (keyId === undefined) continue;
        if (seen.has(keyId)) {
          // Two keys under one id: leave it to the search, which reports the ambiguity.
          this.#keys.delete(keyId);
          continue;
        }
        seen.add(keyId);
        this.#keys.set(keyId, { privateKey, modulusBytes: unsigned(modulus?.value as Buffer).length, epoch: this.#epoch });
      }
    } finally {
      // The pool's sessions stay open, so closing this one keeps the login.
      this.#closeSession(session);
    }
  }

  #openSession(): Handle {
    let session: Handle;
    try {
      session = this.#p.C_OpenSession(this.#slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    } catch (err) {
      throw translate(err, 'HSM_ERR_UNAVAILABLE', 'cannot open a session');
    }
    try {
      // Login state belongs to the application, not the session: log in only if it was lost.
      const { state } = this.#p.C_GetSessionInfo(session);
      if (state !== CKS_RW_USER_FUNCTIONS && state !== CKS_RO_USER_FUNCTIONS) {
        try {
          this.#p.C_Login(session, pkcs11js.CKU_USER, this.#pin);
        } catch (err) {
          if (ckrOf(err) !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw err;
        }
      }
    } catch (err) {
      this.#closeSession(session);
      const code = ckrOf(err);
      if (code === pkcs11js.CKR_PIN_INCORRECT || code === pkcs11js.CKR_PIN_LOCKED || code === pkcs11js.CKR_PIN_EXPIRED) {
        throw new HsmError('HSM_ERR_LOGIN', `login to token "${this.token.label}" refused (${ckrName(code)})`, {
          ckr: ckrName(code),
        });
      }
      throw translate(err, 'HSM_ERR_LOGIN', 'login failed');
    }
    return session;
  }

  #closeSession(session: Handle): void {
    try {
      this.#p.C_CloseSession(session);
    } catch {
      // Already invalid: nothing to release.
    }
  }

  #find(session: Handle, template: P11.Template): Handle[] {
    this.#searches += 1;
    this.#p.C_FindObjectsInit(session, template);
    try {
      const found: Handle[] = [];
      for (;;) {
        const batch = this.#p.C_FindObjects(session, 64);
        if (batch.length === 0) return found;
        found.push(...batch);
      }
    } finally {
      this.#p.C_FindObjectsFinal(session);
    }
  }

  /** Run a token operation on a pooled session, translating failures at this boundary. */
  async #run<T>(fallback: HsmErrorCode, what: string, fn: (session: Handle) => Promise<T> | T): Promise<T> {
    if (this.#closed) throw new HsmError('HSM_ERR_UNAVAILABLE', 'key store is closed');
    try {
      return await this.#pool.use(fn);
    } catch (err) {
      throw translate(err, fallback, what);
    }
  }

  async #key(keyId: string): Promise<KeyEntry> {
    const cached = this.#keys.get(keyId);
    if (cached) return cached;
    let objectId: Buffer;
    try {
      objectId = keyObjectId(keyId);
    } catch {
      throw new HsmError('HSM_ERR_KEY_NOT_FOUND', 'key id is not a UUID');
    }
    const search = () => this.#run('HSM_ERR_INTERNAL', 'key lookup failed', (s) => {
      const handles = this.#find(s, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
        { type: pkcs11js.CKA_ID, value: objectId },
      ]);
      if (handles.length === 0) {
        // Private keys are invisible to a session that lost its login: that is no miss.
        this.#assertLoggedIn(s);
        return undefined;
      }
      if (handles.length > 1) {
        throw new HsmError('HSM_ERR_KEY_AMBIGUOUS', `${handles.length} private keys carry the id of keypair ${keyId}`);
      }
      const privateKey = handles[0] as Handle;
      const [modulus] = this.#p.C_GetAttributeValue(s, privateKey, [{ type: pkcs11js.CKA_MODULUS }]);
      return { privateKey, modulusBytes: unsigned(modulus?.value as Buffer).length, epoch: this.#epoch };
    });
    let entry = await search();
    if (entry === undefined && this.#refreshOnMiss) {
      // SoftHSM's file store hides objects another process created before this one last wrote
      // (it adopts the token's generation counter without re-reading the directory), and no
      // search, fresh session or token-info call shows them: only re-initialising the library
      // does (measured: found 3–7 ms after it). So a miss is final only after a refresh that
      // began after the search; the refresh re-indexes every key, which also answers the
      // misses that wait for it.
      const seenAt = this.#epoch;
      // Without a refresh (the library is shared in this process) the search has the last word.
      while (this.#epoch === seenAt && (await this.#refresh())) {
        // A refresh that had begun before the search does not count: wait for the next one.
      }
      entry = this.#keys.get(keyId) ?? (await search());
    }
    if (entry === undefined) throw new HsmError('HSM_ERR_KEY_NOT_FOUND', `no key for keypair ${keyId} in the token`);
    this.#keys.set(keyId, entry);
    return entry;
  }

  /**
   * Re-initialise the library so it reads the token afresh, at most once per
   * REFRESH_INTERVAL_MS; concurrent callers share one refresh. Runs only while no operation is
   * in flight (SessionPool.exclusive): finalising under a running C_Decrypt crashes the process.
   * Fails with HSM_ERR_UNAVAILABLE when the operations in flight do not finish in time; resolves
   * false when another holder in this process shares the library (it cannot be re-initialised
   * under them; a search is then final).
   */
  #refresh(): Promise<boolean> {
    if (!this.#module.sole) return Promise.resolve(false);
    this.#refreshing ??= (async () => {
      const wait = this.#lastRefreshAt + REFRESH_INTERVAL_MS - Date.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      if (this.#closed) throw new HsmError('HSM_ERR_UNAVAILABLE', 'key store is closed');
      const started = performance.now();
      let shared = false;
      let ran: boolean;
      try {
        ran = await this.#pool.exclusive(() => {
          const forget = () => {
            // Every handle of the old initialisation is void (and its numbers may be reused).
            this.#epoch += 1;
            this.#keys.clear();
            this.#secretsKey = undefined;
          };
          try {
            if (!this.#module.reinitialize()) {
              shared = true;
              return;
            }
          } finally {
            if (!shared) forget();
          }
          this.#slot = findTokenSlot(this.#p, this.token.label);
          this.#indexKeys();
        }, REFRESH_DRAIN_MS);
      } catch (err) {
        throw translate(err, 'HSM_ERR_UNAVAILABLE', 'token refresh failed');
      } finally {
        this.#lastRefreshAt = Date.now();
      }
      if (!ran) throw new HsmError('HSM_ERR_UNAVAILABLE', 'token busy: could not refresh its object list');
      // Another store opened meanwhile: no refresh after all.
      if (shared) return false;
      this.#refreshes += 1;
      this.#refreshMs = performance.now() - started;
      return true;
    })().finally(() => {
      this.#refreshing = undefined;
    });
    return this.#refreshing;
  }

  /** Use a cached key handle; if the token says it went stale, look it up once more. */
  async #withKey<T>(keyId: string, fn: (key: KeyEntry) => Promise<T>): Promise<T> {
    const key = await this.#key(keyId);
    try {
      return await fn(key);
    } catch (err) {
      const cause = err instanceof HsmError ? err.cause : err;
      if (!(err instanceof StaleEpochError) && !isStaleHandle(cause)) throw err;
      this.#keys.delete(keyId);
      return fn(await this.#key(keyId));
    }
  }

  async #assertAbsent(keyId: string): Promise<Buffer> {
    const objectId = keyObjectId(keyId);
    const existing = await this.#run('HSM_ERR_INTERNAL', 'key lookup failed', (s) =>
      this.#find(s, [{ type: pkcs11js.CKA_ID, value: objectId }]),
    );
    if (existing.length > 0) throw new HsmError('HSM_ERR_KEY_EXISTS', `the token already holds keypair ${keyId}`);
    return objectId;
  }

  async ensureServiceKeys(): Promise<void> {
    await this.#run('HSM_ERR_INTERNAL', 'cannot create the secrets key', (s) => {
      if (this.#findSecretsKey(s) !== undefined) return;
      this.#p.C_GenerateKey(s, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, secretsKeyTemplate(randomBytes(16)));
    });
  }

  /** Throw StaleEpochError when `epoch` is from before a refresh (call with a session held). */
  #current(epoch: number): void {
    if (epoch !== this.#epoch) throw new StaleEpochError();
  }

  /** The secrets key; with several (a start-up race elsewhere), the lowest CKA_ID wins everywhere. */
  #findSecretsKey(session: Handle): Handle | undefined {
    const handles = this.#find(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
      { type: pkcs11js.CKA_LABEL, value: SECRETS_KEY_LABEL },
    ]);
    if (handles.length <= 1) return handles[0];
    const withIds = handles.map((h) => {
      const [id] = this.#p.C_GetAttributeValue(session, h, [{ type: pkcs11js.CKA_ID }]);
      return { h, id: (id?.value as Buffer) ?? Buffer.alloc(0) };
    });
    withIds.sort((a, b) => Buffer.compare(a.id, b.id));
    return withIds[0]?.h;
  }

  async #secrets(): Promise<{ handle: Handle; epoch: number }> {
    if (this.#secretsKey !== undefined) return this.#secretsKey;
    const found = await this.#run('HSM_ERR_INTERNAL', 'secrets key lookup failed', (s) => {
      const handle = this.#findSecretsKey(s);
      return handle === undefined ? undefined : { handle, epoch: this.#epoch };
    });
    if (found === undefined) {
      throw new HsmError(
        'HSM_ERR_KEY_NOT_FOUND',
        `token "${this.token.label}" has no secrets key (start the service once to create it)`,
      );
    }
    this.#secretsKey = found;
    return found;
  }

  async generateRsaKeyPair(keyId: string, bits: number): Promise<RsaPublicKey> {
    if (!Number.isInteger(bits) || bits < 2048 || bits > 8192 || bits % 8 !== 0) {
      throw new HsmError('HSM_ERR_INPUT', 'RSA modulus size must be a multiple of 8 between 2048 and 8192');
    }
    await this.#assertAbsent(keyId);
    const { pub, entry } = await this.#run('HSM_ERR_INTERNAL', 'RSA key generation failed', async (s) => {
      const pair = await this.#p.C_GenerateKeyPairAsync(
        s,
        { mechanism: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN },
        rsaGeneratePublicTemplate(keyId, bits),
        rsaGeneratePrivateTemplate(keyId),
      );
      const pub = this.#readPublic(s, pair.publicKey);
      return { pub, entry: { privateKey: pair.privateKey, modulusBytes: pub.modulus.length, epoch: this.#epoch } };
    });
    this.#keys.set(keyId, entry);
    return pub;
  }

  async importRsaKeyPair(keyId: string, key: RsaPrivateKeyComponents): Promise<RsaPublicKey> {
    checkComponents(key);
    await this.#assertAbsent(keyId);
    const publicKey: RsaPublicKey = { modulus: unsigned(key.modulus), publicExponent: unsigned(key.publicExponent) };
    const entry = await this.#run('HSM_ERR_INTERNAL', 'RSA key import failed', (s) => {
      const privateKey = this.#p.C_CreateObject(s, rsaImportPrivateTemplate(keyId, key));
      try {
        this.#p.C_CreateObject(s, rsaImportPublicTemplate(keyId, publicKey));
      } catch (err) {
        this.#p.C_DestroyObject(s, privateKey);
        throw err;
      }
      return { privateKey, modulusBytes: publicKey.modulus.length, epoch: this.#epoch };
    });
    this.#keys.set(keyId, entry);
    // Prove the token computes with what we stored before anyone relies on it.
    const probe = randomBytes(32);
    const encrypted = publicEncrypt(
      { key: toNodePublicKey(publicKey), padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' },
      probe,
    );
    let ok = false;
    try {
      const decrypted = await this.rsaDecrypt(keyId, 'oaep-sha1', encrypted);
      ok = decrypted.length === probe.length && timingSafeEqual(decrypted, probe);
    } catch (err) {
      if (!(err instanceof HsmError) || err.code !== 'HSM_ERR_DECRYPT') throw err;
    }
    if (!ok) {
      await this.deleteKeyPair(keyId);
      throw new HsmError('HSM_ERR_KEY_INVALID', `imported key ${keyId} failed its round trip and was removed`);
    }
    return publicKey;
  }

  #readPublic(session: Handle, handle: Handle): RsaPublicKey {
    const [modulus, exponent] = this.#p.C_GetAttributeValue(session, handle, [
      { type: pkcs11js.CKA_MODULUS },
      { type: pkcs11js.CKA_PUBLIC_EXPONENT },
    ]);
    return { modulus: unsigned(modulus?.value as Buffer), publicExponent: unsigned(exponent?.value as Buffer) };
  }

  async getRsaPublicKey(keyId: string): Promise<RsaPublicKey | undefined> {
    try {
      // CKA_MODULUS and CKA_PUBLIC_EXPONENT stay readable on a sensitive private key.
      return await this.#withKey(keyId, (key) =>
        this.#run('HSM_ERR_INTERNAL', 'cannot read the public key', (s) => {
          this.#current(key.epoch);
          return this.#readPublic(s, key.privateKey);
        }),
      );
    } catch (err) {
      if (err instanceof HsmError && err.code === 'HSM_ERR_KEY_NOT_FOUND') return undefined;
      throw err;
    }
  }

  async rsaModulusBytes(keyId: string): Promise<number> {
    return (await this.#key(keyId)).modulusBytes;
  }

  async rsaDecrypt(keyId: string, padding: RsaPadding, ciphertext: Buffer): Promise<Buffer> {
    return this.#withKey(keyId, async (key) => {
      // RFC 8017 §7.1.2 step 1 / §7.2.2 step 1: the length is checked before the token sees it.
      if (ciphertext.length !== key.modulusBytes) {
        throw new HsmError('HSM_ERR_INPUT', `ciphertext must be ${key.modulusBytes} bytes`);
      }
      const mechanism = mechanismFor(padding);
      return this.#run('HSM_ERR_INTERNAL', 'decryption could not start', async (s) => {
        this.#current(key.epoch);
        this.#p.C_DecryptInit(s, mechanism, key.privateKey);
        try {
          return await this.#p.C_DecryptAsync(s, ciphertext, Buffer.alloc(key.modulusBytes));
        } catch (err) {
          // One code for every refusal (padding, wrong key, value ≥ n): no padding oracle here.
          throw translate(err, 'HSM_ERR_DECRYPT', 'decryption refused');
        }
      });
    });
  }

  async deleteKeyPair(keyId: string): Promise<boolean> {
    const objectId = keyObjectId(keyId);
    this.#keys.delete(keyId);
    return this.#run('HSM_ERR_INTERNAL', 'cannot destroy the key', (s) => {
      const handles = this.#find(s, [{ type: pkcs11js.CKA_ID, value: objectId }]);
      for (const h of handles) this.#p.C_DestroyObject(s, h);
      return handles.length > 0;
    });
  }

  async listKeyPairIds(): Promise<string[]> {
    return this.#run('HSM_ERR_INTERNAL', 'cannot list keys', (s) => {
      const handles = this.#find(s, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
      ]);
      const ids: string[] = [];
      for (const h of handles) {
        const [id] = this.#p.C_GetAttributeValue(s, h, [{ type: pkcs11js.CKA_ID }]);
        const keyId = keyIdFromObjectId((id?.value as Buffer) ?? Buffer.alloc(0));
        if (keyId !== undefined) ids.push(keyId);
      }
      return ids.sort();
    });
  }

  /** Use the cached secrets key handle; if the token says it went stale (sessions rebuilt), find it again. */
  async #withSecrets<T>(fn: (key: { handle: Handle; epoch: number }) => Promise<T>): Promise<T> {
    const key = await this.#secrets();
    try {
      return await fn(key);
    } catch (err) {
      const cause = err instanceof HsmError ? err.cause : err;
      if (!(err instanceof StaleEpochError) && !isStaleHandle(cause)) throw err;
      this.#secretsKey = undefined;
      return fn(await this.#secrets());
    }
  }

  async sealSecret(plaintext: Buffer, context: string): Promise<Buffer> {
    if (plaintext.length === 0) throw new HsmError('HSM_ERR_INPUT', 'cannot seal an empty secret');
    const iv = randomBytes(GCM_IV_BYTES);
    const ciphertext = await this.#withSecrets((key) =>
      this.#run('HSM_ERR_INTERNAL', 'cannot seal the secret', async (s) => {
        this.#current(key.epoch);
        this.#p.C_EncryptInit(s, gcm(iv, context), key.handle);
        return this.#p.C_EncryptAsync(s, plaintext, Buffer.alloc(plaintext.length + GCM_TAG_BYTES));
      }),
    );
    return Buffer.concat([Buffer.from([SEAL_VERSION]), iv, ciphertext]);
  }

  async openSecret(sealed: Buffer, context: string): Promise<Buffer> {
    if (sealed.length < 1 + GCM_IV_BYTES + GCM_TAG_BYTES || sealed[0] !== SEAL_VERSION) {
      throw new HsmError('HSM_ERR_SECRET_INVALID', 'sealed secret is malformed');
    }
    const iv = sealed.subarray(1, 1 + GCM_IV_BYTES);
    const body = sealed.subarray(1 + GCM_IV_BYTES);
    return this.#withSecrets((key) =>
      this.#run('HSM_ERR_INTERNAL', 'cannot open the sealed secret', async (s) => {
        this.#current(key.epoch);
        this.#p.C_DecryptInit(s, gcm(Buffer.from(iv), context), key.handle);
        try {
          return await this.#p.C_DecryptAsync(s, Buffer.from(body), Buffer.alloc(body.length));
        } catch (err) {
          // Only the decryption itself says "does not authenticate"; a stale handle or a lost
          // session is not evidence of a tampered row.
          throw translate(err, 'HSM_ERR_SECRET_INVALID', 'sealed secret did not authenticate');
        }
      }),
    );
  }

  async checkLogin(): Promise<void> {
    await this.#run('HSM_ERR_UNAVAILABLE', 'token check failed', (s) => this.#assertLoggedIn(s));
  }

  #assertLoggedIn(session: Handle): void {
    const { state } = this.#p.C_GetSessionInfo(session);
    if (state !== CKS_RW_USER_FUNCTIONS && state !== CKS_RO_USER_FUNCTIONS) {
      // Thrown inside the pool: this session is replaced (and logged in again) on the way out.
      throw new HsmError('HSM_ERR_UNAVAILABLE', 'the token session is not logged in', { ckr: 'CKR_USER_NOT_LOGGED_IN' });
    }
  }

  async checkCustody(): Promise<CustodyCheck> {
    return this.#run('HSM_ERR_INTERNAL', 'custody probe failed', (s) => {
      let probe: Handle;
      let wrapper: Handle;
      try {
        probe = this.#p.C_GenerateKey(s, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, custodyProbeTemplate());
        wrapper = this.#p.C_GenerateKey(s, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, custodyWrapperTemplate());
      } catch (err) {
        return { wrapWithTrusted: 'inconclusive', detail: `cannot create probe keys (${describeCkr(err)})` };
      }
      try {
        // RFC 3394 AES key wrap of a 256-bit key: needs no padding, so any AES-capable token has it.
        this.#p.C_WrapKey(s, { mechanism: pkcs11js.CKM_AES_KEY_WRAP }, wrapper, probe, Buffer.alloc(64));
        return { wrapWithTrusted: 'not-enforced', detail: 'an untrusted key wrapped a CKA_WRAP_WITH_TRUSTED key' };
      } catch (err) {
        if (ckrOf(err) === pkcs11js.CKR_KEY_NOT_WRAPPABLE) return { wrapWithTrusted: 'enforced' };
        return { wrapWithTrusted: 'inconclusive', detail: `wrap probe answered ${describeCkr(err)}` };
      } finally {
        for (const h of [probe, wrapper]) {
          try {
            this.#p.C_DestroyObject(s, h);
          } catch {
            // Session objects vanish with the session anyway.
          }
        }
      }
    });
  }

  stats(): KeyStoreStats {
    return {
      objectSearches: this.#searches,
      sessionsReplaced: this.#pool.replacedCount,
      sessionsOpen: this.#pool.openCount,
      sessionWaitTimeouts: this.#pool.busyCount,
      tokenRefreshes: this.#refreshes,
      lastTokenRefreshMs: Math.round(this.#refreshMs * 10) / 10,
    };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#keys.clear();
    let timer: NodeJS.Timeout | undefined;
    const drained = await Promise.race([
      this.#pool.close().then(() => true),
      new Promise<false>((resolve) => {
        timer = setTimeout(() => resolve(false), CLOSE_TIMEOUT_MS);
      }),
    ]);
    clearTimeout(timer);
    // Finalising the module under an operation still running on the thread pool crashes the
    // process; if one never returns, leave the module loaded rather than finalise it.
    if (drained) this.#module.release();
  }
}

function toNodePublicKey(key: RsaPublicKey) {
  return createPublicKey({
    key: { kty: 'RSA', n: key.modulus.toString('base64url'), e: key.publicExponent.toString('base64url') },
    format: 'jwk',
  });
}

function describeCkr(err: unknown): string {
  const code = ckrOf(err);
  return code === undefined ? 'not a PKCS#11 error' : ckrName(code);
}

function big(b: Buffer): bigint {
  return b.length === 0 ? 0n : BigInt(`0x${b.toString('hex')}`);
}

/** Cheap arithmetic checks before the token: a corrupt key fails here with a clear message. */
function checkComponents(key: RsaPrivateKeyComponents): void {
  const n = big(key.modulus);
  const p = big(key.prime1);
  const q = big(key.prime2);
  const bits = modulusBits(key.modulus);
  if (bits < MIN_IMPORT_BITS) throw new HsmError('HSM_ERR_INPUT', `RSA modulus of ${bits} bits is below ${MIN_IMPORT_BITS}`);
  if (p * q !== n) throw new HsmError('HSM_ERR_KEY_INVALID', 'RSA key is inconsistent: p·q ≠ n');
  const d = big(key.privateExponent);
  if (big(key.exponent1) !== d % (p - 1n) || big(key.exponent2) !== d % (q - 1n)) {
    throw new HsmError('HSM_ERR_KEY_INVALID', 'RSA key is inconsistent: CRT exponents do not match d');
  }
  if ((big(key.coefficient) * q) % p !== 1n) {
    throw new HsmError('HSM_ERR_KEY_INVALID', 'RSA key is inconsistent: coefficient is not q⁻¹ mod p');
  }
}
