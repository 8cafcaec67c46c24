import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import type * as P11 from 'pkcs11js';
import { probeCapabilities, type TokenCapabilities } from './capabilities.js';
import { parseCertificate } from './certificate.js';
import { HsmError, ckrName, ckrOf, isStaleHandle, translate } from './errors.js';
import {
  checkAlias,
  newKeyId,
  specInfo,
  specOfCurve,
  specOfEcParams,
  specOfRsaBits,
  type DecryptScheme,
  type KeyLookup,
  type KeyRef,
  type KeySpec,
  type KeyUsage,
} from './key-spec.js';
import type { RsaPrivateKeyComponents, TokenDescription } from './keystore.js';
import { RSA_PKCS1_V15, rsaOaep } from './mechanisms.js';
import { findTokenSlot, loadModule, type LoadedModule } from './module.js';
import { decryptionRefused, oaepDecode } from './oaep.js';
import type { Pkcs11KeyStoreOptions } from './pkcs11-keystore.js';
import { modulusBits, unsigned } from './rsa-der.js';
import { SessionPool } from './session-pool.js';
import { DEFAULT_LANE, SessionLanes } from './session-lanes.js';
import { ecdsaRawToDer, signInput, signMechanism, type SignScheme } from './signature.js';
import {
  certificateTemplate,
  decodeEcPoint,
  importedRsaKeyPairTemplates,
  keyPairTemplates,
  partnerPublicKeyTemplate,
  unpackMechanisms,
  type PublicKeyMaterial,
} from './usage-templates.js';

type Handle = P11.Handle;

/** What the token holds under one CKA_ID. */
export type KeyForm =
  /** Our key pair: the private key is in the token. */
  | 'key-pair'
  /** A partner's public key (imported as SubjectPublicKeyInfo). */
  | 'public-key'
  /** A partner's certificate, with its public key next to it. */
  | 'certificate';

/** Where a decryption scheme of a key runs. */
export type SchemeEngine =
  /** The token pads and unpads (CKM_RSA_PKCS_OAEP, CKM_RSA_PKCS). */
  | 'token'
  /** The token computes raw RSA (CKM_RSA_X_509) and hsm/oaep.ts decodes in constant time. */
  | 'raw-rsa+decoder';

export interface KeyInfo {
  readonly ref: KeyRef;
  readonly spec: KeySpec;
  readonly usage: KeyUsage;
  readonly form: KeyForm;
  /** Decryption schemes this key answers, and where each runs; empty for everything but decrypt key pairs. */
  readonly decryptSchemes: Readonly<Partial<Record<DecryptScheme, SchemeEngine>>>;
}

/** A public key in both shapes callers need. */
export interface PublicKeyExport {
  /** DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7). */
  readonly spki: Buffer;
  /** RFC 7517 JWK: kty, n/e or crv/x/y, and `use` from the key's usage. */
  readonly jwk: JsonWebKey;
}

/** Which session lane (face) an operation runs in; DEFAULT_LANE when absent. */
export interface OperationOptions {
  readonly lane?: string;
}

export interface Pkcs11KeyStoreV2Options extends Pkcs11KeyStoreOptions {
  /**
   * Sessions reserved per lane, e.g. `{ lkm: 2, jose: 1 }` of 4: a burst in one lane never takes
   * another lane's reservation. Together fewer than `sessions`.
   */
  readonly lanes?: Readonly<Record<string, number>>;
}

export interface GenerateRequest extends OperationOptions {
  readonly spec: KeySpec;
  readonly usage: KeyUsage;
  readonly alias: string;
  /**
   * Decrypt keys only: the schemes the key will answer, fixed at creation (default OAEP with
   * SHA-1 and SHA-256). PKCS#1 v1.5 runs only in the token, so on a token that cannot do
   * OAEP-SHA256 itself one key cannot have both.
   */
  readonly decryptSchemes?: readonly DecryptScheme[];
}

export interface ListFilter {
  readonly usage?: KeyUsage;
  readonly alias?: string;
  readonly form?: KeyForm;
}

/**
 * KeyStore v2: key pairs of several specs and one usage each, named by CKA_ID and alias, and a
 * partner's public keys and certificates as public token objects. Private keys never leave the
 * token; every private operation is the token's, except the OAEP decoding of raw-RSA keys.
 */
export interface KeyStoreV2 {
  readonly token: TokenDescription;
  /** What the token does itself, probed at open. */
  readonly capabilities: TokenCapabilities;

  /** Generate a key pair in the token. HSM_ERR_KEY_EXISTS when the alias is taken. */
  generate(request: GenerateRequest): Promise<KeyInfo>;

