import { randomUUID } from 'node:crypto';
import { sqlState, type Database } from '../db/database.js';
import { DatabaseUnavailableError } from '../db/unavailable.js';
import { AppError } from '../errors.js';
import type { AuditRecord } from './chain.js';
import { faceOf, principalOf, type AuditEvent } from './events.js';
import type { AuditSpool } from './spool.js';
import { appendRecords } from './store.js';

/** Where the writer reports what an operator must know (a pino logger fits). */
export interface AuditLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface AuditWriterOptions {
  db: Database;
  /** Where entries go while the database cannot take them; without one, such entries are refused. */
  spool?: AuditSpool;
  log?: AuditLogger;
  /** How often a waiting spool is offered to the database again. */
  retryMs?: number;
  /** Entries written in one transaction at most. */
  maxBatch?: number;
  clock?: () => number;
}

/** Seconds a client should wait when an entry could be neither written nor spooled. */
const RETRY_AFTER_SECONDS = '5';
const REPLAY_CHUNK = 1000;
/** The event recorded when an entry is quarantined (src/audit/spool.ts keeps the entry). */
export const QUARANTINE_EVENT = 'audit.quarantine';

interface Waiting {
  record: AuditRecord;
  resolve: () => void;
  reject: (err: unknown) => void;
}

const silent: AuditLogger = { info() {}, warn() {}, error() {} };

/** What an event concerned: its own subject, else its keypair, else the credential a `credential.*` event names. */
function subjectOf(event: AuditEvent, keypairId: string | null): { kind: string; id: string } | null {
  if (event.subject) return event.subject;
  if (keypairId) return { kind: 'keypair', id: keypairId };
  const id = event.detail?.id;
  if (event.event.startsWith('credential.') && typeof id === 'string') return { kind: 'credential', id };
  return null;
}

/** An event as a chain record with a fresh uid, its face, principal and subject filled in. */
export function eventRecord(event: AuditEvent, at: Date): AuditRecord {
  const keypairId = event.keypairId ? event.keypairId.toLowerCase() : null;
  const principal = principalOf(event.actor);
  const subject = subjectOf(event, keypairId);
  return {
    uid: randomUUID(),
    loggedAt: at,
    userId: null,
    method: null,
    uri: null,
    hawkId: null,
    statusCode: null,
    keypairId,
    clientAddress: null,
    event: event.event,
    actor: event.actor,
    detail: event.detail ?? null,
    face: event.face ?? faceOf(principal),
    principalKind: principal?.kind ?? null,
    principalId: principal?.id ?? null,
    subjectKind: subject?.kind ?? null,
    subjectId: subject?.id ?? null,
  };
}

/**
 * Writes audit records with group commit: records that arrive while a transaction is in flight
 * share the next one, so throughput is not bounded by commit latency and each caller waits
 * about one batch. A record's promise resolves only once it is durable, in the database or in
 * the fsync'd spool, and rejects (AUDIT_ERR_UNAVAILABLE) when neither could take it.
 *
 * Once anything is spooled, later records are spooled behind it until a replayer has moved the
 * whole spool into the database, so the chain keeps the order in which records were made.
 */
