import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { HsmError, type HsmErrorCode } from '../hsm/index.js';
import { DatabaseUnavailableError } from '../src/db/unavailable.js';
import { AppError, ERROR_CODE_HEADER, type ErrorCode } from '../src/errors.js';
import { auditRefusedBeforeRouting } from './request-log.js';

/** How long a client should wait before retrying a 503. */
const RETRY_AFTER_SECONDS = '5';

/**
 * Every key store error, deliberately: what a caller may do about it. A missing entry does not
 * compile, so a new HsmErrorCode cannot reach a client as INTERNAL_ERROR by accident.
 */
const hsmCodes: Record<HsmErrorCode, { code: ErrorCode; retryAfter?: string }> = {
  // The token cannot serve now (down, logged out, library or token missing): retry, or another instance.
  HSM_ERR_UNAVAILABLE: { code: 'HSM_ERR_UNAVAILABLE', retryAfter: RETRY_AFTER_SECONDS },
  HSM_ERR_MODULE: { code: 'HSM_ERR_UNAVAILABLE', retryAfter: RETRY_AFTER_SECONDS },
  HSM_ERR_TOKEN_NOT_FOUND: { code: 'HSM_ERR_UNAVAILABLE', retryAfter: RETRY_AFTER_SECONDS },
  HSM_ERR_LOGIN: { code: 'HSM_ERR_UNAVAILABLE', retryAfter: RETRY_AFTER_SECONDS },
  // A fresh UUID already in the token: the retry draws another.
  HSM_ERR_KEY_EXISTS: { code: 'HSM_ERR_UNAVAILABLE', retryAfter: RETRY_AFTER_SECONDS },
  HSM_ERR_BUSY: { code: 'HSM_ERR_BUSY', retryAfter: '1' },
  // Confirmed by a refresh, yet the database says the key exists: not visible here yet (or lost).
  HSM_ERR_KEY_NOT_FOUND: { code: 'KEY_ERR_NOT_YET_VISIBLE', retryAfter: '1' },
  HSM_ERR_DECRYPT: { code: 'KEY_ERR_DECRYPT_FAILED' },
  HSM_ERR_INPUT: { code: 'REQ_ERR_BAD_REQUEST' },
  HSM_ERR_KEY_AMBIGUOUS: { code: 'HSM_ERR_KEY_INCONSISTENT' },
  HSM_ERR_KEY_INVALID: { code: 'HSM_ERR_KEY_INCONSISTENT' },
  HSM_ERR_SECRET_INVALID: { code: 'HSM_ERR_FAULT' },
  HSM_ERR_CUSTODY: { code: 'HSM_ERR_FAULT' },
  HSM_ERR_BACKUP_INVALID: { code: 'HSM_ERR_FAULT' },
  HSM_ERR_TOKEN_IN_USE: { code: 'HSM_ERR_FAULT' },
  HSM_ERR_INTERNAL: { code: 'HSM_ERR_FAULT' },
  HSM_ERR_KEY_USAGE: { code: 'KEY_ERR_WRONG_USAGE' },
};

/** Fastify's own request errors, by code (never by message). */
const fastifyCodes: Record<string, ErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'REQ_ERR_BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'REQ_ERR_UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'REQ_ERR_BAD_REQUEST',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'REQ_ERR_MALFORMED_JSON',
  FST_ERR_CTP_INVALID_JSON_BODY: 'REQ_ERR_MALFORMED_JSON',
  FST_ERR_BAD_URL: 'REQ_ERR_BAD_REQUEST',
  // A path parameter longer than the router takes (e.g. /keypair/<500 chars>) names no resource.
  FST_ERR_MAX_PARAM_LENGTH: 'REQ_ERR_NOT_FOUND',
  FST_ERR_ASYNC_CONSTRAINT: 'REQ_ERR_BAD_REQUEST',
};

