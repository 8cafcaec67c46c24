import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { AppError } from '../src/errors.js';

/** Seconds a refused client should wait; behind a balancer another instance answers sooner. */
const RETRY_AFTER_SECONDS = '5';

/**
 * Graceful shutdown for keep-alive clients. close() stops accepting and closes idle connections,
 * but a connection whose request is still being served would stay open after its response and
 * hold the shutdown until the keep-alive timeout. From preClose on, every response asks the
 * client to close (`Connection: close`), so the server finishes as soon as the work in flight does.
 *
 * A request that still arrives (on a connection that was busy when close() began) is refused
 * with SERVICE_ERR_SHUTTING_DOWN and Retry-After, through the error handler like every other
 * error, so it has the contract body and, in a request-logged scope, its audit entry. The app
 * sets Fastify's `return503OnClosing: false`, which would otherwise answer before any hook.
 * Register this first: its onRequest runs before every scope's hooks (Hawk, admin auth, limits).
 */
async function shutdown(app: FastifyInstance): Promise<void> {
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  app.addHook('onRequest', async () => {
    if (closing) {
      throw new AppError('SERVICE_ERR_SHUTTING_DOWN', {
        headers: { 'retry-after': RETRY_AFTER_SECONDS },
        detail: 'request arrived after shutdown began',
      });
    }
  });
  app.addHook('onSend', async (request, reply) => {
    if (closing && request.raw.httpVersionMajor < 2) reply.header('connection', 'close');
  });
}

export default fp(shutdown, { name: 'shutdown', fastify: '5.x' });
