import { HsmError } from './errors.js';

export interface SessionFactory<S> {
  /** Open a ready-to-use (logged-in) session. */
  open(): S;
  /** Close a session, ignoring errors: it may already be gone. */
  close(session: S): void;
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

  constructor(factory: SessionFactory<S>, size: number) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError('session pool size must be a positive integer');
    this.#factory = factory;
    this.#size = size;
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
      this.#discard(session);
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
      return this.#factory.open();
    } catch (err) {
      this.#open -= 1;
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

  #discard(session: S): void {
    this.#settled();
    this.#replaced += 1;
    // Open the replacement before closing the broken session: closing a token's last session
    // logs the application out (PKCS#11 v2.40 §5.6).
    let replacement: S | undefined;
    if (!this.#closed) {
      try {
        replacement = this.#factory.open();
      } catch {
        replacement = undefined;
      }
    }
    this.#factory.close(session);
    if (replacement === undefined) {
      this.#open -= 1;
      // Waiters would otherwise wait for a session that no longer exists.
      this.#wakeWaiter();
      return;
    }
    this.#handOver(replacement);
  }
}
