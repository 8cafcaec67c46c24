import type { Queryable } from './database.js';
import { DatabaseUnavailableError } from './unavailable.js';

/** Claims sent in one statement at most. */
const MAX_CLAIMS_PER_STATEMENT = 64;

interface PendingClaim {
  hawkId: string;
  nonce: string;
  expiresAt: Date;
  now: Date;
  resolve: (claimed: boolean) => void;
  reject: (err: unknown) => void;
}

/**
 * Hawk nonces, shared by every instance through the database. A nonce may be used once per
 * credential while its record lives; an expired record may be taken over.
 *
 * Claims are group-committed: claims made while a statement is in flight share the next one, so
 * at concurrency N the database sees about one statement per N requests instead of N, and a
 * lone request waits for nothing extra.
 */
export class NonceRepository {
  readonly #db: Queryable;
  #queue: PendingClaim[] = [];
  #running = false;

  constructor(db: Queryable) {
    this.#db = db;
  }

  /** Record `nonce` for `hawkId` until `expiresAt`; false if it is already recorded and live. */
  claim(hawkId: string, nonce: string, now: Date, expiresAt: Date): Promise<boolean> {
    return new Promise<boolean>((resolve, reject) => {
      this.#queue.push({ hawkId, nonce, expiresAt, now, resolve, reject });
      if (!this.#running) void this.#drain();
    });
  }

  async #drain(): Promise<void> {
    this.#running = true;
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.splice(0, MAX_CLAIMS_PER_STATEMENT);
        try {
          const claimed = await this.#claimAll(batch);
          for (const c of batch) c.resolve(claimed.has(c));
        } catch (err) {
          for (const c of batch) c.reject(err);
        }
      }
    } finally {
      // Same tick as the last empty-queue check: a claim arriving after this starts a new drain.
      this.#running = false;
    }
  }

  /** One INSERT for the batch; returns the claims that took their nonce. */
  async #claimAll(batch: PendingClaim[]): Promise<Set<PendingClaim>> {
    // A nonce twice in one batch: only its first claim can win (one row cannot be claimed twice
    // by one statement), the others lose like a replay.
    const first = new Map<string, PendingClaim>();
    for (const c of batch) {
      const key = `${c.hawkId}\0${c.nonce}`;
      if (!first.has(key)) first.set(key, c);
    }
    const claims = [...first.values()];
    // Every claim of a batch is made within a moment: the latest `now` decides what has expired.
    const now = new Date(Math.max(...claims.map((c) => c.now.getTime())));
    // One SQL text whatever the batch size (arrays, not a VALUES list): one prepared statement.
    const { rows: taken } = await this.#db.query<{ hawk_id: string; nonce: string }>(
      `INSERT INTO hawk_nonce (hawk_id, nonce, expires_at)
       SELECT u.hawk_id, u.nonce, u.expires_at::timestamptz
       FROM unnest($1::text[], $2::text[], $3::text[]) AS u(hawk_id, nonce, expires_at)
       ON CONFLICT (hawk_id, nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at
       WHERE hawk_nonce.expires_at < $4
       RETURNING hawk_id, nonce`,
      [claims.map((c) => c.hawkId), claims.map((c) => c.nonce), claims.map((c) => c.expiresAt.toISOString()), now],
    );
    const won = new Set<PendingClaim>();
    for (const r of taken) {
      const c = first.get(`${r.hawk_id}\0${r.nonce}`);
      if (c) won.add(c);
    }
    return won;
  }

  /** Drop expired records; returns how many. */
  async purge(now: Date): Promise<number> {
    const { rowCount } = await this.#db.query('DELETE FROM hawk_nonce WHERE expires_at < $1', [now]);
    return rowCount;
  }
}

export interface NonceGuardOptions {
  repo: NonceRepository;
  /** How long a nonce stays claimed (Hawk's skew on both sides of now). */
  windowMs: number;
  clock?: () => number;
  /** Most nonces held in memory; the oldest are dropped first while the database answers (default 250,000). */
  maxLocal?: number;
  /**
   * Most live nonces accepted during an outage and not yet written to the database (default
   * 100,000: a full Hawk window at over 800 requests a second). When it is reached, or the
   * memory cache is full, further claims are refused (503) rather than accepted unguarded.
   */
  maxUnrecorded?: number;
  /** Told when the database is unavailable and a claim was decided locally. */
  onLocalClaim?: (err: DatabaseUnavailableError) => void;
}