  /**
   * Put an existing RSA private key into the token with the same template as a generated one
   * of that usage. The caller drops its copy once this resolves.
   */
  importRsaKeyPair(request: Omit<GenerateRequest, 'spec'>, key: RsaPrivateKeyComponents): Promise<KeyInfo>;

  /** A partner's public key (DER SubjectPublicKeyInfo) stored under `alias`. */
  importPublicKey(alias: string, usage: KeyUsage, spki: Buffer): Promise<KeyInfo>;

  /** A partner's X.509 certificate (DER), with its public key, under `alias`. */
  importCertificate(alias: string, usage: KeyUsage, der: Buffer): Promise<KeyInfo>;

  /**
   * Decrypt with a decrypt key. Every failure of the decryption itself is the one error
   * HSM_ERR_DECRYPT "decryption refused"; a key or token that does not allow the scheme is
   * HSM_ERR_KEY_USAGE with the token's CKR name.
   */
  decrypt(key: KeyLookup, scheme: DecryptScheme, ciphertext: Buffer, options?: OperationOptions): Promise<Buffer>;

  /**
   * Sign a digest the caller computed. RSA answers the k-byte signature; ECDSA answers DER
   * SEQUENCE{r,s} (a JOSE caller converts to r‖s itself).
   */
  sign(key: KeyLookup, scheme: SignScheme, digest: Buffer, options?: OperationOptions): Promise<Buffer>;

  publicKey(key: KeyLookup): Promise<PublicKeyExport>;

  /** The DER certificate stored under `key`, or undefined if it is a bare key. */
  certificate(key: KeyLookup): Promise<Buffer | undefined>;

  /** HSM_ERR_KEY_NOT_FOUND when nothing carries that id or alias. */
  describe(key: KeyLookup): Promise<KeyInfo>;

  /** Every key the store can use, filtered; sorted by alias. */
  list(filter?: ListFilter): Promise<KeyInfo[]>;

  /** Destroy every object under the key's CKA_ID. False when there was nothing. */
  destroy(key: KeyLookup): Promise<boolean>;

  close(): Promise<void>;
}

interface KeyEntry {
  readonly info: KeyInfo;
  readonly privateKey: Handle | undefined;
  readonly certificate: Handle | undefined;
  readonly material: PublicKeyMaterial;
  /** RSA modulus bytes, or EC r‖s bytes: the output length of the private operation. */
  readonly outputBytes: number;
}

// PKCS#11 session states (v2.40 §5.6); pkcs11js does not export CKS_*.
const CKS_RO_USER_FUNCTIONS = 1;
const CKS_RW_USER_FUNCTIONS = 3;
const CLOSE_TIMEOUT_MS = 10_000;
const DEFAULT_DECRYPT_SCHEMES: readonly DecryptScheme[] = ['oaep-sha1', 'oaep-sha256'];
const DECRYPT_SCHEMES: readonly DecryptScheme[] = ['oaep-sha1', 'oaep-sha256', 'pkcs1'];

const hex = (id: Buffer) => id.toString('hex');

function lookupOf(key: KeyLookup): { id: Buffer } | { alias: string } {
  if ('id' in key && Buffer.isBuffer(key.id)) return { id: key.id };
  if ('alias' in key && typeof key.alias === 'string') return { alias: key.alias };
  throw new HsmError('HSM_ERR_INPUT', 'a key is named by { id } or { alias }');
}

function describeLookup(key: KeyLookup): string {
  const l = lookupOf(key);
  return 'alias' in l ? `alias "${l.alias}"` : `id ${hex(l.id)}`;
}

/** Open the token, log in, probe what it can do and fill the session pool. */
export async function openPkcs11KeyStoreV2(options: Pkcs11KeyStoreV2Options): Promise<Pkcs11KeyStoreV2> {
  // Checked before the module is loaded: a bad lane plan is a configuration error.
  const lanes = new SessionLanes(options.sessions, options.lanes);
  const module = loadModule(options.modulePath, options.libraryParameters);
  let store: Pkcs11KeyStoreV2 | undefined;
  try {
    const slot = findTokenSlot(module.pkcs11, options.tokenLabel);
    const info = module.pkcs11.C_GetTokenInfo(slot);
    if ((info.flags & pkcs11js.CKF_USER_PIN_INITIALIZED) === 0) {
      throw new HsmError('HSM_ERR_LOGIN', `token "${options.tokenLabel}" has no user PIN yet`);
    }
    const token: TokenDescription = {
      modulePath: options.modulePath,
      label: info.label.trim(),
      serialNumber: info.serialNumber.trim(),
      manufacturer: info.manufacturerID.trim(),
      model: info.model.trim(),
    };
    store = new Pkcs11KeyStoreV2(module, slot, token, options, lanes);
    store.start();
    return store;
  } catch (err) {
    if (store) await store.close();
    else module.release();
    throw err;
  }
}

