import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { AppError } from '../src/errors.js';
import type { Secret } from '../src/secret.js';

export interface AdminAuthOptions {
  /** ADMIN_TOKEN; when undefined every admin route answers 403 and points to the CLI. */
  token: Secret | undefined;
}

const digest = (value: string) => createHash('sha256').update(value, 'utf8').digest();

/**
 * `Authorization: Bearer <ADMIN_TOKEN>` for every route of the scope. The comparison is over
 * SHA-256 digests with timingSafeEqual, so neither content nor length leaks through timing.
 */
async function adminAuth(app: FastifyInstance, opts: AdminAuthOptions): Promise<void> {
  const expected = opts.token === undefined ? undefined : digest(opts.token.reveal());

  app.addHook('onRequest', async (request) => {
    if (expected === undefined) throw new AppError('ADMIN_ERR_DISABLED', { detail: 'ADMIN_TOKEN is not configured' });
    // The scheme name is case-insensitive (RFC 7235 §2.1); the token is not.
    const match = /^Bearer ([\x21-\x7e]+)$/i.exec(request.headers.authorization ?? '');
    if (!match || !timingSafeEqual(digest(match[1] as string), expected)) {
      throw new AppError('ADMIN_ERR_UNAUTHORIZED', {
        headers: { 'www-authenticate': 'Bearer' },
        detail: match ? 'wrong admin token' : 'no bearer token',
      });
    }
  });
}

export default fp(adminAuth, { name: 'admin-auth', fastify: '5.x' });