/** Translate anything thrown into a catalogue error. Unknown errors become a bare 500. */
export function toAppError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  if (err instanceof DatabaseUnavailableError) {
    return new AppError('DB_ERR_UNAVAILABLE', { cause: err, headers: { 'retry-after': RETRY_AFTER_SECONDS } });
  }
  if (err instanceof HsmError) {
    const { code, retryAfter } = hsmCodes[err.code];
    return new AppError(code, { cause: err, detail: err.ckr ?? err.code, ...(retryAfter && { headers: { 'retry-after': retryAfter } }) });
  }
  const code = (err as FastifyError | undefined)?.code;
  if (code === 'FST_ERR_HANDLER_TIMEOUT') return new AppError('SERVICE_ERR_TIMEOUT', { cause: err, headers: { 'retry-after': RETRY_AFTER_SECONDS } });
  if (typeof code === 'string' && fastifyCodes[code]) return new AppError(fastifyCodes[code], { cause: err });
  const status = (err as FastifyError | undefined)?.statusCode;
  if ((err as FastifyError | undefined)?.validation || (typeof status === 'number' && status >= 400 && status < 500)) {
    return new AppError('REQ_ERR_BAD_REQUEST', { cause: err });
  }
  return new AppError('INTERNAL_ERROR', { cause: err });
}

/**
 * How a scope writes an error body: a face's own format (the LKM's `{"message","status"}`, an
 * OAuth2 `{"error","error_description"}`, an HTML page). Status, the `strongroom-error-code`
 * header and the catalogue's headers (Retry-After, WWW-Authenticate) are set before it runs.
 */
export interface ErrorBodyFormat {
  (error: AppError, request: FastifyRequest): { contentType: string; body: string | Buffer | object };
}

/** Today's body for everything outside a face (the admin API, unknown paths): the LKM's shape. */
export const messageStatusBody: ErrorBodyFormat = (error) => ({
  contentType: 'application/json; charset=utf-8',
  body: { message: error.message, status: error.status },
});

function send(reply: FastifyReply, error: AppError, request: FastifyRequest, format: ErrorBodyFormat): FastifyReply {
  const { contentType, body } = format(error, request);
  return reply
    .code(error.status)
    .headers({ ...error.headers, [ERROR_CODE_HEADER]: error.code })
    .type(contentType)
    .send(body);
}

/**
 * Fastify's `frameworkErrors` option: errors raised before routing (a path that does not
 * percent-decode, a parameter over the router's length limit) would otherwise get Fastify's own
 * body, which echoes the path and an internal code. Each is audited (sampled) as a
 * `request.refused` event: no route scope, and so no request log, ever sees it.
 */
export function frameworkErrors(err: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const error = toAppError(err);
  // Before routing no face has run: only core codes come out of toAppError here.
  auditRefusedBeforeRouting(request, error.status, error.code as ErrorCode);
  request.log.info({ code: error.code, detail: err.code }, 'request refused before routing');
  send(reply, error, request, messageStatusBody);
}

/**
 * Map every error of `scope` (and its 404s) to HTTP in one place: the catalogue's status, the
 * stable code in a header, no internals in any 5xx, the body in `format`. The full error goes
 * to the server log. A face calls it in its own scope; the root calls it for what escapes
 * every face.
 */
export function useErrorHandler(scope: FastifyInstance, format: ErrorBodyFormat): void {
  scope.setErrorHandler((err: unknown, request: FastifyRequest, reply: FastifyReply) => {
    const error = toAppError(err);
    // Refusals during shutdown are expected (one per late request): not errors.
    if (error.status >= 500 && error.code !== 'SERVICE_ERR_SHUTTING_DOWN') request.log.error({ err, code: error.code }, 'request failed');
    else request.log.info({ code: error.code, detail: error.detail }, 'request refused');
    return send(reply, error, request, format);
  });
  scope.setNotFoundHandler((request: FastifyRequest, reply: FastifyReply) => send(reply, new AppError('REQ_ERR_NOT_FOUND'), request, format));
}

/** The root handler: what escapes every face keeps the `{"message","status"}` body. */
async function errorHandler(app: FastifyInstance): Promise<void> {
  useErrorHandler(app, messageStatusBody);
}

export default fp(errorHandler, { name: 'error-handler', fastify: '5.x' });
