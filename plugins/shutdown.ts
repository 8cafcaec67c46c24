import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';

/**
 * Graceful shutdown for keep-alive clients. close() stops accepting and closes idle connections,
 * but a connection whose request is still being served would stay open after its response and
 * hold the shutdown until the keep-alive timeout. From preClose on, every response asks the
 * client to close (`Connection: close`), so the server finishes as soon as the work in flight does.
 */
async function shutdown(app: FastifyInstance): Promise<void> {
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  app.addHook('onSend', async (request, reply) => {
    if (closing && request.raw.httpVersionMajor < 2) reply.header('connection', 'close');
  });
}

export default fp(shutdown, { name: 'shutdown', fastify: '5.x' });
