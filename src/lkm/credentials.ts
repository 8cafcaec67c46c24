import { randomBytes } from 'node:crypto';
import { HsmError, type KeyStore } from '../../hsm/index.js';
import type { CredentialRepository, HawkAlgorithm } from '../db/credentials.js';
import { AppError } from '../errors.js';

/** The answer of POST /auth and `strongroom auth register`: the only time the key is shown. */
export interface RegisteredCredential {
  id: string;
  authKey: string;
  algorithm: HawkAlgorithm;
}

export interface HawkCredentialValue {
  id: string;
  key: string;
  algorithm: HawkAlgorithm;
}

export interface CredentialServiceOptions {
  repo: CredentialRepository;
  keyStore: KeyStore;
  clock?: () => number;
  /** How long a looked-up credential (or its absence) is reused before asking the database again. */
  cacheTtlMs?: number;
  /** Told when a stored key does not open under this token (wrong token, or tampered row). */
  onSealedKeyRejected?: (id: string, err: HsmError) => void;
}

/** Printable ASCII without space, quote or backslash: what a Hawk header attribute can carry. */
const ID_PATTERN = /^[!#-[\]-~]{6,128}$/;
const CACHE_LIMIT = 10_000;

/** Associated data binding a sealed key to its credential id: a row's key cannot be moved to another id. */
const sealContext = (id: string) => `strongroom:hawk-credential:${id}`;

/**
 * Hawk credentials. The key is 256 random bits, sealed by the token's secrets key before it is
 * stored, so a database dump alone yields no usable credential.
 */
export class CredentialService {
  readonly #repo: CredentialRepository;
  readonly #keyStore: KeyStore;
  readonly #clock: () => number;
  readonly #ttl: number;
  readonly #onRejected: CredentialServiceOptions['onSealedKeyRejected'];
  readonly #cache = new Map<string, { value: HawkCredentialValue | undefined; expires: number }>();

  constructor(options: CredentialServiceOptions) {
    this.#repo = options.repo;
    this.#keyStore = options.keyStore;
    this.#clock = options.clock ?? Date.now;
    this.#ttl = options.cacheTtlMs ?? 2_000;
    this.#onRejected = options.onSealedKeyRejected;
  }

  async register(id: unknown): Promise<RegisteredCredential> {
    if (typeof id !== 'string' || !ID_PATTERN.test(id)) throw new AppError('AUTH_ERR_INVALID_ID');
    const authKey = randomBytes(32).toString('base64url');
    const sealed = await this.#keyStore.sealSecret(Buffer.from(authKey, 'utf8'), sealContext(id));
    if (!(await this.#repo.insert(id, sealed, 'sha256'))) throw new AppError('AUTH_ERR_DUPLICATE_ID');
    this.#cache.delete(id);
    return { id, authKey, algorithm: 'sha256' };
  }

  /** The usable credential for `id`, or undefined when unknown, revoked or not openable here. */
  async lookup(id: string): Promise<HawkCredentialValue | undefined> {
    const now = this.#clock();
    const cached = this.#cache.get(id);
    if (cached && cached.expires > now) return cached.value;
    const value = await this.#load(id);
    if (this.#cache.size >= CACHE_LIMIT) this.#cache.clear();
    this.#cache.set(id, { value, expires: now + this.#ttl });
    return value;
  }

  async #load(id: string): Promise<HawkCredentialValue | undefined> {
    if (!ID_PATTERN.test(id)) return undefined;
    const row = await this.#repo.find(id);
    if (!row || row.revokedAt !== null) return undefined;
    try {
      const key = await this.#keyStore.openSecret(row.sealedKey, sealContext(id));
      return { id, key: key.toString('utf8'), algorithm: row.algorithm };
    } catch (err) {
      if (err instanceof HsmError && err.code === 'HSM_ERR_SECRET_INVALID') {
        this.#onRejected?.(id, err);
        return undefined;
      }
      throw err;
    }
  }
}
