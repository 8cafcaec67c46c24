import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { RequestLogEntry } from '../src/db/request-log.js';

export interface RequestLogSink {
  insert(entry: RequestLogEntry): Promise<void>;
}

export interface RequestLogOptions {
  sink: RequestLogSink;
  clock?: () => number;
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The keypair a request concerned, for the request log (set by the route). */
    auditKeypairId: string | null;
  }
}

const USER_ID_HEADER = 'purecloud-user-id';
const NO_USER_ID = 'NO-USER-ID';
const MAX_FIELD = 256;

const receivedAt = new WeakMap<FastifyRequest, Date>();

function headerValue(value: string | string[] | undefined): string | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  return v === undefined || v === '' ? undefined : v.slice(0, MAX_FIELD);
}

/**
 * Logs every request that reaches the scope, rejected ones included: the compatible fields
 * (user id claim, method, URI, time) plus the Hawk id, status, keypair and client address.
 */
async function requestLog(app: FastifyInstance, opts: RequestLogOptions): Promise<void> {
  const clock = opts.clock ?? Date.now;
  // Entries still being written: shutdown waits for them before the database closes.
  const pending = new Set<Promise<void>>();
  app.decorateRequest('auditKeypairId', null);

  app.addHook('onRequest', async (request) => {
    receivedAt.set(request, new Date(clock()));
  });

  app.addHook('onResponse', async (request, reply) => {
    const entry: RequestLogEntry = {
      userId: headerValue(request.headers[USER_ID_HEADER]) ?? NO_USER_ID,
      method: request.method,
      uri: (request.raw.url ?? request.url).slice(0, 2048),
      loggedAt: receivedAt.get(request) ?? new Date(clock()),
      hawkId: request.hawk?.id ?? null,
      statusCode: reply.statusCode,
      keypairId: request.auditKeypairId,
      clientAddress: request.ip ?? null,
    };
    const write = opts.sink.insert(entry).catch((err: unknown) => {
      request.log.error({ err }, 'request log entry could not be written');
    });
    pending.add(write);
    try {
      await write;
    } finally {
      pending.delete(write);
    }
  });

  app.addHook('onClose', async () => {
    await Promise.allSettled([...pending]);
  });
}

export default fp(requestLog, { name: 'request-log', fastify: '5.x' });