export class AuditWriter {
  readonly #db: Database;
  readonly #spool: AuditSpool | undefined;
  readonly #log: AuditLogger;
  readonly #retryMs: number;
  readonly #maxBatch: number;
  readonly #clock: () => number;
  #queue: Waiting[] = [];
  #running: Promise<void> | undefined;
  #spooling = false;
  #replaying: Promise<void> | undefined;
  /** Serialises spool appends with the replayer's final check-and-remove. */
  #spoolTurn: Promise<unknown> = Promise.resolve();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(options: AuditWriterOptions) {
    this.#db = options.db;
    this.#spool = options.spool;
    this.#log = options.log ?? silent;
    this.#retryMs = options.retryMs ?? 2_000;
    this.#maxBatch = options.maxBatch ?? 500;
    this.#clock = options.clock ?? Date.now;
  }

  /** Take the spool slot and replay what a previous run left; then keep retrying while spooling. */
  start(): void {
    if (this.#spool) {
      try {
        this.#spool.acquire();
        if (this.#spool.pending()) {
          this.#spooling = true;
          this.#log.warn({ spool: this.#spool.path }, 'audit entries wait in the spool; replaying them');
        }
      } catch (err) {
        this.#log.error({ err }, 'audit spool is not usable; entries the database cannot take will be refused');
      }
    }
    this.#timer = setInterval(() => {
      if (this.#spooling) void this.replay();
    }, this.#retryMs);
    this.#timer.unref();
    if (this.#spooling) void this.replay();
  }

  /** True while entries are being spooled instead of written to the database. */
  get spooling(): boolean {
    return this.#spooling;
  }

  /** Durably record one entry (see the class comment). */
  record(record: AuditRecord): Promise<void> {
    if (this.#closed) return Promise.reject(unavailable('audit writer is closed'));
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ record, resolve, reject });
      this.#running ??= this.#drain();
    });
  }

  /** Durably record an event (key state change, credential change, log clear). */
  recordEvent(event: AuditEvent): Promise<void> {
    return this.record(eventRecord(event, new Date(this.#clock())));
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.splice(0, this.#maxBatch);
        const records = batch.map((w) => w.record);
        try {
          await this.#write(records);
          for (const w of batch) w.resolve();
        } catch (err) {
          for (const w of batch) w.reject(err);
        }
      }
    } finally {
      // Cleared in the same tick as the last empty-queue check: a record() arriving after it
      // starts a new drain instead of waiting on one that has finished.
      this.#running = undefined;
    }
  }

  async #write(batch: AuditRecord[]): Promise<void> {
    let records = batch;
    if (!this.#spooling) {
      try {
        await appendRecords(this.#db, records);
        return;
      } catch (err) {
        if (!this.#spool) throw unavailable('the audit log cannot be written', err);
        if (err instanceof DatabaseUnavailableError) {
          this.#log.warn({ err, entries: records.length }, 'audit entries could not be written to the database; spooling them');
        } else {
          // Not an outage: the database refused something in the batch. Retrying the batch would
          // fail the same way forever; write the records one by one and quarantine the refused.
          records = await this.#isolate(records);
          if (records.length === 0) return;
          this.#log.warn({ entries: records.length }, 'the database became unavailable while a refused batch was isolated; spooling the rest');
        }
      }
    }
    await this.#appendToSpool(records);
  }

  /**
   * Append `records` one at a time; a record the database refuses (any error but unavailability)
   * is quarantined and the others go on. Returns the records not written because the database
   * became unavailable meanwhile (from the first such record on, in order).
   */
  async #isolate(records: readonly AuditRecord[]): Promise<AuditRecord[]> {
    for (let i = 0; i < records.length; i += 1) {
      const record = records[i] as AuditRecord;
      try {
        await appendRecords(this.#db, [record]);
      } catch (err) {
        if (err instanceof DatabaseUnavailableError) return records.slice(i);
        await this.#quarantine(record, err);
      }
    }
    return [];
  }

  /** Keep a refused record in the spool's quarantine file, say so loudly, and audit that it happened. */
  async #quarantine(record: AuditRecord, err: unknown): Promise<void> {
    const spool = this.#spool as AuditSpool;
    const reason = { name: err instanceof Error ? err.name : 'Error', code: sqlState(err) ?? null };
    let file: string;
    try {
      file = await spool.quarantine(record, reason);
    } catch (qErr) {
      this.#log.error({ err: qErr, uid: record.uid }, 'an audit entry the database refused could not be quarantined either; refusing');
      throw unavailable('the audit entry could be neither written nor quarantined', qErr);
    }
    this.#log.error(
      { err, uid: record.uid, sqlState: reason.code, file },
      'AUDIT ENTRY QUARANTINED: the database refused it; it is kept in the quarantine file, the other entries go on',
    );
    // A refused quarantine event is quarantined without another event: no loop when every insert fails.
    if (record.event === QUARANTINE_EVENT) return;
    // Queued, not awaited: this runs inside the drain that will write it.
    this.record(
      eventRecord(
        { event: QUARANTINE_EVENT, actor: 'system', detail: { uid: record.uid, sqlState: reason.code, error: reason.name, file } },
        new Date(this.#clock()),
      ),
    ).catch((qErr: unknown) => this.#log.error({ err: qErr, uid: record.uid }, 'the audit.quarantine event could not be kept'));
  }

  #appendToSpool(records: AuditRecord[]): Promise<void> {
    const spool = this.#spool;
    if (!spool) return Promise.reject(unavailable('the audit log cannot be written'));
    const turn = this.#spoolTurn.then(async () => {
      try {
        await spool.append(records);
      } catch (err) {
        this.#log.error({ err, entries: records.length }, 'audit entries could be neither written nor spooled; refusing');
        throw unavailable('the audit log and its spool cannot be written', err);
      }
      this.#spooling = true;
    });
    this.#spoolTurn = turn.catch(() => undefined);
    return turn;
  }

  /** Move spooled entries into the database, in order; resolves when done or when it must wait. */
  replay(): Promise<void> {
    const spool = this.#spool;
    if (!spool) return Promise.resolve();
    this.#replaying ??= (async () => {
      let moved = 0;
      try {
        for (;;) {
          const chunk = await spool.next(REPLAY_CHUNK);
          if (chunk) {
            // Duplicates (a crash after a commit, before the offset moved) are skipped by uid.
            try {
              await appendRecords(this.#db, chunk.records);
            } catch (err) {
              if (err instanceof DatabaseUnavailableError) throw err;
              // A refused record must not hold the spool up forever: isolate it (see #write).
              if ((await this.#isolate(chunk.records)).length > 0) throw new DatabaseUnavailableError('database unavailable');
            }
            chunk.done();
            moved += chunk.records.length;
            continue;
          }
          const settled = this.#spoolTurn.then(async () => {
            if (!(await spool.settle())) return false;
            this.#spooling = false;
            return true;
          });
          this.#spoolTurn = settled.catch(() => undefined);
          if (await settled) break;
        }
        if (moved > 0) this.#log.info({ entries: moved }, 'spooled audit entries replayed into the database');
      } catch (err) {
        this.#log.warn({ err, replayed: moved }, 'audit spool replay paused; the database is unavailable');
      } finally {
        this.#replaying = undefined;
      }
    })();
    return this.#replaying;
  }

  /** Resolves once every record handed in so far is durable (or refused). */
  async flush(): Promise<void> {
    while (this.#running) await this.#running;
    await this.#spoolTurn;
  }

  /** Flush, try one last replay, and release the spool (what is left is replayed at next start). */
  async close(): Promise<void> {
    await this.flush();
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    if (this.#spooling) await this.replay();
    await this.#replaying;
    await this.#spool?.close();
  }
}

function unavailable(detail: string, cause?: unknown): AppError {
  return new AppError('AUDIT_ERR_UNAVAILABLE', {
    detail,
    cause,
    headers: { 'retry-after': RETRY_AFTER_SECONDS },
  });
}
