import type { FastifyError, FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { AppError, type ErrorCode } from '../src/errors.js';

/** How many failures are allowed, and over how long. */
export interface HawkFailureLimitSettings {
  /** Failed Hawk authentications allowed per client address within the window. */
  limit: number;
  windowSec: number;
  /**
   * Failures allowed per Hawk id within the window, counted only from addresses that never
   * authenticated as that id (default: 5 × limit).
   */
  idLimit?: number;
}

export interface HawkFailureLimiterOptions extends HawkFailureLimitSettings {
  /** Milliseconds since the epoch; injected so tests control time. */
  clock?: () => number;
  /** Most addresses (and, separately, ids) tracked; the least recently failing is evicted first. */
  maxTracked?: number;
  /** Most (id, address) pairs remembered as having authenticated. */
  maxKnownGood?: number;
}

/** Why a request is refused before authentication, and for how long. */
export interface Refusal {
  scope: 'address' | 'id';
  retryAfterSec: number;
}

const ID_LIMIT_FACTOR = 5;
const DEFAULT_MAX_TRACKED = 10_000;
const DEFAULT_MAX_KNOWN_GOOD = 10_000;
/** Longer ids are truncated for bookkeeping; Hawk ids of real credentials are at most 128 characters. */
const MAX_KEY_LENGTH = 256;

/**
 * Timestamps of recent failures per key: an exact sliding window, holding at most `limit`
 * entries per key and at most `maxKeys` keys (Map order = least recently failing first).
 */
class SlidingWindow {
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
 * instance's view). A per-id lock never refuses an address that has authenticated as that id,
 * and only failures from other addresses count towards it: a stranger cannot lock out the
 * real caller by failing in its name.
 */
export class HawkFailureLimiter {
  readonly #clock: () => number;
  readonly #byAddress: SlidingWindow;
  readonly #byId: SlidingWindow;
  readonly #maxKnownGood: number;
  /** `id\0address` pairs seen authenticating, least recently seen first. */
  readonly #knownGood = new Map<string, true>();

  constructor(opts: HawkFailureLimiterOptions) {
    const { limit, windowSec } = opts;
    const idLimit = opts.idLimit ?? limit * ID_LIMIT_FACTOR;
    for (const [name, value] of [['limit', limit], ['windowSec', windowSec], ['idLimit', idLimit]] as const) {
      if (!Number.isInteger(value) || value < 1) throw new Error(`hawk-failure-limit: ${name} must be a positive integer`);
    }
    const maxTracked = opts.maxTracked ?? DEFAULT_MAX_TRACKED;
    this.#clock = opts.clock ?? Date.now;
    this.#byAddress = new SlidingWindow(limit, windowSec * 1000, maxTracked);
    this.#byId = new SlidingWindow(idLimit, windowSec * 1000, maxTracked);
    this.#maxKnownGood = opts.maxKnownGood ?? DEFAULT_MAX_KNOWN_GOOD;
  }

  /** Addresses and ids currently tracked (for tests of the memory bound). */
  get tracked(): { addresses: number; ids: number; knownGood: number } {
    return { addresses: this.#byAddress.size, ids: this.#byId.size, knownGood: this.#knownGood.size };
  }

  #isKnownGood(id: string, address: string): boolean {
    return this.#knownGood.has(`${id}\0${address}`);
  }

  /** Whether a request from `address` naming `id` must be refused before any authentication work. */
  check(address: string, id: string | undefined): Refusal | undefined {
    const now = this.#clock();
    const byAddress = this.#byAddress.retryAfterSec(address, now);
    if (byAddress > 0) return { scope: 'address', retryAfterSec: byAddress };
    if (id !== undefined && !this.#isKnownGood(id, address)) {
      const byId = this.#byId.retryAfterSec(id, now);
      if (byId > 0) return { scope: 'id', retryAfterSec: byId };
    }
    return undefined;
  }

  failure(address: string, id: string | undefined): void {
    const now = this.#clock();
    this.#byAddress.record(address, now);
    if (id !== undefined && !this.#isKnownGood(id, address)) this.#byId.record(id, now);
  }

  success(address: string, id: string): void {
    const key = `${id}\0${address}`;
    this.#knownGood.delete(key);
    this.#knownGood.set(key, true);
    while (this.#knownGood.size > this.#maxKnownGood) {
      this.#knownGood.delete(this.#knownGood.keys().next().value as string);
    }
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
 * (request.ip, so TRUST_PROXY applies) or a Hawk id over its failure budget gets 429 with
 * Retry-After before any MAC, database or token work; while limited even a correct request is
 * refused (its correctness is not looked at), and refusals do not count as failures.
 */
async function hawkFailureLimit(app: FastifyInstance, opts: HawkFailureLimitOptions): Promise<void> {
  const limiter = opts.limiter ?? new HawkFailureLimiter(opts);

  app.addHook('onRequest', async (request) => {
    const refusal = limiter.check(request.ip, claimedHawkId(request.headers.authorization));
    if (refusal) {
      throw new AppError('HAWK_ERR_TOO_MANY_FAILURES', {
        headers: { 'retry-after': String(refusal.retryAfterSec) },
        detail: `too many failed Hawk authentications for this ${refusal.scope}`,
      });
    }
  });

  // Runs before the error handler answers, so the next request already sees this failure.
  app.addHook('onError', async (request, _reply, err: FastifyError) => {
    if (counted.has(request) || !FAILURE_CODES.has((err as { code?: string }).code as ErrorCode)) return;
    counted.add(request);
    limiter.failure(request.ip, claimedHawkId(request.headers.authorization));
  });

  // After preValidation (the payload hash check): the request is authenticated.
  app.addHook('preHandler', async (request) => {
    if (request.hawk) limiter.success(request.ip, request.hawk.id);
  });
}

export default fp(hawkFailureLimit, { name: 'hawk-failure-limit', fastify: '5.x' });
