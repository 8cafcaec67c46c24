import Hawk from '@hapi/hawk';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import type { ClientCredential } from './hawk-client.js';

/** The Host that app.inject sends by default; Hawk MACs cover it. */
export const INJECT_HOST = 'localhost';

export interface SignedRequest {
  method: string;
  /** Path and query, e.g. /key-management/v1/decrypt?decryptType=pkcs1 */
  url: string;
  headers: Record<string, string>;
  body?: string;
}

/** A request signed by the reference client (@hapi/hawk) at `nowMs`, as Genesys Cloud would send it. */
export function signed(
  credential: ClientCredential,
  method: string,
  url: string,
  opts: { json?: unknown; nowMs?: number; nonce?: string; payloadHash?: boolean; headers?: Record<string, string> } = {},
): SignedRequest {
  const body = opts.json === undefined ? undefined : JSON.stringify(opts.json);
  const { header } = Hawk.client.header(`http://${INJECT_HOST}${url}`, method, {
    credentials: { ...credential },
    ...(opts.nowMs !== undefined && { timestamp: Math.floor(opts.nowMs / 1000) }),
    ...(opts.nonce !== undefined && { nonce: opts.nonce }),
    ...(opts.payloadHash && { payload: body ?? '', contentType: body === undefined ? '' : 'application/json' }),
  });
  return {
    method,
    url,
    headers: {
      host: INJECT_HOST,
      authorization: header,
      ...(body !== undefined && { 'content-type': 'application/json' }),
      ...opts.headers,
    },
    ...(body !== undefined && { body }),
  };
}

/** Send a request through app.inject, optionally from a given client address. */
export function injectRequest(app: FastifyInstance, r: SignedRequest, remoteAddress?: string): Promise<LightMyRequestResponse> {
  return app.inject({
    method: r.method as 'GET',
    url: r.url,
    headers: r.headers,
    ...(r.body !== undefined && { payload: r.body }),
    ...(remoteAddress !== undefined && { remoteAddress }),
  });
}
