import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { AuditRecord } from '../src/audit/chain.js';
import { AppError, ERROR_CODE_HEADER, catalogue } from '../src/errors.js';

/** Takes a record and resolves once it is durable (the audit writer). */
export interface RequestLogSink {
  record(record: AuditRecord): Promise<void>;
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

function requestRecord(request: FastifyRequest, reply: FastifyReply, now: () => Date): AuditRecord {
  return {
    uid: randomUUID(),
    loggedAt: receivedAt.get(request) ?? now(),
    userId: headerValue(request.headers[USER_ID_HEADER]) ?? NO_USER_ID,
    method: request.method,
    uri: (request.raw.url ?? request.url).slice(0, 2048),
    hawkId: request.hawk?.id ?? null,
    statusCode: reply.statusCode,
    keypairId: request.auditKeypairId === null ? null : request.auditKeypairId.toLowerCase(),
    clientAddress: request.ip ?? null,
    event: null,
    actor: null,
    detail: null,
  };
}

/**
 * Logs every request that reaches the scope, rejected ones included: the compatible fields
 * (user id claim, method, URI, time) plus the Hawk id, status, keypair and client address.
 *
 * Vault's rule: the entry is durable (database or spool) before the response leaves, so a
 * request is never served unaudited. The wait is one group commit, shared by every concurrent
 * request. If the entry cannot be kept, the response is replaced by a 503 with Retry-After.
 */
async function requestLog(app: FastifyInstance, opts: RequestLogOptions): Promise<void> {
  const clock = opts.clock ?? Date.now;
  const now = () => new Date(clock());
  app.decorateRequest('auditKeypairId', null);

  app.addHook('onRequest', async (request) => {
    receivedAt.set(request, now());
  });

  app.addHook('onSend', async (request, reply, payload) => {
    try {
      await opts.sink.record(requestRecord(request, reply, now));
      return payload;
    } catch (err) {
      // Replace the answer here rather than throw: the error handler would run onSend again.
      const error = err instanceof AppError ? err : new AppError('AUDIT_ERR_UNAVAILABLE', { cause: err });
      request.log.error({ err, code: error.code }, 'request refused: its audit entry could not be kept');
      reply
        .code(503)
        .headers({ 'retry-after': error.headers['retry-after'] ?? '5', [ERROR_CODE_HEADER]: 'AUDIT_ERR_UNAVAILABLE' })
        .type('application/json; charset=utf-8');
      const { message, status } = catalogue.AUDIT_ERR_UNAVAILABLE;
      return JSON.stringify({ message, status });
    }
  });
}

export default fp(requestLog, { name: 'request-log', fastify: '5.x' });
