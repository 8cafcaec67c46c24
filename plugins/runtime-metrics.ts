import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { FastifyInstance } from 'fastify';
import type { KeyStore, KeyStoreStats } from '../hsm/index.js';
import type { Secret } from '../src/secret.js';
import adminAuth from './admin-auth.js';
import requestLog from './request-log.js';

export interface RuntimeMetricsOptions {
  /** ADMIN_TOKEN: the figures are for operators and the benchmark, not for Hawk callers. */
  adminToken: Secret | undefined;
  keyStore: KeyStore;
  /**
   * Sections faces add (read on every call), e.g. the LKM's `hawk`: `pathOnlyMac` counts requests
   * per credential whose MAC left the query string out, since start.
   */
  figures: ReadonlyMap<string, () => unknown>;
}

/** What GET /runtime answers. Event-loop delay covers the time since start or the last reset. */
export interface RuntimeSnapshot {
  rssBytes: number;
  heapUsedBytes: number;
  eventLoopDelayMs: { p50: number; p99: number; max: number; mean: number; samples: number };
  /** Epoch ms when the event-loop delay window began. */
  since: number;
  keyStore: KeyStoreStats;
  /** The faces' sections (`hawk` from the LKM). */
  [section: string]: unknown;
}

/** Sampling interval of the event-loop delay histogram. */
const RESOLUTION_MS = 10;

/**
 * The histogram records each sample's whole interval (an idle loop reads 10.1 ms at a 10 ms
 * resolution), so the delay is what exceeds the resolution.
 */
const ms = (ns: number) => (Number.isFinite(ns) ? Math.max(0, Math.round((ns - RESOLUTION_MS * 1e6) / 1e3) / 1e3) : 0);

/**
 * `GET /runtime` (memory, event-loop delay p50/p99/max, key store counters) and
 * `POST /runtime/reset` (start a new event-loop delay window), both admin only and
 * request-logged (a wrong admin token here is audited like anywhere else).
 */
export async function runtimeMetrics(app: FastifyInstance, opts: RuntimeMetricsOptions): Promise<void> {
  const delay = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  delay.enable();
  let since = Date.now();
  app.addHook('onClose', async () => delay.disable());
  await app.register(requestLog, { sink: app.auditWriter, face: 'admin' });
  await app.register(adminAuth, { token: opts.adminToken });

  app.get('/runtime', async (): Promise<RuntimeSnapshot> => {
    const memory = process.memoryUsage();
    return {
      rssBytes: memory.rss,
      heapUsedBytes: memory.heapUsed,
      eventLoopDelayMs: {
        p50: ms(delay.percentile(50)),
        p99: ms(delay.percentile(99)),
        max: ms(delay.max),
        mean: ms(delay.mean),
        samples: delay.count,
      },
      since,
      keyStore: opts.keyStore.stats(),
      ...Object.fromEntries([...opts.figures].map(([name, read]) => [name, read()])),
    };
  });

  app.post('/runtime/reset', async () => {
    delay.reset();
    since = Date.now();
    return { since };
  });
}