/**
 * Nonce claims through the shared database, with a per-instance replay cache in memory.
 *
 * Every nonce this instance accepts is also remembered locally for the Hawk window. While the
 * database is unavailable claims are decided by that cache alone: replay protection degrades
 * from all instances to this instance, and decrypt keeps working. Nonces accepted during the
 * outage are written to the database once it answers again, so other instances refuse them too
 * for the rest of their window.
 */
export class NonceGuard {
  readonly #repo: NonceRepository;
  readonly #windowMs: number;
  readonly #clock: () => number;
  readonly #max: number;
  readonly #maxUnrecorded: number;
  readonly #onLocal: NonceGuardOptions['onLocalClaim'];
  /** `hawkId \0 nonce` → expiry (ms). Insertion order is expiry order: the window is constant. */
  readonly #local = new Map<string, number>();
  /** Accepted while the database was unavailable, not yet written to it. */
  #unrecorded: Array<{ hawkId: string; nonce: string; expires: number }> = [];
  #flushing = false;

  constructor(options: NonceGuardOptions) {
    this.#repo = options.repo;
    this.#windowMs = options.windowMs;
    this.#clock = options.clock ?? Date.now;
    this.#max = options.maxLocal ?? 250_000;
    this.#maxUnrecorded = options.maxUnrecorded ?? 100_000;
    this.#onLocal = options.onLocalClaim;
  }

  /** True when `nonce` was not used by `hawkId` within the window (and is now claimed). */
  async claim(hawkId: string, nonce: string): Promise<boolean> {
    const now = this.#clock();
    this.#expire(now);
    const key = `${hawkId}\0${nonce}`;
    const seen = this.#local.get(key);
    if (seen !== undefined && seen > now) return false;
    const expires = now + this.#windowMs;
    let claimed: boolean;
    try {
      claimed = await this.#repo.claim(hawkId, nonce, new Date(now), new Date(expires));
    } catch (err) {
      if (!(err instanceof DatabaseUnavailableError)) throw err;
      this.#onLocal?.(err);
      // Two requests racing with one nonce: the second sees the first's entry.
      if (this.#local.has(key)) return false;
      this.#dropExpiredUnrecorded(this.#clock());
      // Full: remembering one more would evict a live nonce, which could then be replayed here.
      if (this.#unrecorded.length >= this.#maxUnrecorded || this.#local.size >= this.#max) {
        throw new DatabaseUnavailableError('database unavailable and the local nonce guard is full', { cause: err });
      }
      this.#remember(key, expires);
      this.#unrecorded.push({ hawkId, nonce, expires });
      return true;
    }
    if (claimed) this.#remember(key, expires);
    if (this.#unrecorded.length > 0) void this.#flush();
    return claimed;
  }

  /** Nonces held in memory now (for tests and metrics). */
  get localSize(): number {
    return this.#local.size;
  }

  /** Nonces accepted during an outage and not yet in the database. */
  get unrecordedCount(): number {
    return this.#unrecorded.length;
  }

  #remember(key: string, expires: number): void {
    this.#local.delete(key);
    this.#local.set(key, expires);
    if (this.#local.size > this.#max) {
      const oldest = this.#local.keys().next();
      if (!oldest.done) this.#local.delete(oldest.value);
    }
  }

  /** Nonces whose window has passed need no record any more (insertion order is expiry order). */
  #dropExpiredUnrecorded(now: number): void {
    let n = 0;
    while (n < this.#unrecorded.length && (this.#unrecorded[n] as { expires: number }).expires <= now) n += 1;
    if (n > 0) this.#unrecorded.splice(0, n);
  }

  #expire(now: number): void {
    for (const [key, expires] of this.#local) {
      if (expires > now) return;
      this.#local.delete(key);
    }
  }

  /** Write the outage's nonces to the database; stops at the first failure and tries again later. */
  async #flush(): Promise<void> {
    if (this.#flushing) return;
    this.#flushing = true;
    try {
      while (this.#unrecorded.length > 0) {
        const now = this.#clock();
        const next = this.#unrecorded[0] as { hawkId: string; nonce: string; expires: number };
        if (next.expires > now) {
          await this.#repo.claim(next.hawkId, next.nonce, new Date(now), new Date(next.expires));
        }
        this.#unrecorded.shift();
      }
    } catch {
      // Still unavailable: the next successful claim tries again.
    } finally {
      this.#flushing = false;
    }
  }
}
