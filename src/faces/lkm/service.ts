import { HsmError, type KeyStore, type RsaPadding } from '../../../hsm/index.js';
import type { KeypairRecord, KeypairRepository, KeypairRow, KeypairState } from '../../db/keypairs.js';
import { DatabaseUnavailableError } from '../../db/unavailable.js';
import { AppError } from '../../errors.js';
import { lkmErrors } from './errors.js';
import type { KeyGenerator } from '../../keys/generator.js';
import { isUuid } from '../../core/uuid.js';

/** The only key size the Local Key Manager generates (Genesys Cloud expects RSA-3072). */
export const LKM_MODULUS_BITS = 3072;

/** A keypair as the LKM contract shows it. */
export interface KeypairView {
  id: string;
  /** base64 of the PKCS#1 RSAPublicKey DER. */
  publicKey: string;
  /** Milliseconds since the epoch. */
  dateCreated: number;
}

export interface DecryptInput {
  keypairId: unknown;
  body: unknown;
  decryptType: unknown;
}

export interface LkmServiceOptions {
  keyStore: KeyStore;
  keypairs: KeypairRepository;
  /** Generates keys crash-consistently (when the pool is empty or disabled). */
  generator: KeyGenerator;
  /** Take POST /keypair's key from the pool first (KEY_POOL_SIZE > 0). */
  usePool?: boolean;
  /** Told when a pool key was handed out (the refiller tops up). */
  onPoolKeyTaken?: () => void;
  /**
   * How long a keypair's state is trusted before the database is asked again: a key disabled
   * through another instance stops decrypting here within this time. Default 2 s.
   */
  stateTtlMs?: number;
  clock?: () => number;
  /**
   * Told, once per keypair per miss window, when the token does not show the key of a keypair
   * the database lists: not visible here yet (another instance just created it) or lost.
   */
  onMissingKey?: (keypairId: string) => void;
  /** How long a confirmed miss is answered from memory (default 1 s; each miss costs a token search). */
  missTtlMs?: number;
  /** Told when a keypair's state is served from the cache because the database is unavailable. */
  onStaleState?: (keypairId: string, err: unknown) => void;
}

interface CachedKey {
  /** The only valid ciphertext length (modulus bytes). */
  bytes: number;
  state: KeypairState;
  checkedAt: number;
}

const DEFAULT_STATE_TTL_MS = 2_000;
const DEFAULT_MISS_TTL_MS = 1_000;
const VISIBLE = new Set<KeypairState>(['enabled', 'disabled', 'pending_deletion']);

/** RFC 4648 §4 alphabet; padding optional, as Java's Base64 decoder accepts. */
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function decodeBase64(text: string): Buffer | undefined {
  if (!BASE64.test(text)) return undefined;
  const padded = text.includes('=');
  if ((padded && text.length % 4 !== 0) || (!padded && text.length % 4 === 1)) return undefined;
  return Buffer.from(text, 'base64');
}

function notYetVisible(retryMs: number, cause?: unknown): AppError {
  return new AppError('KEY_ERR_NOT_YET_VISIBLE', {
    headers: { 'retry-after': String(Math.max(1, Math.ceil(retryMs / 1000))) },
    detail: 'the token does not show this keypair\'s key (yet)',
    ...(cause !== undefined && { cause }),
  });
}

function view(row: KeypairRow): KeypairView {
  return { id: row.id, publicKey: row.publicKey.toString('base64'), dateCreated: row.dateCreated.getTime() };
}

/**
 * The Local Key Manager: keypairs whose private halves live in the token, and decryption with
 * them. Validation happens here, before anything reaches the token.
 */
export class LkmService {
  readonly #keyStore: KeyStore;
  readonly #keypairs: KeypairRepository;
  readonly #clock: () => number;
  readonly #onMissingKey: LkmServiceOptions['onMissingKey'];
  readonly #onStaleState: LkmServiceOptions['onStaleState'];
  readonly #generator: KeyGenerator;
  readonly #usePool: boolean;
  readonly #onPoolKeyTaken: LkmServiceOptions['onPoolKeyTaken'];
  readonly #stateTtlMs: number;
  /** Ciphertext length and state per keypair; the state is re-read after stateTtlMs. */
  readonly #keys = new Map<string, CachedKey>();
  readonly #refreshing = new Map<string, Promise<CachedKey | undefined>>();
  /** Keypairs whose key the token did not show, until when the miss is answered from here. */
  readonly #misses = new Map<string, number>();
  readonly #missTtlMs: number;

  constructor(options: LkmServiceOptions) {
    this.#keyStore = options.keyStore;
    this.#keypairs = options.keypairs;
    this.#generator = options.generator;
    this.#usePool = options.usePool ?? false;
    this.#onPoolKeyTaken = options.onPoolKeyTaken;
    this.#stateTtlMs = options.stateTtlMs ?? DEFAULT_STATE_TTL_MS;
    this.#missTtlMs = options.missTtlMs ?? DEFAULT_MISS_TTL_MS;
    this.#clock = options.clock ?? Date.now;
    this.#onMissingKey = options.onMissingKey;
    this.#onStaleState = options.onStaleState;
  }

  /**
   * A new keypair for `owner`: a pool key when one is ready (one UPDATE), otherwise generated
   * now. Either way the token holds the key before the row is visible (see KeyGenerator).
   */
  async createKeypair(owner: string | null): Promise<KeypairView> {
    let row = this.#usePool ? await this.#keypairs.takeFromPool(owner, new Date(this.#clock())) : undefined;
    if (row) this.#onPoolKeyTaken?.();
    row ??= await this.#generator.generate({ state: 'enabled', owner });
    this.#remember(row.id, Math.ceil(row.modulusBits / 8), row.state);
    return view(row);
  }

