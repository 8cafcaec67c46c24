import type {} from '@fastify/sensible';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import adminAuth from '../../../plugins/admin-auth.js';
import hawkAuth, { type HawkCredentialLookup, type HawkNonceStore } from '../../../plugins/hawk-auth.js';
import hawkFailureLimit, { type HawkFailureLimitSettings } from '../../../plugins/hawk-failure-limit.js';
import requestLog from '../../../plugins/request-log.js';
import { requestLogUuid, type LoggedRequest, type RequestLogRepository } from '../../db/request-log.js';
import { AppError } from '../../errors.js';
import { lkmErrors } from './errors.js';
import type { Secret } from '../../secret.js';
import type { CredentialService } from './credentials.js';
import { isUuid } from '../../core/uuid.js';
import type { LkmService } from './service.js';

export interface LkmRoutesOptions {
  service: LkmService;
  credentials: CredentialService;
  hawkCredentials: HawkCredentialLookup;
  nonces: HawkNonceStore;
  requestLog: RequestLogRepository;
  adminToken: Secret | undefined;
  publicUrl: { host: string; port: number } | undefined;
  clock: () => number;
  /** Failed Hawk authentications allowed per address and per id (429 beyond). */
  hawkFailures: HawkFailureLimitSettings;
  /** HAWK_ACCEPT_PATH_ONLY_MAC: accept MACs over the path without the query string. */
  acceptPathOnlyMac: boolean;
  /** Counts requests authenticated by a path-only MAC (runtime figures). */
  onPathOnlyMac: (id: string) => void;
}

/** The fixed answer of OPTIONS /decrypt (Genesys Cloud checks the decrypt URL with it). */
const DECRYPT_OPTIONS = {
  encryptBody: { keypairId: null, body: null, decryptType: null },
  decryptResponse: { body: 'Decrypted Response' },
};

const MAX_ENTRIES_LIMIT = 10_000;
/** ISO-8601 date or date-time; without an offset the time is UTC. */
const ISO_8601 = /^\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?$/;

function parseTime(name: string, value: unknown): Date | undefined {
  if (value === undefined || value === '') return undefined;
  if (typeof value !== 'string' || !ISO_8601.test(value)) {
    throw new AppError('REQ_ERR_BAD_QUERY', { message: `${name} must be an ISO-8601 date-time, e.g. 2015-08-31T13:49:22.444Z` });
  }
  const notValid = () => new AppError('REQ_ERR_BAD_QUERY', { message: `${name} is not a valid date-time` });
  let text = value.replace(/(\.\d{3})\d+/, '$1');
  if (text.length > 10 && !/(Z|[+-]\d{2}:?\d{2})$/.test(text)) text += 'Z';
  const date = new Date(text);
  if (Number.isNaN(date.getTime())) throw notValid();
  // Date rolls 2021-02-30 over to 2 March: refuse a calendar date that does not exist.
  const [y, m, d] = value.slice(0, 10).split('-').map(Number) as [number, number, number];
  const calendar = new Date(Date.UTC(y, m - 1, d));
  if (calendar.getUTCFullYear() !== y || calendar.getUTCMonth() !== m - 1 || calendar.getUTCDate() !== d) throw notValid();
  return date;
}

function parseMaxEntries(value: unknown): number {
  if (value === undefined || value === '') return 100;
  const n = typeof value === 'string' && /^\d{1,6}$/.test(value) ? Number(value) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > MAX_ENTRIES_LIMIT) {
    throw new AppError('REQ_ERR_BAD_QUERY', { message: `maxEntries must be an integer from 1 to ${MAX_ENTRIES_LIMIT}` });
  }
  return n;
}

const pad = (n: number, width = 2) => String(n).padStart(width, '0');

/**
 * The reference shape: `id` a UUID string (derived from the row id), `timestamp` as Java's
 * LocalDateTime array, and its string (UTC).
 */
export function requestLogView(entry: LoggedRequest) {
  const t = entry.loggedAt;
  const ms = t.getUTCMilliseconds();
  return {
    id: requestLogUuid(entry.id),
    userId: entry.userId,
    requestUri: entry.requestUri,
    requestMethod: entry.requestMethod,
    timestamp: [
      t.getUTCFullYear(),
      t.getUTCMonth() + 1,
      t.getUTCDate(),
      t.getUTCHours(),
      t.getUTCMinutes(),
      t.getUTCSeconds(),
      ms * 1_000_000,
    ],
    timestampString:
      `${t.getUTCFullYear()}-${pad(t.getUTCMonth() + 1)}-${pad(t.getUTCDate())}` +
      `T${pad(t.getUTCHours())}:${pad(t.getUTCMinutes())}:${pad(t.getUTCSeconds())}.${pad(ms, 3)}`,
  };
}

