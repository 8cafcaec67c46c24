import { randomUUID } from 'node:crypto';
import { isIP } from 'node:net';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { LogController } from 'fastify';
import fp from 'fastify-plugin';
import type { AuditRecord } from '../src/audit/chain.js';
import { AppError, ERROR_CODE_HEADER, catalogue, type ErrorCode } from '../src/errors.js';

/** Takes a record and resolves once it is durable (the audit writer). */
export interface RequestLogSink {
  record(record: AuditRecord): Promise<void>;
}

export interface RequestLogOptions {
  sink: RequestLogSink;
  /** The face whose requests this scope logs (`lkm`, `admin`, …): GET /request-log shows only `lkm`'s. */
  face: string;
  clock?: () => number;
}

/** Who authenticated a request, for its audit entry. */
export interface AuditPrincipalRef {
  kind: string;
  id: string;
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The keypair a request concerned, for the request log (set by the route). */
    auditKeypairId: string | null;
    /** Who authenticated, when not Hawk (set by the auth plugin, e.g. admin-auth). */
    auditPrincipal: AuditPrincipalRef | null;
  }
  interface FastifyInstance {
    /** Decides which refusals before authentication are written in full (see refusalLog). */
    refusals: RefusalLog;
  }
}

const USER_ID_HEADER = 'purecloud-user-id';
const NO_USER_ID = 'NO-USER-ID';
const MAX_FIELD = 256;

/**
 * Answers that refuse a request before anyone was authenticated: bad or missing credentials,
 * failure limits, and requests too ambiguous to authenticate. A stranger can send these at line
 * rate, so beyond a few per address they are counted, not written one by one.
 */
export const REFUSALS_BEFORE_AUTH: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'HAWK_ERR_UNAUTHORIZED',
  'HAWK_ERR_STALE_TIMESTAMP',
  'HAWK_ERR_TOO_MANY_FAILURES',
  'ADMIN_ERR_UNAUTHORIZED',
  'ADMIN_ERR_TOO_MANY_FAILURES',
  'ADMIN_ERR_DISABLED',
  'REQ_ERR_AMBIGUOUS_REQUEST',
  'REQ_ERR_BAD_CLIENT_ADDRESS',
]);

/**
 * The client address to record: `request.ip` (X-Forwarded-For under TRUST_PROXY) only when it
 * parses as an IP address, else the TCP peer. A forwarded value is never stored unparsed.
 */
export function clientAddress(request: FastifyRequest): string | null {
  const ip = request.ip;
  if (typeof ip === 'string' && isIP(ip) !== 0) return ip;
  return request.raw.socket?.remoteAddress ?? null;
}

const LEVELS: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };

/** Drop a counted refusal's info lines: its logger goes to warn, never lower than it was. */
function quiet(request: FastifyRequest): void {
  if ((LEVELS[request.log.level] ?? Infinity) < LEVELS.warn!) request.log.level = 'warn';
}

const receivedAt = new WeakMap<FastifyRequest, Date>();

function headerValue(value: string | string[] | undefined): string | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  return v === undefined || v === '' ? undefined : v.slice(0, MAX_FIELD);
}

function requestRecord(request: FastifyRequest, reply: FastifyReply, face: string, now: () => Date): AuditRecord {
  const keypairId = request.auditKeypairId === null ? null : request.auditKeypairId.toLowerCase();
  const hawkId = request.hawk?.id ?? null;
  const principal = request.auditPrincipal ?? (hawkId === null ? null : { kind: 'hawk', id: hawkId });
  return {
    uid: randomUUID(),
    loggedAt: receivedAt.get(request) ?? now(),
    userId: headerValue(request.headers[USER_ID_HEADER]) ?? NO_USER_ID,
    method: request.method,
    uri: (request.raw.url ?? request.url).slice(0, 2048),
    hawkId,
    statusCode: reply.statusCode,
    keypairId,
    clientAddress: clientAddress(request),
    event: null,
    actor: null,
    detail: null,
    face,
    principalKind: principal?.kind ?? null,
    principalId: principal?.id ?? null,
    subjectKind: keypairId === null ? null : 'keypair',
    subjectId: keypairId,
  };
}

/**
 * Logs every request that reaches the scope, rejected ones included: the compatible fields
 * (user id claim, method, URI, time) plus the Hawk id, status, keypair and client address.
 * Refusals before authentication beyond the app's sampling budget (see refusalLog) are counted
 * in an `auth.refusals` aggregate instead of written one by one.
 *
 * Vault's rule: the entry is durable (database or spool) before the response leaves, so a
 * request is never served unaudited. The wait is one group commit, shared by every concurrent
 * request. If the entry cannot be kept, the response is replaced by a 503 with Retry-After.
 */