  /** Keypairs handed out and not deleted; the LKM shape has no state, so disabled ones show too. */
  async listKeypairs(): Promise<KeypairView[]> {
    return (await this.#keypairs.list()).map(view);
  }

  async getKeypair(id: string): Promise<KeypairView | undefined> {
    if (!isUuid(id)) return undefined;
    const row = await this.#keypairs.find(id);
    return row && VISIBLE.has(row.state) ? view(row) : undefined;
  }

  /** Forget what this instance knows about a keypair's state (it just changed here). */
  forgetState(keypairId: string): void {
    this.#keys.delete(keypairId);
  }

  async decrypt(input: DecryptInput): Promise<Buffer> {
    const { keypairId, body, decryptType } = input;
    if (typeof keypairId !== 'string' || keypairId === '' || typeof body !== 'string' || body === '') {
      throw lkmErrors.error('KEY_ERR_DECRYPT_FIELDS');
    }
    let padding: RsaPadding;
    if (decryptType === undefined || decryptType === null) padding = 'oaep-sha1';
    else if (decryptType === 'pkcs1') padding = 'pkcs1';
    else throw lkmErrors.error('KEY_ERR_DECRYPT_TYPE');
    if (!isUuid(keypairId)) throw lkmErrors.error('KEY_ERR_INVALID_KEYPAIR_ID');
    const ciphertext = decodeBase64(body);
    if (ciphertext === undefined) throw lkmErrors.error('KEY_ERR_BODY_NOT_BASE64');

    const expected = await this.#usableKeyLength(keypairId);
    if (ciphertext.length !== expected) {
      throw lkmErrors.error('KEY_ERR_CIPHERTEXT_LENGTH', {
        message: `Decrypt body must be ${expected} bytes (an RSA-${expected * 8} ciphertext), not ${ciphertext.length}`,
      });
    }
    const missUntil = this.#misses.get(keypairId);
    if (missUntil !== undefined) {
      if (this.#clock() < missUntil) throw notYetVisible(missUntil - this.#clock());
      this.#misses.delete(keypairId);
    }
    try {
      return await this.#keyStore.rsaDecrypt(keypairId, padding, ciphertext);
    } catch (err) {
      if (!(err instanceof HsmError)) throw err;
      switch (err.code) {
        case 'HSM_ERR_DECRYPT':
          throw new AppError('KEY_ERR_DECRYPT_FAILED', { cause: err, detail: err.ckr ?? err.message });
        case 'HSM_ERR_KEY_NOT_FOUND':
          // The key store has confirmed the miss (see Pkcs11KeyStore#key); the next ones within
          // the window are answered from here, without a token search on the event loop.
          if (!this.#misses.has(keypairId)) this.#onMissingKey?.(keypairId);
          this.#misses.set(keypairId, this.#clock() + this.#missTtlMs);
          throw notYetVisible(this.#missTtlMs, err);
        default:
          // Mapped to its status by plugins/error-handler.ts.
          throw err;
      }
    }
  }

  async #refresh(keypairId: string, known: CachedKey | undefined): Promise<CachedKey | undefined> {
    let row: KeypairRecord | undefined;
    try {
      row = await this.#keypairs.find(keypairId);
    } catch (err) {
      if (!(err instanceof DatabaseUnavailableError) || !known) throw err;
      this.#onStaleState?.(keypairId, err);
      // Keep the last known state and ask again after another TTL, not on every decrypt.
      known.checkedAt = this.#clock();
      return known;
    }
    if (row) return this.#remember(keypairId, Math.ceil(row.modulusBits / 8), row.state);
    this.#keys.delete(keypairId);
    return undefined;
  }

  #remember(keypairId: string, bytes: number, state: KeypairState): CachedKey {
    const entry = { bytes, state, checkedAt: this.#clock() };
    this.#keys.set(keypairId, entry);
    return entry;
  }

  /**
   * The ciphertext length of a keypair that may decrypt now. Its state is cached for
   * stateTtlMs (a primary-key read per decrypt would put the database on the hot path); while
   * the database is unavailable the last known state is used, so playback goes on.
   */
  async #usableKeyLength(keypairId: string): Promise<number> {
    let entry = this.#keys.get(keypairId);
    if (!entry || this.#clock() - entry.checkedAt >= this.#stateTtlMs) {
      // Concurrent decrypts with one keypair share one read.
      let refresh = this.#refreshing.get(keypairId);
      if (!refresh) {
        refresh = this.#refresh(keypairId, entry).finally(() => this.#refreshing.delete(keypairId));
        this.#refreshing.set(keypairId, refresh);
      }
      entry = await refresh;
    }
    if (!entry) throw lkmErrors.error('KEY_ERR_NOT_FOUND');
    switch (entry.state) {
      case 'enabled':
        return entry.bytes;
      case 'disabled':
        throw lkmErrors.error('KEY_ERR_KEYPAIR_DISABLED');
      case 'pending_deletion':
        throw lkmErrors.error('KEY_ERR_KEYPAIR_PENDING_DELETION');
      case 'deleted':
        throw lkmErrors.error('KEY_ERR_KEYPAIR_DELETED');
      default:
        // Pool and generating rows are nobody's keypair yet.
        throw lkmErrors.error('KEY_ERR_NOT_FOUND');
    }
  }
}
