import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import type { KeyStore } from '../hsm/index.js';
import type { Queryable } from '../src/db/database.js';

export interface ReadyOptions {
  db: Queryable;
  keyStore: KeyStore;
  /** Longest wait for each check (default 2 s): a hung dependency makes the answer "failed", not slow. */
  timeoutMs?: number;
  /** How long one round of checks answers every caller (default 1 s). */
  cacheMs?: number;
  /** Checks faces add, by name (read at each round): resolve = ok. */
  extraChecks?: ReadonlyMap<string, () => Promise<unknown>>;
}

export type CheckResult = 'ok' | 'failed' | 'timeout';

export interface Readiness {
  status: 'ready' | 'unavailable' | 'shutting-down';
  /** The core's three, then each face's under its own name. */
  checks: { database: CheckResult; token: CheckResult; canary: CheckResult; [face: string]: CheckResult };
}

/** AES-GCM associated data of the canary round trip: never a valid credential context. */
const CANARY_CONTEXT = 'strongroom:readiness-canary';

async function check(fn: () => Promise<unknown>, timeoutMs: number): Promise<CheckResult> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<CheckResult>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  try {
    return await Promise.race([fn().then((): CheckResult => 'ok', (): CheckResult => 'failed'), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * GET /ready: may this instance take traffic? Unlike /health (liveness, always `OK` while the
 * process runs) it checks the database (`SELECT 1`), the token login (a pooled session is
 * logged in), a canary operation (seal and open a random value with the token's secrets
 * key) and each check a face added (`CoreContext.addReadinessCheck`). 200 when all pass; 503 naming what failed, and during shutdown so balancers drain.
 * Unauthenticated: it answers no more than which dependency is down, and one round of checks
 * (one canary seal and open) serves every caller for `cacheMs`, concurrent ones included, so
 * calling it in a loop cannot take token sessions away from decrypts.
 */
export default async function ready(app: FastifyInstance, opts: ReadyOptions): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 2_000;
  const cacheMs = opts.cacheMs ?? 1_000;
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });

  const canary = async () => {
    const value = randomBytes(16);
    const opened = await opts.keyStore.openSecret(await opts.keyStore.sealSecret(value, CANARY_CONTEXT), CANARY_CONTEXT);
    if (opened.length !== value.length || !timingSafeEqual(opened, value)) throw new Error('canary round trip differs');
  };

  const runChecks = async (): Promise<Readiness['checks']> => {
    const extra = [...(opts.extraChecks ?? [])];
    const [database, token, canaryResult, ...others] = await Promise.all([
      check(() => opts.db.query('SELECT 1'), timeoutMs),
      check(() => opts.keyStore.checkLogin(), timeoutMs),
      check(canary, timeoutMs),
      ...extra.map(([, fn]) => check(fn, timeoutMs)),
    ]);
    return { database, token, canary: canaryResult, ...Object.fromEntries(extra.map(([name], i) => [name, others[i] as CheckResult])) };
  };
  // The round in flight, or the last one: reused until `cacheMs` after it settles.
  let last: { checks: Promise<Readiness['checks']>; settledAt: number | undefined } | undefined;
  const checksNow = (): Promise<Readiness['checks']> => {
    const now = Date.now();
    if (last && (last.settledAt === undefined || now - last.settledAt < cacheMs)) return last.checks;
    const entry: { checks: Promise<Readiness['checks']>; settledAt: number | undefined } = {
      checks: runChecks().finally(() => {
        entry.settledAt = Date.now();
      }),
      settledAt: undefined,
    };
    last = entry;
    return entry.checks;
  };

  app.get('/ready', async (request, reply) => {
    const checks = await checksNow();
    const ok = Object.values(checks).every((c) => c === 'ok');
    const status: Readiness['status'] = closing ? 'shutting-down' : ok ? 'ready' : 'unavailable';
    if (status !== 'ready') request.log.warn({ checks, status }, 'not ready');
    const body: Readiness = { status, checks };
    reply.header('cache-control', 'no-store');
    if (status !== 'ready') reply.code(503).header('retry-after', '5');
    return body;
  });
}