/** KeyStoreV2 over a PKCS#11 token; private operations run on libuv's thread pool, one per session. */
export class Pkcs11KeyStoreV2 implements KeyStoreV2 {
  readonly token: TokenDescription;
  #capabilities: TokenCapabilities | undefined;
  readonly #module: LoadedModule;
  readonly #p: P11.PKCS11;
  readonly #slot: Handle;
  readonly #pin: string;
  readonly #pool: SessionPool<Handle>;
  readonly #lanes: SessionLanes;
  /** By hex CKA_ID. Public data and handles only. */
  readonly #byId = new Map<string, KeyEntry>();
  readonly #idByAlias = new Map<string, string>();
  #closed = false;

  constructor(module: LoadedModule, slot: Handle, token: TokenDescription, options: Pkcs11KeyStoreOptions, lanes: SessionLanes) {
    this.#module = module;
    this.#lanes = lanes;
    this.#p = module.pkcs11;
    this.#slot = slot;
    this.#pin = options.pin;
    this.token = token;
    this.#pool = new SessionPool<Handle>(
      {
        open: () => this.#openSession(),
        close: (s) => this.#closeSession(s),
        isFatal: (err) => translate(err, 'HSM_ERR_INTERNAL', '').code === 'HSM_ERR_UNAVAILABLE',
      },
      options.sessions,
    );
  }

  get capabilities(): TokenCapabilities {
    if (this.#capabilities === undefined) throw new HsmError('HSM_ERR_UNAVAILABLE', 'key store is not open');
    return this.#capabilities;
  }

  /** Log in and probe on the pool's sessions, so a wrong PIN fails the start, not the first request. */
  start(): void {
    this.#pool.fill();
    // The probe may leave an operation active (a module that ignores the allowed-mechanism
    // list): it gets a session of its own, closed afterwards (the pool's keep the login).
    const session = this.#openSession();
    try {
      this.#capabilities = probeCapabilities(this.#p, this.#slot, session);
    } catch (err) {
      throw translate(err, 'HSM_ERR_INTERNAL', 'capability probe failed');
    } finally {
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
        throw new HsmError('HSM_ERR_LOGIN', `login to token "${this.token.label}" refused (${ckrName(code)})`, { ckr: ckrName(code) });
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

  async #run<T>(what: string, fn: (session: Handle) => Promise<T> | T, lane: string = DEFAULT_LANE): Promise<T> {
    if (this.#closed) throw new HsmError('HSM_ERR_UNAVAILABLE', 'key store is closed');
    try {
      return await this.#lanes.run(lane, () => this.#pool.use(fn));
    } catch (err) {
      throw translate(err, 'HSM_ERR_INTERNAL', what);
    }
  }

  #attr(session: Handle, handle: Handle, type: number): Buffer | undefined {
    const [a] = this.#p.C_GetAttributeValue(session, handle, [{ type }]);
    return a?.value as Buffer | undefined;
  }

  #bool(session: Handle, handle: Handle, type: number): boolean {
    const v = this.#attr(session, handle, type);
    return v !== undefined && v.length > 0 && v[0] !== 0;
  }

  /** Modules without CKA_ALLOWED_MECHANISMS answer CKR_ATTRIBUTE_TYPE_INVALID: no restriction. */
  #allowed(session: Handle, handle: Handle): number[] {
    try {
      return unpackMechanisms(this.#attr(session, handle, pkcs11js.CKA_ALLOWED_MECHANISMS) ?? Buffer.alloc(0));
    } catch (err) {
      if (ckrOf(err) === pkcs11js.CKR_ATTRIBUTE_TYPE_INVALID) return [];
      throw err;
    }
  }

  /** Public numbers and spec of a key object (private or public; RSA numbers are public on both). */
  #material(session: Handle, handle: Handle, publicKey: Handle | undefined): { spec: KeySpec; material: PublicKeyMaterial; outputBytes: number } | undefined {
    const keyType = this.#attr(session, handle, pkcs11js.CKA_KEY_TYPE);
    const type = keyType === undefined ? -1 : Number(keyType.readBigUInt64LE(0));
    if (type === pkcs11js.CKK_RSA) {
      const modulus = unsigned(this.#attr(session, handle, pkcs11js.CKA_MODULUS) ?? Buffer.alloc(0));
      const publicExponent = unsigned(this.#attr(session, handle, pkcs11js.CKA_PUBLIC_EXPONENT) ?? Buffer.alloc(0));
      const spec = specOfRsaBits(modulusBits(modulus));
      if (spec === undefined) return undefined;
      return { spec, material: { kind: 'rsa', modulus, publicExponent }, outputBytes: modulus.length };
    }
    if (type === pkcs11js.CKK_EC) {
      const params = this.#attr(session, handle, pkcs11js.CKA_EC_PARAMS) ?? Buffer.alloc(0);
      const spec = specOfEcParams(params);
      // The point lives on the public key object only.
      if (spec === undefined || publicKey === undefined) return undefined;
      const info = specInfo(spec);
      if (info.kind !== 'ec') return undefined;
      const point = decodeEcPoint(this.#attr(session, publicKey, pkcs11js.CKA_EC_POINT) ?? Buffer.alloc(0), info.coordinateBytes);
      return { spec, material: { kind: 'ec', params, point }, outputBytes: 2 * info.coordinateBytes };
    }
    return undefined;
  }

  /** Where each decryption scheme of a decrypt key runs, from its allowed mechanisms. */
  #schemes(allowed: readonly number[]): KeyInfo['decryptSchemes'] {
    if (allowed.length === 1 && allowed[0] === pkcs11js.CKM_RSA_X_509) {
      return { 'oaep-sha1': 'raw-rsa+decoder', 'oaep-sha256': 'raw-rsa+decoder' };
    }
    const any = allowed.length === 0;
    const out: Partial<Record<DecryptScheme, SchemeEngine>> = {};
    if (any || allowed.includes(pkcs11js.CKM_RSA_PKCS_OAEP)) {
      out['oaep-sha1'] = 'token';
      if (this.capabilities.oaepSha256) out['oaep-sha256'] = 'token';
    }
    if (any || allowed.includes(pkcs11js.CKM_RSA_PKCS)) out.pkcs1 = 'token';
    return out;
  }

  /**
   * Describe the objects under one CKA_ID. Undefined for what v2 does not manage: keys that
   * neither only decrypt nor only sign (transport and KEK keys), unsupported sizes or curves.
   */
  #describeObjects(session: Handle, id: Buffer, handles: readonly Handle[]): KeyEntry | undefined {
    let privateKey: Handle | undefined;
    let publicKey: Handle | undefined;
    let certificate: Handle | undefined;
    for (const h of handles) {
      const cls = Number((this.#attr(session, h, pkcs11js.CKA_CLASS) ?? Buffer.alloc(8)).readBigUInt64LE(0));
      if (cls === pkcs11js.CKO_PRIVATE_KEY) {
        if (privateKey !== undefined) throw new HsmError('HSM_ERR_KEY_AMBIGUOUS', `several private keys carry id ${hex(id)}`);
        privateKey = h;
      } else if (cls === pkcs11js.CKO_PUBLIC_KEY) {
        if (publicKey !== undefined) throw new HsmError('HSM_ERR_KEY_AMBIGUOUS', `several public keys carry id ${hex(id)}`);
        publicKey = h;
      } else if (cls === pkcs11js.CKO_CERTIFICATE) {
        certificate = h;
      }
    }
    const main = privateKey ?? publicKey;
    if (main === undefined) return undefined;
    const alias = (this.#attr(session, main, pkcs11js.CKA_LABEL) ?? Buffer.alloc(0)).toString('utf8');
    let usage: KeyUsage;
    if (privateKey !== undefined) {
      const decrypt = this.#bool(session, privateKey, pkcs11js.CKA_DECRYPT);
      const sign = this.#bool(session, privateKey, pkcs11js.CKA_SIGN);
      if (decrypt === sign) return undefined;
      usage = decrypt ? 'decrypt' : 'sign';
    } else {
      const encrypt = this.#bool(session, main, pkcs11js.CKA_ENCRYPT);
      const verify = this.#bool(session, main, pkcs11js.CKA_VERIFY);
      if (encrypt === verify) return undefined;
      usage = encrypt ? 'decrypt' : 'sign';
    }
    const m = this.#material(session, main, publicKey);
    if (m === undefined) return undefined;
    const form: KeyForm = privateKey !== undefined ? 'key-pair' : certificate !== undefined ? 'certificate' : 'public-key';
    const decryptSchemes = form === 'key-pair' && usage === 'decrypt' ? this.#schemes(this.#allowed(session, main)) : {};
    return {
      info: { ref: { id: Buffer.from(id), alias }, spec: m.spec, usage, form, decryptSchemes },
      privateKey,
      certificate,
      material: m.material,
      outputBytes: m.outputBytes,
    };
  }

  #remember(entry: KeyEntry): KeyEntry {
    this.#byId.set(hex(entry.info.ref.id), entry);
    this.#idByAlias.set(entry.info.ref.alias, hex(entry.info.ref.id));
    return entry;
  }

  #forget(entry: KeyEntry): void {
    this.#byId.delete(hex(entry.info.ref.id));
    if (this.#idByAlias.get(entry.info.ref.alias) === hex(entry.info.ref.id)) this.#idByAlias.delete(entry.info.ref.alias);
  }

  /**
   * Key and certificate objects matching `template`, grouped by CKA_ID. Searched class by class:
   * other objects (CKO_DATA of other applications) may have no CKA_ID at all.
   */
  #groups(session: Handle, template: P11.Template): Map<string, Handle[]> {
    const groups = new Map<string, Handle[]>();
    const handles = [pkcs11js.CKO_PRIVATE_KEY, pkcs11js.CKO_PUBLIC_KEY, pkcs11js.CKO_CERTIFICATE].flatMap((cls) =>
      this.#find(session, [{ type: pkcs11js.CKA_CLASS, value: cls }, ...template]),
    );
    for (const h of handles) {
      const id = hex(this.#attr(session, h, pkcs11js.CKA_ID) ?? Buffer.alloc(0));
      groups.set(id, [...(groups.get(id) ?? []), h]);
    }
    return groups;
  }

  #search(session: Handle, key: KeyLookup): KeyEntry | undefined {
    const l = lookupOf(key);
    if ('id' in l) return this.#describeObjects(session, l.id, this.#find(session, [{ type: pkcs11js.CKA_ID, value: l.id }]));
    // An alias names the objects of one id: two ids under one alias is ambiguous, not a guess.
    const labelled = this.#groups(session, [{ type: pkcs11js.CKA_LABEL, value: l.alias }]);
    const entries: KeyEntry[] = [];
    for (const [id] of labelled) {
      const all = this.#find(session, [{ type: pkcs11js.CKA_ID, value: Buffer.from(id, 'hex') }]);
      const entry = this.#describeObjects(session, Buffer.from(id, 'hex'), all);
      if (entry !== undefined) entries.push(entry);
    }
    if (entries.length > 1) throw new HsmError('HSM_ERR_KEY_AMBIGUOUS', `${entries.length} keys carry alias "${l.alias}"`);
    return entries[0];
  }

  async #entry(key: KeyLookup): Promise<KeyEntry> {
    const l = lookupOf(key);
    const cachedId = 'id' in l ? hex(l.id) : this.#idByAlias.get(l.alias);
    const cached = cachedId === undefined ? undefined : this.#byId.get(cachedId);
    if (cached) return cached;
    const entry = await this.#run('key lookup failed', (s) => this.#search(s, key));
    if (entry === undefined) throw new HsmError('HSM_ERR_KEY_NOT_FOUND', `no key with ${describeLookup(key)} in the token`);
    return this.#remember(entry);
  }

  /** Use a cached entry; if the token says its handle went stale, look it up once more. */
  async #withEntry<T>(key: KeyLookup, fn: (entry: KeyEntry) => Promise<T>): Promise<T> {
    const entry = await this.#entry(key);
    try {
      return await fn(entry);
    } catch (err) {
      const cause = err instanceof HsmError ? err.cause : err;
      if (!isStaleHandle(cause)) throw err;
      this.#forget(entry);
      return fn(await this.#entry(key));
    }
  }

  /**
   * Refuse a taken alias. Two instances creating one alias at the same moment can both pass;
   * lookups then answer HSM_ERR_KEY_AMBIGUOUS rather than pick one.
   */
  async #assertAliasFree(alias: string): Promise<void> {
    checkAlias(alias);
    const taken = await this.#run('alias lookup failed', (s) => this.#find(s, [{ type: pkcs11js.CKA_LABEL, value: alias }]).length > 0);
    if (taken) throw new HsmError('HSM_ERR_KEY_EXISTS', `alias "${alias}" is already in use`);
  }

  /** The allowed mechanisms of a new key pair: its usage's and no other. */
  #allowedFor(spec: KeySpec, usage: KeyUsage, schemes: readonly DecryptScheme[] | undefined): number[] {
    const info = specInfo(spec);
    if (usage === 'sign') {
      if (schemes !== undefined) throw new HsmError('HSM_ERR_INPUT', 'decryptSchemes apply to decrypt keys only');
      return info.kind === 'ec' ? [pkcs11js.CKM_ECDSA] : [pkcs11js.CKM_RSA_PKCS, pkcs11js.CKM_RSA_PKCS_PSS];
    }
    if (usage !== 'decrypt') throw new HsmError('HSM_ERR_INPUT', `unknown key usage "${String(usage)}"`);
    if (info.kind === 'ec') throw new HsmError('HSM_ERR_INPUT', `an ${spec} key can only sign`);
    const wanted = schemes ?? DEFAULT_DECRYPT_SCHEMES;
    if (wanted.length === 0 || wanted.some((s) => !DECRYPT_SCHEMES.includes(s))) {
      throw new HsmError('HSM_ERR_INPUT', `decryptSchemes must be a non-empty subset of ${DECRYPT_SCHEMES.join(', ')}`);
    }
    if (wanted.includes('oaep-sha256') && !this.capabilities.oaepSha256) {
      // The token cannot unpad OAEP-SHA256: the key computes raw RSA only and hsm/oaep.ts decodes.
      if (wanted.includes('pkcs1')) {
        throw new HsmError('HSM_ERR_INPUT', 'this token cannot do OAEP-SHA256 itself, so a key cannot offer it together with PKCS#1 v1.5 (decoded only in the token)');
      }
      if (!this.capabilities.rsaX509) throw new HsmError('HSM_ERR_INPUT', 'this token offers neither OAEP-SHA256 nor raw RSA');
      return [pkcs11js.CKM_RSA_X_509];
    }
    return [
      ...(wanted.some((s) => s.startsWith('oaep')) ? [pkcs11js.CKM_RSA_PKCS_OAEP] : []),
      ...(wanted.includes('pkcs1') ? [pkcs11js.CKM_RSA_PKCS] : []),
    ];
  }

  async generate(request: GenerateRequest): Promise<KeyInfo> {
    const allowed = this.#allowedFor(request.spec, request.usage, request.decryptSchemes);
    await this.#assertAliasFree(request.alias);
    const ref: KeyRef = { id: newKeyId(), alias: request.alias };
    const templates = keyPairTemplates(request.spec, request.usage, ref, allowed);
    const entry = await this.#run('key generation failed', async (s) => {
      const pair = await this.#p.C_GenerateKeyPairAsync(s, templates.mechanism, templates.publicTemplate, templates.privateTemplate);
      const described = this.#describeObjects(s, ref.id, [pair.privateKey, pair.publicKey]);
      if (described === undefined) throw new HsmError('HSM_ERR_INTERNAL', 'the generated key does not read back as generated');
      return described;
    }, request.lane);
    return this.#remember(entry).info;
  }

  async importRsaKeyPair(request: Omit<GenerateRequest, 'spec'>, key: RsaPrivateKeyComponents): Promise<KeyInfo> {
    const spec = specOfRsaBits(modulusBits(key.modulus));
    if (spec === undefined) throw new HsmError('HSM_ERR_INPUT', 'RSA key size must be 2048, 3072 or 4096 bits');
    const allowed = this.#allowedFor(spec, request.usage, request.decryptSchemes);
    await this.#assertAliasFree(request.alias);
    const ref: KeyRef = { id: newKeyId(), alias: request.alias };
    const t = importedRsaKeyPairTemplates(request.usage, ref, allowed, key);
    const entry = await this.#run('RSA key import failed', (s) => {
      const privateKey = this.#p.C_CreateObject(s, t.privateTemplate);
      let publicKey: Handle;
      try {
        publicKey = this.#p.C_CreateObject(s, t.publicTemplate);
      } catch (err) {
        this.#p.C_DestroyObject(s, privateKey);
        throw err;
      }
      const described = this.#describeObjects(s, ref.id, [privateKey, publicKey]);
      if (described === undefined) throw new HsmError('HSM_ERR_INTERNAL', 'the imported key does not read back as imported');
      return described;
    });
    return this.#remember(entry).info;
  }

  async importPublicKey(alias: string, usage: KeyUsage, spki: Buffer): Promise<KeyInfo> {
    let key: KeyObject;
    try {
      key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
    } catch (err) {
      throw new HsmError('HSM_ERR_INPUT', 'not a DER SubjectPublicKeyInfo', { cause: err });
    }
    return this.#importPartner(alias, usage, key, undefined);
  }

  async importCertificate(alias: string, usage: KeyUsage, der: Buffer): Promise<KeyInfo> {
    const { fields, certificate } = parseCertificate(der);
    return this.#importPartner(alias, usage, certificate.publicKey, fields);
  }

  async #importPartner(alias: string, usage: KeyUsage, key: KeyObject, cert: ReturnType<typeof parseCertificate>['fields'] | undefined): Promise<KeyInfo> {
    if (usage !== 'decrypt' && usage !== 'sign') throw new HsmError('HSM_ERR_INPUT', `unknown key usage "${String(usage)}"`);
    const material = partnerMaterial(key);
    await this.#assertAliasFree(alias);
    const ref: KeyRef = { id: newKeyId(), alias };
    const entry = await this.#run('public key import failed', (s) => {
      const created: Handle[] = [this.#p.C_CreateObject(s, partnerPublicKeyTemplate(ref, usage, material))];
      try {
        if (cert !== undefined) created.push(this.#p.C_CreateObject(s, certificateTemplate(ref, cert)));
      } catch (err) {
        for (const h of created) this.#p.C_DestroyObject(s, h);
        throw err;
      }
      const described = this.#describeObjects(s, ref.id, created);
      if (described === undefined) throw new HsmError('HSM_ERR_INTERNAL', 'the imported key does not read back as imported');
      return described;
    });
    return this.#remember(entry).info;
  }

  async decrypt(key: KeyLookup, scheme: DecryptScheme, ciphertext: Buffer, options: OperationOptions = {}): Promise<Buffer> {
    if (!DECRYPT_SCHEMES.includes(scheme)) throw new HsmError('HSM_ERR_INPUT', `unknown decryption scheme "${String(scheme)}"`);
    return this.#withEntry(key, async (entry) => {
      const privateKey = privateHandle(entry, 'decrypt');
      const software = entry.info.decryptSchemes[scheme] === 'raw-rsa+decoder';
      // RFC 8017 §7.1.2 step 1b / §7.2.2 step 1: the length is checked before the token sees it.
      if (entry.material.kind === 'rsa' && ciphertext.length !== entry.outputBytes) {
        throw new HsmError('HSM_ERR_INPUT', `ciphertext must be ${entry.outputBytes} bytes`);
      }
      const mechanism: P11.Mechanism = software
        ? { mechanism: pkcs11js.CKM_RSA_X_509 }
        : scheme === 'pkcs1'
          ? RSA_PKCS1_V15
          : rsaOaep(scheme === 'oaep-sha256' ? 'sha256' : 'sha1');
      const output = await this.#run('decryption could not start', async (s) => {
        try {
          this.#p.C_DecryptInit(s, mechanism, privateKey);
        } catch (err) {
          throw translate(err, 'HSM_ERR_KEY_USAGE', `key "${entry.info.ref.alias}" may not decrypt with ${scheme}`);
        }
        try {
          return await this.#p.C_DecryptAsync(s, ciphertext, Buffer.alloc(entry.outputBytes));
        } catch (err) {
          const e = translate(err, 'HSM_ERR_DECRYPT', 'decryption refused');
          // One answer for every refusal (padding, wrong key, value ≥ n): no oracle, not even the CKR name.
          throw e.code === 'HSM_ERR_DECRYPT' ? decryptionRefused() : e;
        }
      }, options.lane);
      if (!software) return output;
      // Decoded outside the pool: a bad encoding is no reason to replace a healthy session,
      // and replacing it would make that failure slower than the token's own.
      const em = output.length === entry.outputBytes ? output : Buffer.concat([Buffer.alloc(entry.outputBytes - output.length), output]);
      try {
        return oaepDecode(em, scheme === 'oaep-sha256' ? 'sha256' : 'sha1');
      } finally {
        em.fill(0);
        output.fill(0);
      }
    });
  }

  async sign(key: KeyLookup, scheme: SignScheme, digest: Buffer, options: OperationOptions = {}): Promise<Buffer> {
    const mechanism = signMechanism(scheme);
    const input = signInput(scheme, digest);
    return this.#withEntry(key, async (entry) => {
      const privateKey = privateHandle(entry, 'sign');
      const signature = await this.#run('signing failed', async (s) => {
        try {
          this.#p.C_SignInit(s, mechanism, privateKey);
        } catch (err) {
          throw translate(err, 'HSM_ERR_KEY_USAGE', `key "${entry.info.ref.alias}" may not sign with ${scheme.scheme}`);
        }
        return this.#p.C_SignAsync(s, input, Buffer.alloc(entry.outputBytes));
      }, options.lane);
      if (scheme.scheme !== 'ecdsa') return signature;
      const info = specInfo(entry.info.spec);
      return ecdsaRawToDer(signature, info.kind === 'ec' ? info.coordinateBytes : 0);
    });
  }

  async publicKey(key: KeyLookup): Promise<PublicKeyExport> {
    const entry = await this.#entry(key);
    const jwk = materialJwk(entry.material);
    const spki = createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'der' });
    return { spki, jwk: { ...jwk, use: entry.info.usage === 'sign' ? 'sig' : 'enc' } };
  }

  async certificate(key: KeyLookup): Promise<Buffer | undefined> {
    return this.#withEntry(key, async (entry) => {
      const handle = entry.certificate;
      if (handle === undefined) return undefined;
      return this.#run('cannot read the certificate', (s) => Buffer.from(this.#attr(s, handle, pkcs11js.CKA_VALUE) ?? Buffer.alloc(0)));
    });
  }

  async describe(key: KeyLookup): Promise<KeyInfo> {
    return (await this.#entry(key)).info;
  }

  async list(filter: ListFilter = {}): Promise<KeyInfo[]> {
    const entries = await this.#run('cannot list keys', (s) => {
      const template: P11.Template = filter.alias === undefined ? [] : [{ type: pkcs11js.CKA_LABEL, value: filter.alias }];
      const groups = this.#groups(s, template);
      const out: KeyEntry[] = [];
      for (const [id, handles] of groups) {
        const all = filter.alias === undefined ? handles : this.#find(s, [{ type: pkcs11js.CKA_ID, value: Buffer.from(id, 'hex') }]);
        const entry = this.#describeObjects(s, Buffer.from(id, 'hex'), all);
        if (entry !== undefined) out.push(entry);
      }
      return out;
    });
    return entries
      .map((e) => this.#remember(e).info)
      .filter((i) => (filter.usage === undefined || i.usage === filter.usage) && (filter.form === undefined || i.form === filter.form))
      .sort((a, b) => (a.ref.alias < b.ref.alias ? -1 : a.ref.alias > b.ref.alias ? 1 : Buffer.compare(a.ref.id, b.ref.id)));
  }

  async destroy(key: KeyLookup): Promise<boolean> {
    let entry: KeyEntry;
    try {
      entry = await this.#entry(key);
    } catch (err) {
      if (err instanceof HsmError && err.code === 'HSM_ERR_KEY_NOT_FOUND') return false;
      throw err;
    }
    this.#forget(entry);
    return this.#run('cannot destroy the key', (s) => {
      const handles = this.#find(s, [{ type: pkcs11js.CKA_ID, value: entry.info.ref.id }]);
      for (const h of handles) this.#p.C_DestroyObject(s, h);
      return handles.length > 0;
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#byId.clear();
    this.#idByAlias.clear();
    let timer: NodeJS.Timeout | undefined;
    const drained = await Promise.race([
      this.#pool.close().then(() => true),
      new Promise<false>((resolve) => {
        timer = setTimeout(() => resolve(false), CLOSE_TIMEOUT_MS);
      }),
    ]);
    clearTimeout(timer);
    // Finalising under an operation still on the thread pool crashes the process: leave it loaded then.
    if (drained) this.#module.release();
  }
}

