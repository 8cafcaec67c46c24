import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import type { RecordAuditEvent } from '../src/audit/events.js';
import { AuditSpool } from '../src/audit/spool.js';
import { trimChain } from '../src/audit/store.js';
import { AuditWriter } from '../src/audit/writer.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** The group-committing writer behind `audit` and the request log. */
    auditWriter: AuditWriter;
  }
}

export interface AuditPluginOptions {
  /** Directory of the local spool (fsync'd) used while the database cannot take entries. */
  spoolDir: string;
  /** Remove entries older than this many days, leaving a chain anchor; 0 keeps everything. */
  retentionDays: number;
  /** Cap of the spool file (and of the quarantine file) in bytes; reached, requests get 503. */
  spoolMaxBytes?: number;
  clock?: () => number;
  /** Spool replay retry interval (tests shorten it). */
  retryMs?: number;
}

const DAY_MS = 86_400_000;
const RETENTION_INTERVAL_MS = 3_600_000;

/**
 * The audit trail: decorates `app.audit` (events) and `app.auditWriter` (request entries), both
 * feeding one hash chain in the request_log table. Depends on `db`; flushes pending entries in
 * onClose, which runs before the database's own onClose (hooks close in reverse order).
 */
async function auditPlugin(app: FastifyInstance, opts: AuditPluginOptions): Promise<void> {
  const clock = opts.clock ?? Date.now;
  const writer = new AuditWriter({
    db: app.db,
    spool: new AuditSpool(opts.spoolDir, opts.spoolMaxBytes === undefined ? {} : { maxBytes: opts.spoolMaxBytes }),
    log: app.log,
    clock,
    ...(opts.retryMs !== undefined && { retryMs: opts.retryMs }),
  });
  writer.start();
  const audit: RecordAuditEvent = (event) => writer.recordEvent(event);
  app.decorate('auditWriter', writer);
  app.decorate('audit', audit);

  if (opts.retentionDays > 0) {
    const trim = async () => {
      try {
        const anchor = await trimChain(app.db, new Date(clock() - opts.retentionDays * DAY_MS));
        if (anchor) {
          app.log.info({ throughSeq: anchor.seq, removed: anchor.removed }, 'audit retention removed old entries');
          await audit({
            event: 'audit.retention',
            actor: 'system',
            detail: { throughSeq: anchor.seq, hash: anchor.hash.toString('hex'), removed: anchor.removed },
          });
        }
      } catch (err) {
        app.log.warn({ err }, 'audit retention did not run; retrying later');
      }
    };
    const timer = setInterval(() => void trim(), RETENTION_INTERVAL_MS);
    timer.unref();
    app.addHook('onReady', async () => void trim());
    app.addHook('onClose', async () => clearInterval(timer));
  }

  app.addHook('onClose', async () => {
    await writer.close();
  });
}

export default fp(auditPlugin, { name: 'audit', fastify: '5.x', dependencies: ['db'] });
