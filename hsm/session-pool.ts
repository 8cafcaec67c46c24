import { HsmError } from './errors.js';

export interface SessionFactory<S> {
  /** Open a ready-to-use (logged-in) session. */
  open(): S;
  /** Close a session, ignoring errors: it may already be gone. */
  close(session: S): void;
  /**
   * True when an operation's error means every session may be gone (token logged out, sessions
   * closed underneath, device error): the idle sessions are then closed and reopened lazily too.
   */
  isFatal?(err: unknown): boolean;
}

export interface SessionPoolOptions {
  /** First pause after a failed open, doubled on each further failure (default 100 ms). */
  backoffInitialMs?: number;
  /** Longest pause between attempts to open a session (default 5 s). */
  backoffMaxMs?: number;
  clock?: () => number;
}

/**
 * A fixed-size pool of PKCS#11 sessions. A session is used by one operation at a time; a
 * session whose operation failed is closed and replaced, never handed out again, because a
 * failed C_Decrypt can leave an operation active on it (CKR_OPERATION_ACTIVE on the next call).
 */
export class SessionPool<S> {
  readonly #factory: SessionFactory<S>;
  readonly #size: number;
  readonly #idle: S[] = [];
  readonly #waiters: Array<{ resolve: (s: S) => void; reject: (e: unknown) => void }> = [];
  #open = 0;
  #inUse = 0;
  #replaced = 0;
  #closed = false;
  #drained: (() => void) | undefined;
  readonly #backoffInitial: number;
  readonly #backoffMax: number;
  readonly #clock: () => number;
  #backoff = 0;
  #retryAt = 0;
  #rebuilds = 0;

  constructor(factory: SessionFactory<S>, size: number, options: SessionPoolOptions = {}) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError('session pool size must be a positive integer');
    this.#factory = factory;
    this.#size = size;
    this.#backoffInitial = options.backoffInitialMs ?? 100;
    this.#backoffMax = options.backoffMaxMs ?? 5_000;
    this.#clock = options.clock ?? Date.now;
  }

  /** Open every session now, so the first requests do not pay for it (and login errors surface at start). */
  fill(): void {
    while (this.#open < this.#size) {
      this.#idle.push(this.#openOne());
    }
  }

  get size(): number {
    return this.#size;
  }

  get openCount(): number {
    return this.#open;
  }

  get replacedCount(): number {
    return this.#replaced;
  }

  /** How many times a fatal error made the pool drop its idle sessions. */
  get rebuildCount(): number {
    return this.#rebuilds;
  }

  /** Milliseconds until the next attempt to open a session is allowed (0: now). */
  get backoffRemainingMs(): number {
    return Math.max(0, this.#retryAt - this.#clock());
  }

  /**
   * Run `fn` with exclusive use of a session. If `fn` throws, the session is replaced before
   * anyone else can get it, and the error is rethrown.
   */
  async use<T>(fn: (session: S) => Promise<T> | T): Promise<T> {
    const session = await this.#acquire();
    this.#inUse += 1;
    let result: T;
    try {
      result = await fn(session);
    } catch (err) {
      this.#discard(session, this.#factory.isFatal?.(err) === true);
      throw err;
    }
    this.#release(session);
    return result;
  }

  /**
   * Close every session; pending and later `use` calls fail. Resolves once the operations still
   * running have returned their sessions and those are closed too: the module must not be
   * finalised under an operation running on libuv's thread pool.
   */
  close(): Promise<void> {
    this.#closed = true;
    for (const waiter of this.#waiters.splice(0)) {
      waiter.reject(new HsmError('HSM_ERR_UNAVAILABLE', 'key store is closed'));
    }
    for (const session of this.#idle.splice(0)) {
      this.#factory.close(session);
      this.#open -= 1;
    }
    if (this.#inUse === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.#drained = resolve;
    });
  }

  #settled(): void {
    this.#inUse -= 1;
    if (this.#closed && this.#inUse === 0) this.#drained?.();
  }

  #openOne(): S {
    this.#open += 1;
    try {
      return this.#tryOpen();
    } catch (err) {
      this.#open -= 1;
      throw err;
    }
  }

  /**
   * Open through the backoff gate: after a failed open, further attempts fail at once with
   * HSM_ERR_UNAVAILABLE until the pause is over, so a broken token is not hammered (nor a PIN
   * locked by repeated logins) while every request still gets a fast answer.
   */
  #tryOpen(): S {
    const now = this.#clock();
    if (now < this.#retryAt) {
      throw new HsmError('HSM_ERR_UNAVAILABLE', `token unavailable; next attempt in ${this.#retryAt - now} ms`);
    }
    try {
      const session = this.#factory.open();
      this.#backoff = 0;
      this.#retryAt = 0;
      return session;
    } catch (err) {
      this.#backoff = Math.min(this.#backoffMax, this.#backoff === 0 ? this.#backoffInitial : this.#backoff * 2);
      this.#retryAt = this.#clock() + this.#backoff;
      throw err;
    }
  }

  #acquire(): Promise<S> {
    if (this.#closed) return Promise.reject(new HsmError('HSM_ERR_UNAVAILABLE', 'key store is closed'));
    const idle = this.#idle.pop();
    if (idle !== undefined) return Promise.resolve(idle);
    if (this.#open < this.#size) {
      try {
        return Promise.resolve(this.#openOne());
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  #release(session: S): void {
    this.#settled();
    this.#handOver(session);
  }

  /** Give a free session to the next waiter, or keep it idle (or close it once the pool is closed). */
  #handOver(session: S): void {
    if (this.#closed) {
      this.#factory.close(session);
      this.#open -= 1;
      return;
    }
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve(session);
    else this.#idle.push(session);
  }

  /** A session is gone for good: let waiters open their own, one at a time until one succeeds. */
  #wakeWaiter(): void {
    const waiter = this.#waiters.shift();
    if (!waiter) return;
    this.#acquire().then(waiter.resolve, (err) => {
      waiter.reject(err);
      this.#wakeWaiter();
    });
  }

  #dropIdle(): void {
    this.#rebuilds += 1;
    for (const idle of this.#idle.splice(0)) {
      this.#factory.close(idle);
      this.#open -= 1;
    }
  }

  #discard(session: S, fatal: boolean): void {
    this.#settled();
    this.#replaced += 1;
    // Open the replacement before closing the broken session: closing a token's last session
    // logs the application out (PKCS#11 v2.40 §5.6).
    let replacement: S | undefined;
    if (!this.#closed) {
      try {
        replacement = this.#tryOpen();
      } catch {
        replacement = undefined;
      }
    }
    this.#factory.close(session);
    // The idle sessions most likely died with this one: reopen them on demand rather than let
    // each fail one request.
    if (fatal) this.#dropIdle();
    if (replacement === undefined) {
      this.#open -= 1;
      // Waiters would otherwise wait for a session that no longer exists.
      this.#wakeWaiter();
      return;
    }
    this.#handOver(replacement);
  }
}
