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
  /**
   * True when the session that saw `err` must not be used again (default: every error). A
   * token that refuses a ciphertext has ended the operation and the session is fine.
   */
  breaks?(err: unknown): boolean;
}

export interface SessionPoolOptions {
  /** First pause after a failed open, doubled on each further failure (default 100 ms). */
  backoffInitialMs?: number;
  /** Longest pause between attempts to open a session (default 5 s). */
  backoffMaxMs?: number;
  /**
   * Longest wait for a free session before `use` fails with HSM_ERR_BUSY (default 5 s). A
   * request then gets a prompt 503 instead of queueing behind an overloaded token.
   */
  acquireTimeoutMs?: number;
  clock?: () => number;
}

interface Waiter<S> {
  resolve: (s: S) => void;
  reject: (e: unknown) => void;
  timer: NodeJS.Timeout | undefined;
}

/**
 * A fixed-size pool of PKCS#11 sessions. A session is used by one operation at a time; a
 * session whose operation failed in a way that leaves the session in doubt (`breaks`) is closed
 * and replaced, never handed out again, because an operation may still be active on it
 * (CKR_OPERATION_ACTIVE on the next call).
 */
export class SessionPool<S> {
  readonly #factory: SessionFactory<S>;
  readonly #size: number;
  readonly #idle: S[] = [];
  readonly #waiters: Array<Waiter<S>> = [];
  #open = 0;
  #inUse = 0;
  #replaced = 0;
  #busyRefusals = 0;
  #closed = false;
  #drained: (() => void) | undefined;
  /** Set while `exclusive` waits for the sessions in use: nobody gets one meanwhile. */
  #paused: (() => void) | undefined;
  #pausing = false;
  readonly #backoffInitial: number;
  readonly #backoffMax: number;
  readonly #acquireTimeout: number;
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
    this.#acquireTimeout = options.acquireTimeoutMs ?? 5_000;
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

  /** How many `use` calls gave up waiting for a session (HSM_ERR_BUSY). */
  get busyCount(): number {
    return this.#busyRefusals;
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
   * Run `fn` with exclusive use of a session. If `fn` throws an error that `breaks` the
   * session, the session is replaced before anyone else can get it; the error is rethrown.
   */
  async use<T>(fn: (session: S) => Promise<T> | T): Promise<T> {
    // Counted in use from the moment it is handed out (in #acquire / #handOver), so `exclusive`
    // never closes a session that a caller is about to use.
    const session = await this.#acquire();
    let result: T;
    try {
      result = await fn(session);
    } catch (err) {
      if (this.#factory.breaks?.(err) ?? true) this.#discard(session, this.#factory.isFatal?.(err) === true);
      else this.#release(session);
      throw err;
    }
    this.#release(session);
    return result;
  }

  /**
   * Run `fn` while no session is in use and none is open: new `use` calls wait (within their
   * acquire timeout), the running ones finish, every session is closed, then `fn` runs (e.g.
   * re-initialising the library, which must not happen under a running operation) and the pool
   * opens its sessions again. Resolves false, without running `fn`, when the sessions in use
   * did not all come back within `drainTimeoutMs`.
   */
  async exclusive(fn: () => void, drainTimeoutMs: number): Promise<boolean> {
    if (this.#closed || this.#pausing) return false;
    this.#pausing = true;
    try {
      if (this.#inUse > 0) {
        let timer: NodeJS.Timeout | undefined;
        const drained = await Promise.race([
          new Promise<true>((resolve) => {
            this.#paused = () => resolve(true);
          }),
          new Promise<false>((resolve) => {
            timer = setTimeout(() => resolve(false), drainTimeoutMs);
          }),
        ]);
        clearTimeout(timer);
        this.#paused = undefined;
        if (!drained || this.#closed) return false;
      }
      for (const session of this.#idle.splice(0)) {
        this.#factory.close(session);
        this.#open -= 1;
      }
      fn();
      try {
        this.fill();
      } catch {
        // Reopened on demand instead (through the backoff gate).
      }
      return true;
    } finally {
      this.#pausing = false;
      // Waiters queued during the pause get sessions from a fresh start (opened one by one).
      for (let n = this.#waiters.length; n > 0 && (this.#idle.length > 0 || this.#open < this.#size); n -= 1) this.#wakeWaiter();
    }
  }

  /**
   * Close every session; pending and later `use` calls fail. Resolves once the operations still
   * running have returned their sessions and those are closed too: the module must not be
   * finalised under an operation running on libuv's thread pool.
   */
  close(): Promise<void> {
    this.#closed = true;
    for (const waiter of this.#waiters.splice(0)) {
      clearTimeout(waiter.timer);
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
    if (this.#inUse === 0) this.#paused?.();
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
    if (this.#pausing) return this.#wait();
    const idle = this.#idle.pop();
    if (idle !== undefined) {
      this.#inUse += 1;
      return Promise.resolve(idle);
    }
    if (this.#open < this.#size) {
      try {
        const session = this.#openOne();
        this.#inUse += 1;
        return Promise.resolve(session);
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return this.#wait();
  }

  #wait(): Promise<S> {
    return new Promise((resolve, reject) => {
      const waiter: Waiter<S> = { resolve, reject, timer: undefined };
      waiter.timer = setTimeout(() => {
        const at = this.#waiters.indexOf(waiter);
        if (at < 0) return;
        this.#waiters.splice(at, 1);
        this.#busyRefusals += 1;
        reject(new HsmError('HSM_ERR_BUSY', `no token session became free within ${this.#acquireTimeout} ms`));
      }, this.#acquireTimeout);
      this.#waiters.push(waiter);
    });
  }

  /** The next waiter, its timeout cancelled. */
  #nextWaiter(): Waiter<S> | undefined {
    const waiter = this.#waiters.shift();
    if (waiter) clearTimeout(waiter.timer);
    return waiter;
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
    const waiter = this.#pausing ? undefined : this.#nextWaiter();
    if (waiter) {
      this.#inUse += 1;
      waiter.resolve(session);
    } else this.#idle.push(session);
  }

  /** A session is gone for good: let waiters open their own, one at a time until one succeeds. */
  #wakeWaiter(): void {
    if (this.#pausing) return;
    const waiter = this.#nextWaiter();
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
