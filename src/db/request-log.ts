import { createHash, randomUUID } from 'node:crypto';
import { appendRecords } from '../audit/store.js';
import { toNumber, type Database, type Queryable } from './database.js';

/** The face whose requests GET /request-log shows. */
const LKM_FACE = 'lkm';

export interface RequestLogEntry {
  /** The caller's claim from `PureCloud-User-Id` (not covered by the Hawk MAC). */
  userId: string;
  method: string;
  uri: string;
  loggedAt: Date;
  /** The authenticated Hawk id, or null when authentication failed or was not Hawk. */
  hawkId: string | null;
  statusCode: number;
  keypairId: string | null;
  clientAddress: string | null;
}

export interface LoggedRequest {
  /** The row id; GET /request-log shows it as requestLogUuid(id). */
  id: number;
  userId: string;
  requestUri: string;
  requestMethod: string;
  loggedAt: Date;
}

export interface RequestLogQuery {
  limit: number;
  earliest?: Date;
  latest?: Date;
}

interface Raw {
  id: unknown;
  user_id: string;
  request_uri: string;
  request_method: string;
  logged_at: Date;
}

/** Namespace of the name-based UUIDs of request-log entries (RFC 9562 §5.5). */
const REQUEST_LOG_NAMESPACE = Buffer.from('a09ca54e0e87410bae8521ec4878d809', 'hex');

/**
 * The UUID shown for request-log row `id`: version 5 (SHA-1, RFC 9562 §5.5) over a fixed
 * namespace and the decimal row id. Deterministic, so an entry keeps its id across calls and
 * instances, and nothing is stored: the hashed audit rows stay as they are.
 */
export function requestLogUuid(id: number): string {
  const b = createHash('sha1').update(REQUEST_LOG_NAMESPACE).update(String(id), 'utf8').digest().subarray(0, 16);
  b[6] = (b[6]! & 0x0f) | 0x50;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export class RequestLogRepository {
  readonly #db: Queryable;

  constructor(db: Queryable) {
    this.#db = db;
  }

  /**
   * Append one LKM request entry to the audit chain directly (the service goes through the
   * batching AuditWriter instead; this serves tools and tests).
   */
  async insert(e: RequestLogEntry): Promise<void> {
    const db = this.#db as Partial<Database>;
    if (typeof db.transaction !== 'function') throw new TypeError('RequestLogRepository.insert needs a Database, not a transaction');
    const keypairId = e.keypairId === null ? null : e.keypairId.toLowerCase();
    await appendRecords(db as Database, [
      {
        uid: randomUUID(),
        loggedAt: e.loggedAt,
        userId: e.userId,
        method: e.method,
        uri: e.uri,
        hawkId: e.hawkId,
        statusCode: e.statusCode,
        keypairId,
        clientAddress: e.clientAddress,
        event: null,
        actor: null,
        detail: null,
        face: LKM_FACE,
        principalKind: e.hawkId === null ? null : 'hawk',
        principalId: e.hawkId,
        subjectKind: keypairId === null ? null : 'keypair',
        subjectId: keypairId,
      },
    ]);
  }

  /**
   * Visible entries, newest first: LKM requests after the latest clear. Audited events are not
   * requests, and other faces' requests (admin API, later JOSE, signing, console) are not the
   * LKM's; rows from before audit v2 (face NULL) show as before, by having no event. The clear boundary is read first and passed as a value, so the planner sees it and
   * picks the logged_at index (many visible rows) or the primary key (few) instead of guessing.
   */
  async list(q: RequestLogQuery): Promise<LoggedRequest[]> {
    const boundary = await this.#db.query<{ through: unknown }>(
      'SELECT COALESCE(max(cleared_through), 0) AS through FROM request_log_clear',
    );
    const params: unknown[] = [toNumber(boundary.rows[0]?.through ?? 0)];
    const where = ['id > $1', 'event IS NULL', `(face = '${LKM_FACE}' OR face IS NULL)`];
    if (q.earliest) {
      params.push(q.earliest);
      where.push(`logged_at >= $${params.length}`);
    }
    if (q.latest) {
      params.push(q.latest);
      where.push(`logged_at <= $${params.length}`);
    }
    params.push(q.limit);
    const { rows } = await this.#db.query<Raw>(
      `SELECT id, user_id, request_uri, request_method, logged_at FROM request_log
       WHERE ${where.join(' AND ')}
       ORDER BY logged_at DESC, id DESC
       LIMIT $${params.length}`,
      params,
    );
    return rows.map((r) => ({
      id: toNumber(r.id),
      userId: r.user_id,
      requestUri: r.request_uri,
      requestMethod: r.request_method,
      loggedAt: r.logged_at,
    }));
  }

  /** Hide every entry logged so far from `list`; nothing is destroyed. Returns the last hidden id. */
  async clear(hawkId: string | null, now: Date): Promise<number> {
    const { rows } = await this.#db.query<{ cleared_through: unknown }>(
      `INSERT INTO request_log_clear (cleared_through, cleared_at, hawk_id)
       SELECT COALESCE(max(id), 0), $1, $2 FROM request_log
       RETURNING cleared_through`,
      [now, hawkId],
    );
    return toNumber(rows[0]?.cleared_through ?? 0);
  }
}
