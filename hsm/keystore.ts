/**
 * The key store: every private-key operation of strongroom goes through this interface.
 * Private keys never leave the implementation; callers name keys by id (the keypair UUID).
 */

/** RSA decryption schemes the service offers. */
export type RsaPadding =
  /** RSAES-OAEP, SHA-1, MGF1-SHA-1, empty label (RFC 8017 §7.1). */
  | 'oaep-sha1'
  /** RSAES-PKCS1-v1_5 (RFC 8017 §7.2). Kept for Genesys Cloud's `decryptType=pkcs1`. */
  | 'pkcs1';

/** An RSA public key as unsigned big-endian integers (no leading zero bytes). */
export interface RsaPublicKey {
  modulus: Buffer;
  publicExponent: Buffer;
}

/** RSA private key components (RFC 8017 §3.2, second representation), unsigned big-endian. */
export interface RsaPrivateKeyComponents extends RsaPublicKey {
  privateExponent: Buffer;
  prime1: Buffer;
  prime2: Buffer;
  exponent1: Buffer;
  exponent2: Buffer;
  coefficient: Buffer;
}

export interface TokenDescription {
  modulePath: string;
  label: string;
  serialNumber: string;
  manufacturer: string;
  model: string;
}

export interface KeyStore {
  readonly token: TokenDescription;

  /**
   * Create the token's service keys if they are missing (the AES key that protects stored
   * secrets). Idempotent; callers serialise it across processes.
   */
  ensureServiceKeys(): Promise<void>;

  /** Generate an RSA key pair inside the token under `keyId`; returns its public half. */
  generateRsaKeyPair(keyId: string, modulusBits: number): Promise<RsaPublicKey>;

  /**
   * Put an existing RSA private key into the token under `keyId`, with the same attributes as a
   * generated one, and prove it works (a round trip) before returning. The caller should drop
   * its copy of the components as soon as this resolves.
   */
  importRsaKeyPair(keyId: string, key: RsaPrivateKeyComponents): Promise<RsaPublicKey>;

  /**
   * The public half of `keyId`, or undefined when the token holds no such key. A miss is
   * confirmed the same way as for a decrypt (a refresh where the module needs one), so undefined
   * means absent, never "not visible here yet".
   */
  getRsaPublicKey(keyId: string): Promise<RsaPublicKey | undefined>;

  /** Modulus length of `keyId` in bytes: the only valid ciphertext length for it. */
  rsaModulusBytes(keyId: string): Promise<number>;

  /**
   * Decrypt with the private key `keyId`. Every refusal by the token (bad padding, wrong key,
   * value out of range) is the single code `HSM_ERR_DECRYPT`.
   */
  rsaDecrypt(keyId: string, padding: RsaPadding, ciphertext: Buffer): Promise<Buffer>;

  /** Destroy both halves of `keyId`. Resolves false when there was nothing to destroy. */
  deleteKeyPair(keyId: string): Promise<boolean>;

  /** Ids of every RSA private key in the token that strongroom manages. */
  listKeyPairIds(): Promise<string[]>;

  /**
   * Encrypt a small secret under the token's secrets key (AES-256-GCM). `context` is bound as
   * associated data, so a blob only opens under the context it was sealed with.
   */
  sealSecret(plaintext: Buffer, context: string): Promise<Buffer>;

  /** Reverse of `sealSecret`; `HSM_ERR_SECRET_INVALID` when the blob does not authenticate. */
  openSecret(sealed: Buffer, context: string): Promise<Buffer>;

  /**
   * Probe, with throw-away session keys, whether the token refuses to wrap a key marked
   * CKA_WRAP_WITH_TRUSTED under an ordinary key. Custody depends on it: a token that ignores the
   * attribute lets anyone holding the user PIN export every private key.
   */
  checkCustody(): Promise<CustodyCheck>;

  /** Resolve when a session of the pool is usable and logged in; HSM_ERR_UNAVAILABLE otherwise (readiness). */
  checkLogin(): Promise<void>;

  /** Counters for operators and tests. */
  stats(): KeyStoreStats;

  /** Close every session and release the module. */
  close(): Promise<void>;
}

export interface CustodyCheck {
  /**
   * `enforced`: the token answered CKR_KEY_NOT_WRAPPABLE. `not-enforced`: it wrapped the key.
   * `inconclusive`: the probe could not run (e.g. the mechanism is missing); `detail` says why.
   */
  wrapWithTrusted: 'enforced' | 'not-enforced' | 'inconclusive';
  detail?: string;
}

export interface KeyStoreStats {
  /** Object searches performed (cache misses); a warm key costs none. */
  objectSearches: number;
  /** Sessions replaced after an error. */
  sessionsReplaced: number;
  /** Sessions currently open. */
  sessionsOpen: number;
  /** Operations refused because no session became free within the acquire timeout (HSM_ERR_BUSY). */
  sessionWaitTimeouts: number;
  /** Library re-initialisations that confirmed a missed key (SoftHSM's file store; 0 elsewhere). */
  tokenRefreshes: number;
  /** Duration of the last refresh, drain included, in ms (0 before the first). */
  lastTokenRefreshMs: number;
}
