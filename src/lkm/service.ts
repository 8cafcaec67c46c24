import { randomUUID } from 'node:crypto';
import { HsmError, encodeRsaPublicKey, modulusBits, type KeyStore, type RsaPadding } from '../../hsm/index.js';
import type { KeypairRepository, KeypairRow } from '../db/keypairs.js';
import { AppError } from '../errors.js';

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
  clock?: () => number;
  /** Told when the token has no key for a keypair the database lists: that must never happen. */
  onMissingKey?: (keypairId: string) => void;
  /** Told when a generated key could not be recorded and stays in the token without a row. */
  onOrphanKey?: (keypairId: string, err: unknown) => void;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** RFC 4648 §4 alphabet; padding optional, as Java's Base64 decoder accepts. */
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

export function isUuid(value: unknown): value is string {
  return typeof value === 'string' && UUID.test(value);
}

function decodeBase64(text: string): Buffer | undefined {
  if (!BASE64.test(text)) return undefined;
  const padded = text.includes('=');
  if ((padded && text.length % 4 !== 0) || (!padded && text.length % 4 === 1)) return undefined;
  return Buffer.from(text, 'base64');
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
  readonly #onOrphanKey: LkmServiceOptions['onOrphanKey'];
  /** Ciphertext length per known keypair; keypairs never change, so no expiry. */
  readonly #lengths = new Map<string, number>();

  constructor(options: LkmServiceOptions) {
    this.#keyStore = options.keyStore;
    this.#keypairs = options.keypairs;
    this.#clock = options.clock ?? Date.now;
    this.#onMissingKey = options.onMissingKey;
    this.#onOrphanKey = options.onOrphanKey;
  }

  /**
   * Generate a key pair in the token, then record it. If recording fails the token key is kept
   * (reported as an orphan), never destroyed: the row might have been written after all.
   */
  async createKeypair(owner: string | null): Promise<KeypairView> {
    const id = randomUUID();
    const publicKey = await this.#keyStore.generateRsaKeyPair(id, LKM_MODULUS_BITS);
    const row: KeypairRow = {
      id,
      publicKey: encodeRsaPublicKey(publicKey),
      modulusBits: modulusBits(publicKey.modulus),
      dateCreated: new Date(this.#clock()),
      owner,
    };
    try {
      await this.#keypairs.insert(row);
    } catch (err) {
      this.#onOrphanKey?.(id, err);
      throw err;
    }
    this.#lengths.set(id, Math.ceil(row.modulusBits / 8));
    return view(row);
  }

  async listKeypairs(): Promise<KeypairView[]> {
    return (await this.#keypairs.list()).map(view);
  }

  async getKeypair(id: string): Promise<KeypairView | undefined> {
    if (!isUuid(id)) return undefined;
    const row = await this.#keypairs.find(id);
    return row ? view(row) : undefined;
  }

  async decrypt(input: DecryptInput): Promise<Buffer> {
    const { keypairId, body, decryptType } = input;
    if (typeof keypairId !== 'string' || keypairId === '' || typeof body !== 'string' || body === '') {
      throw new AppError('KEY_ERR_DECRYPT_FIELDS');
    }
    let padding: RsaPadding;
    if (decryptType === undefined || decryptType === null) padding = 'oaep-sha1';
    else if (decryptType === 'pkcs1') padding = 'pkcs1';
    else throw new AppError('KEY_ERR_DECRYPT_TYPE');
    if (!isUuid(keypairId)) throw new AppError('KEY_ERR_INVALID_KEYPAIR_ID');
    const ciphertext = decodeBase64(body);
    if (ciphertext === undefined) throw new AppError('KEY_ERR_BODY_NOT_BASE64');

    const expected = await this.#ciphertextLength(keypairId);
    if (ciphertext.length !== expected) {
      throw new AppError('KEY_ERR_CIPHERTEXT_LENGTH', {
        message: `Decrypt body must be ${expected} bytes (an RSA-${expected * 8} ciphertext), not ${ciphertext.length}`,
      });
    }
    try {
      return await this.#keyStore.rsaDecrypt(keypairId, padding, ciphertext);
    } catch (err) {
      if (!(err instanceof HsmError)) throw err;
      switch (err.code) {
        case 'HSM_ERR_DECRYPT':
          throw new AppError('KEY_ERR_DECRYPT_FAILED', { cause: err, detail: err.ckr ?? err.message });
        case 'HSM_ERR_KEY_NOT_FOUND':
          this.#onMissingKey?.(keypairId);
          throw err;
        default:
          throw err;
      }
    }
  }

  async #ciphertextLength(keypairId: string): Promise<number> {
    const known = this.#lengths.get(keypairId);
    if (known !== undefined) return known;
    const row = await this.#keypairs.find(keypairId);
    if (!row) throw new AppError('KEY_ERR_NOT_FOUND');
    const length = Math.ceil(row.modulusBits / 8);
    this.#lengths.set(keypairId, length);
    return length;
  }
}