function bodyObject(request: FastifyRequest): Record<string, unknown> {
  const body = request.body;
  if (body === undefined || body === null) return {};
  if (typeof body !== 'object' || Array.isArray(body)) throw new AppError('REQ_ERR_BODY_NOT_OBJECT');
  return body as Record<string, unknown>;
}

/**
 * The Local Key Manager contract under /key-management/v1. Health is public; POST /auth is an
 * admin act; everything else is Hawk-authenticated. Everything but health is request-logged.
 */
export async function lkmRoutes(app: FastifyInstance, opts: LkmRoutesOptions): Promise<void> {
  const { service } = opts;

  app.get('/health', async (_request, reply) => reply.type('text/plain; charset=utf-8').send('OK'));

  app.register(async (logged) => {
    await logged.register(requestLog, { sink: logged.auditWriter, face: 'lkm', clock: opts.clock });

    logged.register(async (admin) => {
      await admin.register(adminAuth, { token: opts.adminToken });
      admin.post('/auth', async (request, reply) => {
        const { id } = bodyObject(request);
        const credential = await opts.credentials.register(id);
        request.log.info({ hawkId: credential.id }, 'hawk credential registered');
        return reply.preventCache().send(credential);
      });
    });

    logged.register(async (hawk) => {
      // Before hawk-auth: a limited address is refused before any MAC, database or token work.
      await hawk.register(hawkFailureLimit, { ...opts.hawkFailures, clock: opts.clock });
      await hawk.register(hawkAuth, {
        credentials: opts.hawkCredentials,
        nonces: opts.nonces,
        clock: opts.clock,
        publicUrl: opts.publicUrl,
        acceptPathOnlyMac: opts.acceptPathOnlyMac,
        onPathOnlyMac: opts.onPathOnlyMac,
        onSignedQuery: (id) => opts.credentials.markSignsQuery(id),
      });

      hawk.post('/keypair', async (request) => {
        const keypair = await service.createKeypair(request.hawk?.id ?? null);
        request.auditKeypairId = keypair.id;
        request.log.info({ keypairId: keypair.id }, 'keypair created');
        return keypair;
      });

      hawk.get('/keypair', async () => service.listKeypairs());

      hawk.get<{ Params: { id: string } }>('/keypair/:id', async (request) => {
        const { id } = request.params;
        if (isUuid(id)) request.auditKeypairId = id;
        const keypair = await service.getKeypair(id);
        if (!keypair) {
          throw new AppError('KEY_ERR_KEYPAIR_NOT_FOUND');
        }
        return keypair;
      });

      hawk.post<{ Querystring: { decryptType?: string } }>('/decrypt', async (request, reply: FastifyReply) => {
        const body = bodyObject(request);
        if (isUuid(body.keypairId)) request.auditKeypairId = body.keypairId;
        const fromQuery = request.query.decryptType;
        if (fromQuery !== undefined && body.decryptType !== undefined && body.decryptType !== null && body.decryptType !== fromQuery) {
          throw lkmErrors.error('KEY_ERR_DECRYPT_TYPE');
        }
        const plaintext = await service.decrypt({
          keypairId: body.keypairId,
          body: body.body,
          decryptType: fromQuery ?? body.decryptType,
        });
        return reply.preventCache().send({ body: plaintext.toString('base64') });
      });

      hawk.options('/decrypt', async () => DECRYPT_OPTIONS);

      hawk.get<{ Querystring: Record<string, string | undefined> }>('/request-log', async (request) => {
        const q = request.query;
        const limit = parseMaxEntries(q.maxEntries);
        const earliest = parseTime('earliestTime', q.earliestTime);
        const latest = parseTime('latestTime', q.latestTime);
        const entries = await opts.requestLog.list({ limit, ...(earliest && { earliest }), ...(latest && { latest }) });
        return entries.map(requestLogView);
      });

      hawk.delete('/request-log', async (request, reply) => {
        const hawkId = request.hawk?.id ?? null;
        const clearedThrough = await opts.requestLog.clear(hawkId, new Date(opts.clock()));
        await app.audit({ event: 'request-log.clear', actor: hawkId ?? 'unknown', detail: { clearedThrough } });
        return reply.code(200).send();
      });
    });
  });
}
