import { randomUUID } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { AppError, ERROR_CODE_HEADER, catalogue, type ErrorCode } from '../src/errors.js';
import type {} from './request-log.js';

/** Headers that must appear at most once: Node keeps the first of each and drops the rest. */
const SINGLE = new Set(['authorization', 'host']);

/**
 * Refuses, before any authentication, requests that two parties could read differently:
 * - two `Authorization` or two `Host` headers (Node keeps the first, a proxy might keep the
 *   other, and the MAC covers the host) → 400 REQ_ERR_AMBIGUOUS_REQUEST;
 * - under TRUST_PROXY, a client address (from X-Forwarded-For) that is not an IP address →
 *   400 REQ_ERR_BAD_CLIENT_ADDRESS. It is refused rather than replaced by the TCP peer: the peer
 *   is the proxy, and counting a stranger's failures against it would lock out every caller
 *   behind it.
 * Register at the root, after shutdown, before every route scope.
 */
async function requestGuard(app: FastifyInstance): Promise<void> {
  app.addHook('onRequest', async (request) => {
    const raw = request.raw.rawHeaders;
    const seen = new Set<string>();
    for (let i = 0; i < raw.length; i += 2) {
      const name = (raw[i] as string).toLowerCase();
      if (!SINGLE.has(name)) continue;
      if (seen.has(name)) throw new AppError('REQ_ERR_AMBIGUOUS_REQUEST', { detail: `more than one ${name} header` });
      seen.add(name);
    }
    if (isIP(request.ip ?? '') === 0) {
      throw new AppError('REQ_ERR_BAD_CLIENT_ADDRESS', { detail: 'the forwarded client address is not an IP address' });
    }
  });
}

export default fp(requestGuard, { name: 'request-guard', fastify: '5.x' });

/** What a refusal by Node's HTTP parser is recorded and answered as. */
function parserRefusal(code: string | undefined): ErrorCode {
  if (code === 'HPE_HEADER_OVERFLOW') return 'REQ_ERR_HEADERS_TOO_LARGE';
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') return 'REQ_ERR_TIMEOUT';
  return 'REQ_ERR_BAD_REQUEST';
}

/**
 * Fastify's `clientErrorHandler`: Node's HTTP parser refused a request (a malformed head, a bad
 * or duplicate Content-Length, headers too large, a timeout) before Fastify saw it. The answer
 * has the contract body and the error-code header, the connection is closed, and the refusal is
 * audited as a `request.refused` event (sampled like every refusal before authentication).
 * `app` is read when an error happens: the handler is given before the app is built.
 */
export function clientErrorHandler(getApp: () => FastifyInstance | undefined) {
  return (err: NodeJS.ErrnoException, socket: Duplex): void => {
    // A reset connection has nobody to answer.
    if (err.code === 'ECONNRESET' || socket.destroyed) return;
    const code = parserRefusal(err.code);
    const { status, message } = catalogue[code];
    const body = JSON.stringify({ message, status });
    if (socket.writable) {
      socket.write(
        `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
          `Content-Length: ${Buffer.byteLength(body)}\r\n${ERROR_CODE_HEADER}: ${code}\r\nConnection: close\r\n\r\n${body}`,
      );
    }
    socket.destroy();
    const app = getApp();
    if (!app?.hasDecorator('refusals')) return;
    const address = (socket as Duplex & { remoteAddress?: string }).remoteAddress ?? null;
    app.refusals.recordUnrouted({
      uid: randomUUID(),
      loggedAt: new Date(),
      userId: null,
      method: null,
      uri: null,
      hawkId: null,
      statusCode: status,
      keypairId: null,
      clientAddress: address,
      event: 'request.refused',
      actor: 'unauthenticated',
      detail: { code, parserError: typeof err.code === 'string' ? err.code.slice(0, 64) : 'unknown' },
      face: 'core',
      principalKind: null,
      principalId: null,
      subjectKind: null,
      subjectId: null,
    });
  };
}