/** The private key of a key pair; a partner's key has none, so it cannot decrypt or sign. */
function privateHandle(entry: KeyEntry, operation: 'decrypt' | 'sign'): Handle {
  if (entry.privateKey === undefined) {
    throw new HsmError('HSM_ERR_KEY_USAGE', `"${entry.info.ref.alias}" is a partner's public key: it cannot ${operation}`);
  }
  return entry.privateKey;
}

function materialJwk(material: PublicKeyMaterial): JsonWebKey {
  if (material.kind === 'rsa') {
    return { kty: 'RSA', n: material.modulus.toString('base64url'), e: material.publicExponent.toString('base64url') };
  }
  const spec = specOfEcParams(material.params);
  const info = spec === undefined ? undefined : specInfo(spec);
  if (info?.kind !== 'ec') throw new HsmError('HSM_ERR_INTERNAL', 'unsupported EC parameters');
  const n = info.coordinateBytes;
  return {
    kty: 'EC',
    crv: info.curve,
    x: material.point.subarray(1, 1 + n).toString('base64url'),
    y: material.point.subarray(1 + n).toString('base64url'),
  };
}

/** A partner key as token material; only the specs v2 supports. */
function partnerMaterial(key: KeyObject): PublicKeyMaterial {
  const jwk = key.export({ format: 'jwk' });
  const b = (v: string | undefined) => Buffer.from(v ?? '', 'base64url');
  if (jwk.kty === 'RSA' && key.asymmetricKeyType === 'rsa') {
    const modulus = unsigned(b(jwk.n));
    if (specOfRsaBits(modulusBits(modulus)) === undefined) throw new HsmError('HSM_ERR_INPUT', 'RSA key size must be 2048, 3072 or 4096 bits');
    return { kind: 'rsa', modulus, publicExponent: unsigned(b(jwk.e)) };
  }
  if (jwk.kty === 'EC') {
    const spec = specOfCurve(jwk.crv ?? '');
    const info = spec === undefined ? undefined : specInfo(spec);
    if (info?.kind !== 'ec') throw new HsmError('HSM_ERR_INPUT', 'EC keys must be on P-256 or P-384');
    return { kind: 'ec', params: info.params, point: Buffer.concat([Buffer.from([0x04]), b(jwk.x), b(jwk.y)]) };
  }
  throw new HsmError('HSM_ERR_INPUT', 'only RSA and EC public keys can be imported');
}
