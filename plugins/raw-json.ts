import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { AppError } from '../src/errors.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The JSON body exactly as received: Hawk payload hashes are computed over it. */
    rawBody: string | undefined;
  }
}

/**
 * JSON bodies are read as text, kept for payload verification, then parsed with Fastify's own
 * hardened parser (prototype-poisoning keys refused). An empty body is no body. No other
 * content type is accepted.
 */
async function rawJson(app: FastifyInstance): Promise<void> {
  const parse = app.getDefaultJsonParser('error', 'error');
  app.decorateRequest('rawBody', undefined);
  // JSON only: any other content type (text/plain included) is 415 Unsupported Media Type.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request: FastifyRequest, body, done) => {
    const text = body as string;
    request.rawBody = text;
    if (text.trim() === '') {
      done(null, undefined);
      return;
    }
    parse(request, text, (err, value) => {
      if (err) done(new AppError('REQ_ERR_MALFORMED_JSON', { cause: err }), undefined);
      else done(null, value);
    });
  });
}

export default fp(rawJson, { name: 'raw-json', fastify: '5.x' });