async function requestLog(app: FastifyInstance, opts: RequestLogOptions): Promise<void> {
  const clock = opts.clock ?? Date.now;
  const now = () => new Date(clock());
  app.decorateRequest('auditKeypairId', null);
  app.decorateRequest('auditPrincipal', null);

  app.addHook('onRequest', async (request) => {
    receivedAt.set(request, now());
  });

  app.addHook('onSend', async (request, reply, payload) => {
    if (app.hasDecorator('refusals') && app.refusals.decision(request) === false) return payload;
    try {
      await opts.sink.record(requestRecord(request, reply, opts.face, now));
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

// ---------------------------------------------------------------------------------------------
// Refusals before authentication: the first few per address and window in full, the rest counted.
// ---------------------------------------------------------------------------------------------

/** The budget of refusals written in full; the rest are counted per address and window. */
export interface RefusalSamplingSettings {
  /** Refusals per client address and window written in full (default 10). */
  perAddress?: number;
  /** Refusals per window written in full, all addresses together (default 1,000). */
  perWindow?: number;
  /** Fixed windows of this length (default 60 s). */
  windowMs?: number;
  /** Addresses counted one by one per window (default 10,000); the rest are summed as "other". */
  maxAddresses?: number;
  /** Addresses named in one aggregate, the most refused first (default 100). */
  maxListed?: number;
}

/** One window's refusals that were counted instead of written: the `auth.refusals` detail. */
export interface RefusalAggregate {
  windowStart: string;
  windowEnd: string;
  /** Refusals counted (not written in full) in the window. */
  counted: number;
  /** The most refused addresses and how many of their refusals were counted. */
  addresses: { address: string; count: number }[];
  /** Further addresses, and their counted refusals, not listed one by one. */
  otherAddresses: number;
  otherCount: number;
}

interface WindowState {
  start: number;
  full: number;
  counted: number;
  perAddress: Map<string, { full: number; counted: number }>;
  overflow: number;
}

/**
 * Fixed-window sampler: admits the first `perAddress` refusals of each address (and at most
 * `perWindow` in all) per window, counts the others. Memory: at most `maxAddresses` entries.
 */
export class RefusalSampler {
  readonly #perAddress: number;
  readonly #perWindow: number;
  readonly #windowMs: number;
  readonly #maxAddresses: number;
  readonly #maxListed: number;
  readonly #clock: () => number;
  #current: WindowState;
  #done: RefusalAggregate[] = [];

  constructor(opts: RefusalSamplingSettings & { clock?: () => number } = {}) {
    this.#perAddress = opts.perAddress ?? 10;
    this.#perWindow = opts.perWindow ?? 1_000;
    this.#windowMs = opts.windowMs ?? 60_000;
    this.#maxAddresses = opts.maxAddresses ?? 10_000;
    this.#maxListed = opts.maxListed ?? 100;
    this.#clock = opts.clock ?? Date.now;
    this.#current = this.#fresh(this.#clock());
  }

  #fresh(now: number): WindowState {
    return { start: now - (now % this.#windowMs), full: 0, counted: 0, perAddress: new Map(), overflow: 0 };
  }

  #rotate(now: number): void {
    if (now < this.#current.start + this.#windowMs) return;
    this.#close();
    this.#current = this.#fresh(now);
  }

  /** Turn the current window's counts into an aggregate (when anything was counted). */
  #close(): void {
    const w = this.#current;
    if (w.counted === 0) return;
    const counted = [...w.perAddress].filter(([, c]) => c.counted > 0).sort((a, b) => b[1].counted - a[1].counted);
    const listed = counted.slice(0, this.#maxListed);
    const rest = counted.slice(this.#maxListed);
    this.#done.push({
      windowStart: new Date(w.start).toISOString(),
      windowEnd: new Date(w.start + this.#windowMs).toISOString(),
      counted: w.counted,
      addresses: listed.map(([address, c]) => ({ address, count: c.counted })),
      otherAddresses: rest.length + (w.overflow > 0 ? 1 : 0),
      otherCount: rest.reduce((n, [, c]) => n + c.counted, 0) + w.overflow,
    });
  }

  /** True: write this refusal in full. False: it was counted. */
  admit(address: string | null): boolean {
    this.#rotate(this.#clock());
    const w = this.#current;
    const key = address ?? 'unknown';
    let entry = w.perAddress.get(key);
    if (!entry) {
      if (w.perAddress.size >= this.#maxAddresses) {
        w.counted++;
        w.overflow++;
        return false;
      }
      entry = { full: 0, counted: 0 };
      w.perAddress.set(key, entry);
    }
    if (entry.full < this.#perAddress && w.full < this.#perWindow) {
      entry.full++;
      w.full++;
      return true;
    }
    entry.counted++;
    w.counted++;
    return false;
  }

  /** Aggregates of finished windows (and of the current one when `all`), each handed out once. */
  take(all = false): RefusalAggregate[] {
    const now = this.#clock();
    this.#rotate(now);
    if (all) {
      this.#close();
      this.#current = this.#fresh(now);
    }
    const out = this.#done;
    this.#done = [];
    return out;
  }
}

export interface RefusalLogOptions extends RefusalSamplingSettings {
  clock?: () => number;
  /** How often finished windows are written (default 10 s). */
  flushIntervalMs?: number;
}

/** The app's refusal sampler, one decision per request. */
export interface RefusalLog {
  /** Decide (once) whether this refused request is written in full; true when it is. */
  decide(request: FastifyRequest): boolean;
  /** The decision made for this request; undefined when it was not a refusal before authentication. */
  decision(request: FastifyRequest): boolean | undefined;
  /** A refusal outside any route (Node's or the router's parsers): an audit entry when admitted (true). */
  recordUnrouted(record: AuditRecord): boolean;
  /** Write the aggregates due now (all of them when `all`); resolves once they are durable. */
  flush(all?: boolean): Promise<void>;
}

/**
 * Bounds what strangers cost: a refusal before authentication (REFUSALS_BEFORE_AUTH) is written
 * in full, as an audit entry and a log line, only within the sampling budget (10 per address
 * and 1,000 in all per minute by default); the others are counted per address and window and
 * written as one `auth.refusals` audit event per window (and one warn line), so the request log
 * grows by at most perWindow + 1 rows per window however many refusals arrive. Register after
 * the audit plugin (its onClose then flushes before the writer closes).
 */
async function refusalLog(app: FastifyInstance, opts: RefusalLogOptions): Promise<void> {
  const sampler = new RefusalSampler(opts);
  const decisions = new WeakMap<FastifyRequest, boolean>();

  const write = async (aggregates: RefusalAggregate[]) => {
    for (const aggregate of aggregates) {
      app.log.warn(
        { windowStart: aggregate.windowStart, counted: aggregate.counted, addresses: aggregate.addresses.slice(0, 5) },
        'refusals before authentication counted, not logged one by one',
      );
      try {
        await app.audit({ event: 'auth.refusals', actor: 'system', detail: { ...aggregate } });
      } catch (err) {
        app.log.error({ err, counted: aggregate.counted }, 'the auth.refusals aggregate could not be audited');
      }
    }
  };

  const refusals: RefusalLog = {
    decide(request) {
      let admitted = decisions.get(request);
      if (admitted === undefined) {
        admitted = sampler.admit(clientAddress(request));
        decisions.set(request, admitted);
      }
      return admitted;
    },
    decision: (request) => decisions.get(request),
    recordUnrouted(record) {
      if (!sampler.admit(record.clientAddress)) return false;
      app.auditWriter.record(record).catch((err) => app.log.error({ err }, 'a refusal could not be audited'));
      return true;
    },
    flush: (all = false) => write(sampler.take(all)),
  };
  app.decorate('refusals', refusals);

  app.addHook('onError', async (request, _reply, err: FastifyError) => {
    const code = (err as { code?: string }).code as ErrorCode;
    if (!REFUSALS_BEFORE_AUTH.has(code) || request.hawk) return;
    // Counted, not written: its info lines (the refusal, the completion) are dropped too.
    if (!refusals.decide(request)) quiet(request);
  });

  const timer = setInterval(() => void refusals.flush(), opts.flushIntervalMs ?? 10_000);
  timer.unref();
  app.addHook('onClose', async () => {
    clearInterval(timer);
    await refusals.flush(true);
  });
}

export const refusalLogPlugin = fp(refusalLog, { name: 'refusal-log', fastify: '5.x', dependencies: ['audit'] });

/**
 * One log line per request, written when it completes (method, URL, status, time), instead of
 * Fastify's two: the "incoming request" line of a refusal cannot yet know whether the refusal
 * will be counted rather than logged.
 */
export class RequestLogController extends LogController {
  override incomingRequest(): void {}

  override requestCompleted(error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply): void {
    if (error) reply.log.error({ req: request, res: reply, err: error, responseTime: reply.elapsedTime }, 'request errored');
    else reply.log.info({ req: request, res: reply, responseTime: reply.elapsedTime }, 'request completed');
  }
}

/**
 * Audit a request refused before routing (Fastify's frameworkErrors: a path that does not
 * decode, a parameter over the router's limit) as a `request.refused` event, sampled like every
 * refusal before authentication. When it is only counted, its info log lines are dropped.
 */
export function auditRefusedBeforeRouting(request: FastifyRequest, status: number, code: ErrorCode): void {
  const app = request.server;
  if (!app?.hasDecorator('refusals')) return;
  const record: AuditRecord = {
    uid: randomUUID(),
    loggedAt: new Date(),
    userId: headerValue(request.headers[USER_ID_HEADER]) ?? NO_USER_ID,
    method: request.method,
    uri: (request.raw.url ?? request.url).slice(0, 2048),
    hawkId: null,
    statusCode: status,
    keypairId: null,
    clientAddress: clientAddress(request),
    event: 'request.refused',
    actor: 'unauthenticated',
    detail: { code },
    // Refused before any route: no face's scope saw it.
    face: 'core',
    principalKind: null,
    principalId: null,
    subjectKind: null,
    subjectId: null,
  };
  if (!app.refusals.recordUnrouted(record)) quiet(request);
}
