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
 * JSON bodies only, in `scope`: read as text, kept for payload verification, then parsed with
 * Fastify's own hardened parser (prototype-poisoning keys refused). An empty body is no body.
 * Any other content type (text/plain included) is 415 Unsupported Media Type. A face calls it
 * in its own scope; another face there may install other parsers instead.
 */
export function useJsonBodies(scope: FastifyInstance): void {
  const parse = scope.getDefaultJsonParser('error', 'error');
  scope.removeAllContentTypeParsers();
  scope.addContentTypeParser('application/json', { parseAs: 'string' }, (request: FastifyRequest, body, done) => {
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

/** The root's parsers (admin API and whatever is outside every face): JSON only. */
async function rawJson(app: FastifyInstance): Promise<void> {
  app.decorateRequest('rawBody', undefined);
  useJsonBodies(app);
}

export default fp(rawJson, { name: 'raw-json', fastify: '5.x' });
