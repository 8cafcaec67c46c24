import type { FastifyInstance, FastifyRequest } from 'fastify';
import adminAuth from '../../plugins/admin-auth.js';
import requestLog from '../../plugins/request-log.js';
import { AppError } from '../errors.js';
import { isUuid } from '../core/uuid.js';
import type { Secret } from '../secret.js';
import type { KeyLifecycle } from './lifecycle.js';

export interface KeyAdminRoutesOptions {
  lifecycle: KeyLifecycle;
  adminToken: Secret | undefined;
  clock?: () => number;
}

/** Who admin-API events are attributed to: the bearer token names no person. */
const ADMIN_ACTOR = 'admin';

function days(request: FastifyRequest): unknown {
  const body = request.body;
  if (body === undefined || body === null) return undefined;
  if (typeof body !== 'object' || Array.isArray(body)) throw new AppError('REQ_ERR_BODY_NOT_OBJECT');
  return (body as Record<string, unknown>).days;
}

/**
 * The key lifecycle for operators, under its own prefix (e.g. /admin/v1), Bearer ADMIN_TOKEN:
 * GET /keypairs (with state; `?token=true` also says whether the token holds each key),
 * GET /keypairs/:id, POST /keypairs/:id/disable | /enable | /schedule-deletion {days} |
 * /cancel-deletion. Purging stays a CLI act (`strongroom keys purge`): destroying key
 * material is done on the server, with a confirmation.
 */
export async function keyAdminRoutes(app: FastifyInstance, opts: KeyAdminRoutesOptions): Promise<void> {
  const { lifecycle } = opts;
  // Admin calls are in the audit chain like every LKM call, refused ones included.
  await app.register(requestLog, { sink: app.auditWriter, face: 'admin', ...(opts.clock && { clock: opts.clock }) });
  await app.register(adminAuth, { token: opts.adminToken });
  app.addHook('preHandler', async (request) => {
    const id = (request.params as { id?: unknown } | undefined)?.id;
    if (isUuid(id)) request.auditKeypairId = id;
  });

  app.get<{ Querystring: { token?: string } }>('/keypairs', async (request) => ({
    keypairs: await lifecycle.list({ checkToken: request.query.token === 'true' }),
  }));
  app.get<{ Params: { id: string } }>('/keypairs/:id', async (request) => lifecycle.get(request.params.id));
  app.post<{ Params: { id: string } }>('/keypairs/:id/disable', async (request) =>
    lifecycle.disable(request.params.id, ADMIN_ACTOR),
  );
  app.post<{ Params: { id: string } }>('/keypairs/:id/enable', async (request) =>
    lifecycle.enable(request.params.id, ADMIN_ACTOR),
  );
  app.post<{ Params: { id: string } }>('/keypairs/:id/schedule-deletion', async (request) =>
    lifecycle.scheduleDeletion(request.params.id, days(request), ADMIN_ACTOR),
  );
  app.post<{ Params: { id: string } }>('/keypairs/:id/cancel-deletion', async (request) =>
    lifecycle.cancelDeletion(request.params.id, ADMIN_ACTOR),
  );
}
