import type { FastifyError, FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { AppError, type ErrorCode } from '../src/errors.js';
import type {} from './hawk-auth.js';

/** How many failures are allowed, and over how long. */
export interface HawkFailureLimitSettings {
  /** Failed Hawk authentications allowed per client address within the window. */
  limit: number;
  windowSec: number;
  /** Failures allowed per Hawk id within the window, from any address (default: 5 × limit). */
  idLimit?: number;
}

export interface HawkFailureLimiterOptions extends HawkFailureLimitSettings {
  /** Milliseconds since the epoch; injected so tests control time. */
  clock?: () => number;
  /** Most addresses (and, separately, ids) tracked; the least recently failing is evicted first. */
  maxTracked?: number;
}

/** Why a request is refused before authentication (its address is over budget), and for how long. */
export interface Refusal {
  scope: 'address';
  retryAfterSec: number;
}

const ID_LIMIT_FACTOR = 5;
const DEFAULT_MAX_TRACKED = 10_000;
/** Longer ids are truncated for bookkeeping; Hawk ids of real credentials are at most 128 characters. */
const MAX_KEY_LENGTH = 256;

/**
 * Timestamps of recent failures per key: an exact sliding window, holding at most `limit`
 * entries per key and at most `maxKeys` keys (Map order = least recently failing first).
 */
export class FailureWindow {
  readonly #limit: number;
  readonly #windowMs: number;
  readonly #maxKeys: number;
  readonly #failures = new Map<string, number[]>();

  constructor(limit: number, windowMs: number, maxKeys: number) {
    this.#limit = limit;
    this.#windowMs = windowMs;
    this.#maxKeys = maxKeys;
  }

  get size(): number {
    return this.#failures.size;
  }

  /** Failures of `key` still inside the window, dropping older ones (and the key, when none is left). */
  #recent(key: string, now: number): number[] | undefined {
    const list = this.#failures.get(key);
    if (!list) return undefined;
    const start = now - this.#windowMs;
    let drop = 0;
    while (drop < list.length && list[drop]! <= start) drop++;
    if (drop > 0) list.splice(0, drop);
    if (list.length === 0) {
      this.#failures.delete(key);
      return undefined;
    }
    return list;
  }

  /** Seconds until `key` may try again, or 0 when it is not limited. */
  retryAfterSec(key: string, now: number): number {
    const list = this.#recent(key, now);
    if (!list || list.length < this.#limit) return 0;
    // Limited until the oldest of the last `limit` failures leaves the window.
    const oldest = list[list.length - this.#limit]!;
    return Math.max(1, Math.ceil((oldest + this.#windowMs - now) / 1000));
  }

  record(key: string, now: number): void {
    const list = this.#recent(key, now) ?? [];
    list.push(now);
    if (list.length > this.#limit) list.splice(0, list.length - this.#limit);
    // Re-insert so the Map's first entry is always the least recently failing key.
    this.#failures.delete(key);
    this.#failures.set(key, list);
    while (this.#failures.size > this.#maxKeys) {
      const first = this.#failures.keys().next().value as string;
      this.#failures.delete(first);
    }
  }
}

/**
 * Counts failed Hawk authentications per client address and per Hawk id, in memory (one
 * instance's view). An address over its budget is refused before any work. An id over its
 * budget is never refused outright: a stranger can name the real caller's id as often as it
 * likes, so the per-id limit only turns the answer to a request naming it whose MAC is wrong
 * into a 429 (see hawk-auth); a request whose MAC is right is served.
 */
export class HawkFailureLimiter {
  readonly #clock: () => number;
  readonly #byAddress: FailureWindow;
  readonly #byId: FailureWindow;

  constructor(opts: HawkFailureLimiterOptions) {
    const { limit, windowSec } = opts;
    const idLimit = opts.idLimit ?? limit * ID_LIMIT_FACTOR;
    for (const [name, value] of [['limit', limit], ['windowSec', windowSec], ['idLimit', idLimit]] as const) {
      if (!Number.isInteger(value) || value < 1) throw new Error(`hawk-failure-limit: ${name} must be a positive integer`);
    }
    const maxTracked = opts.maxTracked ?? DEFAULT_MAX_TRACKED;
    this.#clock = opts.clock ?? Date.now;
    this.#byAddress = new FailureWindow(limit, windowSec * 1000, maxTracked);
    this.#byId = new FailureWindow(idLimit, windowSec * 1000, maxTracked);
  }

  /** Addresses and ids currently tracked (for tests of the memory bound). */
  get tracked(): { addresses: number; ids: number } {
    return { addresses: this.#byAddress.size, ids: this.#byId.size };
  }

  /** Whether a request from `address` must be refused before any authentication work. */
  check(address: string): Refusal | undefined {
    const retryAfterSec = this.#byAddress.retryAfterSec(address, this.#clock());
    return retryAfterSec > 0 ? { scope: 'address', retryAfterSec } : undefined;
  }

  /** Seconds until a failure naming `id` is answered 401 again rather than 429; 0 when not limited. */
  idRetryAfterSec(id: string | undefined): number {
    return id === undefined ? 0 : this.#byId.retryAfterSec(id, this.#clock());
  }

  failure(address: string, id: string | undefined): void {
    const now = this.#clock();
    this.#byAddress.record(address, now);
    if (id !== undefined) this.#byId.record(id, now);
  }
}

/** The id a Hawk header names, without validating anything else (Hawk's own parser runs later). */
export function claimedHawkId(authorization: string | undefined): string | undefined {
  if (typeof authorization !== 'string' || !/^\s*hawk\s/i.test(authorization)) return undefined;
  const match = /(?:^\s*hawk\s+|,\s*)id="([^"\\]*)"/i.exec(authorization);
  const id = match?.[1];
  return id ? id.slice(0, MAX_KEY_LENGTH) : undefined;
}

export interface HawkFailureLimitOptions extends HawkFailureLimiterOptions {
  /** Use this limiter instead of a new one (tests inspect it). */
  limiter?: HawkFailureLimiter;
}

/** What counts as a failed authentication: the answers hawk-auth gives, by code. */
const FAILURE_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['HAWK_ERR_UNAUTHORIZED', 'HAWK_ERR_STALE_TIMESTAMP']);

const counted = new WeakSet<FastifyRequest>();

/**
 * Slows down Hawk guessing: register it in the Hawk scope BEFORE hawk-auth. A client address
 * (request.ip, so TRUST_PROXY applies) over its failure budget gets 429 with Retry-After before
 * any MAC, database or token work; while limited even a correct request is refused, and these
 * refusals do not count as failures. A Hawk id over its budget only marks the request
 * (`hawkIdRetryAfterSec`): hawk-auth still checks the MAC, serves a correct request, and answers
 * a wrong one 429 instead of 401 (that one was a failure, and counts).
 */
async function hawkFailureLimit(app: FastifyInstance, opts: HawkFailureLimitOptions): Promise<void> {
  const limiter = opts.limiter ?? new HawkFailureLimiter(opts);

  app.addHook('onRequest', async (request) => {
    const refusal = limiter.check(request.ip);
    if (refusal) {
      throw new AppError('HAWK_ERR_TOO_MANY_FAILURES', {
        headers: { 'retry-after': String(refusal.retryAfterSec) },
        detail: 'too many failed Hawk authentications from this address',
      });
    }
    request.hawkIdRetryAfterSec = limiter.idRetryAfterSec(claimedHawkId(request.headers.authorization));
  });

  // Runs before the error handler answers, so the next request already sees this failure.
  app.addHook('onError', async (request, _reply, err: FastifyError) => {
    const code = (err as { code?: string }).code as ErrorCode;
    const failed = FAILURE_CODES.has(code) || (code === 'HAWK_ERR_TOO_MANY_FAILURES' && request.hawkIdRetryAfterSec > 0);
    if (counted.has(request) || !failed) return;
    counted.add(request);
    limiter.failure(request.ip, claimedHawkId(request.headers.authorization));
  });
}

export default fp(hawkFailureLimit, { name: 'hawk-failure-limit', fastify: '5.x' });
