import { randomBytes } from 'node:crypto';
import { HsmError, type KeyStore } from '../../../hsm/index.js';
import type { CredentialRepository, HawkAlgorithm } from '../../db/credentials.js';
import { DatabaseUnavailableError } from '../../db/unavailable.js';
import { AppError } from '../../errors.js';
import { lkmErrors } from './errors.js';

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
  /** Has signed a query string before: its path-only MACs are refused (see plugins/hawk-auth). */
  signsQuery: boolean;
}

export interface CredentialServiceOptions {
  repo: CredentialRepository;
  keyStore: KeyStore;
  clock?: () => number;
  /**
   * How long a looked-up credential (or its absence) is reused before asking the database again:
   * the bound on how long a revoked credential keeps working while the database is up.
   */
  cacheTtlMs?: number;
  /** Told when a credential is served from the last known good value because the database is unavailable. */
  onServedStale?: (id: string, err: DatabaseUnavailableError) => void;
  /** Told when a stored key does not open under this token (wrong token, or tampered row). */
  onSealedKeyRejected?: (id: string, err: HsmError) => void;
  /** Told when recording that a credential signs queries failed (it is retried on its next such request). */
  onMarkFailed?: (id: string, err: unknown) => void;
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
  readonly #onServedStale: CredentialServiceOptions['onServedStale'];
  readonly #onMarkFailed: CredentialServiceOptions['onMarkFailed'];
  /** Ids whose signs_query flag is being written (one UPDATE at a time per id). */
  readonly #marking = new Set<string>();
  /** Expired entries are kept: they are the last known good answer while the database is unavailable. */
  readonly #cache = new Map<string, { value: HawkCredentialValue | undefined; expires: number }>();

  constructor(options: CredentialServiceOptions) {
    this.#repo = options.repo;
    this.#keyStore = options.keyStore;
    this.#clock = options.clock ?? Date.now;
    this.#ttl = options.cacheTtlMs ?? 2_000;
    this.#onRejected = options.onSealedKeyRejected;
    this.#onServedStale = options.onServedStale;
    this.#onMarkFailed = options.onMarkFailed;
  }

  /**
   * `id` authenticated a request with its query string signed: from now on its path-only MACs
   * are refused. Takes effect here at once (the cached value), durably once the row is updated,
   * and at other instances when their cache entry expires.
   */
  markSignsQuery(id: string): void {
    const cached = this.#cache.get(id);
    if (cached?.value) cached.value = { ...cached.value, signsQuery: true };
    if (this.#marking.has(id)) return;
    this.#marking.add(id);
    this.#repo
      .markSignsQuery(id)
      .catch((err) => this.#onMarkFailed?.(id, err))
      .finally(() => this.#marking.delete(id));
  }

  async register(id: unknown): Promise<RegisteredCredential> {
    if (typeof id !== 'string' || !ID_PATTERN.test(id)) throw lkmErrors.error('AUTH_ERR_INVALID_ID');
    const authKey = randomBytes(32).toString('base64url');
    const sealed = await this.#keyStore.sealSecret(Buffer.from(authKey, 'utf8'), sealContext(id));
    if (!(await this.#repo.insert(id, sealed, 'sha256'))) throw lkmErrors.error('AUTH_ERR_DUPLICATE_ID');
    this.#cache.delete(id);
    return { id, authKey, algorithm: 'sha256' };
  }

  /**
   * A new key for an existing, unrevoked credential, sealed for the same id; the old key stops
   * working when each instance's cache entry expires (cacheTtlMs). Undefined when there is none.
   */
  async rotate(id: string): Promise<RegisteredCredential | undefined> {
    if (!ID_PATTERN.test(id)) throw lkmErrors.error('AUTH_ERR_INVALID_ID');
    const row = await this.#repo.find(id);
    if (!row || row.revokedAt !== null) return undefined;
    const authKey = randomBytes(32).toString('base64url');
    const sealed = await this.#keyStore.sealSecret(Buffer.from(authKey, 'utf8'), sealContext(id));
    if (!(await this.#repo.replaceKey(id, sealed))) return undefined;
    this.#cache.delete(id);
    return { id, authKey, algorithm: row.algorithm };
  }

  /**
   * The usable credential for `id`, or undefined when unknown, revoked or not openable here.
   * While the database is unavailable, the last answer it gave for `id` is served (decrypt must
   * outlive a database outage); an id never seen before fails with DatabaseUnavailableError.
   */
  async lookup(id: string): Promise<HawkCredentialValue | undefined> {
    const now = this.#clock();
    const cached = this.#cache.get(id);
    if (cached && cached.expires > now) return cached.value;
    let value: HawkCredentialValue | undefined;
    try {
      value = await this.#load(id);
    } catch (err) {
      if (!(err instanceof DatabaseUnavailableError) || !cached) throw err;
      this.#onServedStale?.(id, err);
      return cached.value;
    }
    if (!cached && this.#cache.size >= CACHE_LIMIT) this.#evictExpired(now);
    // Re-insert so the map stays in least-recently-loaded order for eviction.
    this.#cache.delete(id);
    this.#cache.set(id, { value, expires: now + this.#ttl });
    return value;
  }

  /** Make room: expired answers of ids not asked for lately go first, then the oldest. */
  #evictExpired(now: number): void {
    for (const [key, entry] of this.#cache) {
      if (this.#cache.size < CACHE_LIMIT) return;
      if (entry.expires <= now) this.#cache.delete(key);
    }
    const oldest = this.#cache.keys().next();
    if (!oldest.done && this.#cache.size >= CACHE_LIMIT) this.#cache.delete(oldest.value);
  }

  async #load(id: string): Promise<HawkCredentialValue | undefined> {
    if (!ID_PATTERN.test(id)) return undefined;
    const row = await this.#repo.find(id);
    if (!row || row.revokedAt !== null) return undefined;
    try {
      const key = await this.#keyStore.openSecret(row.sealedKey, sealContext(id));
      return { id, key: key.toString('utf8'), algorithm: row.algorithm, signsQuery: row.signsQuery };
    } catch (err) {
      if (err instanceof HsmError && err.code === 'HSM_ERR_SECRET_INVALID') {
        this.#onRejected?.(id, err);
        return undefined;
      }
      throw err;
    }
  }
}
