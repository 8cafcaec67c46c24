import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { AppError } from '../src/errors.js';
import type { Secret } from '../src/secret.js';
import { FailureWindow } from './hawk-failure-limit.js';

/** Wrong admin tokens allowed per client address within the window (ADMIN_FAILURE_*). */
export interface AdminFailureLimitSettings {
  limit: number;
  windowSec: number;
}

export interface AdminFailureLimiterOptions extends AdminFailureLimitSettings {
  /** Milliseconds since the epoch; injected so tests control time. */
  clock?: () => number;
  /** Most addresses tracked; the least recently failing is forgotten first. */
  maxTracked?: number;
}

/**
 * Failed admin bearer-token attempts per client address, in memory (one instance's view),
 * shared by every scope that registers admin-auth: POST /auth and /admin/v1 draw on one budget.
 */
export class AdminFailureLimiter {
  readonly #clock: () => number;
  readonly #window: FailureWindow;

  constructor(opts: AdminFailureLimiterOptions) {
    for (const [name, value] of [['limit', opts.limit], ['windowSec', opts.windowSec]] as const) {
      if (!Number.isInteger(value) || value < 1) throw new Error(`admin-auth: ${name} must be a positive integer`);
    }
    this.#clock = opts.clock ?? Date.now;
    this.#window = new FailureWindow(opts.limit, opts.windowSec * 1000, opts.maxTracked ?? 10_000);
  }

  /** Seconds until `address` may try again; 0 when it is not limited. */
  retryAfterSec(address: string): number {
    return this.#window.retryAfterSec(address, this.#clock());
  }

  failure(address: string): void {
    this.#window.record(address, this.#clock());
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The one admin failure limiter of the app (see adminFailureLimit). */
    adminFailureLimiter: AdminFailureLimiter;
  }
}

/** Decorates the app with the admin failure limiter every admin-auth scope uses. */
export const adminFailureLimit = fp(
  async (app: FastifyInstance, opts: AdminFailureLimiterOptions) => {
    app.decorate('adminFailureLimiter', new AdminFailureLimiter(opts));
  },
  { name: 'admin-failure-limit', fastify: '5.x' },
);

export interface AdminAuthOptions {
  /** ADMIN_TOKEN; when undefined every admin route answers 403 and points to the CLI. */
  token: Secret | undefined;
  /** Default: the app's `adminFailureLimiter`; one of the two is required. */
  limiter?: AdminFailureLimiter;
}

const digest = (value: string) => createHash('sha256').update(value, 'utf8').digest();

/**
 * `Authorization: Bearer <ADMIN_TOKEN>` for every route of the scope. The comparison is over
 * SHA-256 digests with timingSafeEqual, so neither content nor length leaks through timing.
 * An address over its failure budget gets 429 with Retry-After before the comparison (even
 * with the right token, as for Hawk); every wrong or missing token counts. Each refusal is
 * in the request log of the scope (aggregated beyond a few per address: see request-log).
 */
async function adminAuth(app: FastifyInstance, opts: AdminAuthOptions): Promise<void> {
  const expected = opts.token === undefined ? undefined : digest(opts.token.reveal());
  const limiter = opts.limiter ?? (app.hasDecorator('adminFailureLimiter') ? app.adminFailureLimiter : undefined);
  if (!limiter) throw new Error('admin-auth: a failure limiter is required; without one the token could be guessed at line rate');

  app.addHook('onRequest', async (request) => {
    if (expected === undefined) throw new AppError('ADMIN_ERR_DISABLED', { detail: 'ADMIN_TOKEN is not configured' });
    const retryAfterSec = limiter.retryAfterSec(request.ip);
    if (retryAfterSec > 0) {
      throw new AppError('ADMIN_ERR_TOO_MANY_FAILURES', {
        headers: { 'retry-after': String(retryAfterSec) },
        detail: 'too many wrong admin tokens from this address',
      });
    }
    // The scheme name is case-insensitive (RFC 7235 §2.1); the token is not.
    const match = /^Bearer ([\x21-\x7e]+)$/i.exec(request.headers.authorization ?? '');
    if (!match || !timingSafeEqual(digest(match[1] as string), expected)) {
      limiter.failure(request.ip);
      throw new AppError('ADMIN_ERR_UNAUTHORIZED', {
        headers: { 'www-authenticate': 'Bearer' },
        detail: match ? 'wrong admin token' : 'no bearer token',
      });
    }
    // The token names no person: its audit principal is the token itself.
    request.auditPrincipal = { kind: 'admin-token', id: 'admin' };
  });
}

export default fp(adminAuth, { name: 'admin-auth', fastify: '5.x' });
