import { toNumber, type Queryable } from './database.js';

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

export class RequestLogRepository {
  readonly #db: Queryable;

  constructor(db: Queryable) {
    this.#db = db;
  }

  async insert(e: RequestLogEntry): Promise<void> {
    await this.#db.query(
      `INSERT INTO request_log
         (user_id, request_method, request_uri, logged_at, hawk_id, status_code, keypair_id, client_address)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
      [e.userId, e.method, e.uri, e.loggedAt, e.hawkId, e.statusCode, e.keypairId, e.clientAddress],
    );
  }

  /** Visible entries (those after the latest clear), newest first. */
  async list(q: RequestLogQuery): Promise<LoggedRequest[]> {
    const params: unknown[] = [];
    const where = ['id > (SELECT COALESCE(max(cleared_through), 0) FROM request_log_clear)'];
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

  /** Hide every entry logged so far from `list`; nothing is destroyed. */
  async clear(hawkId: string | null, now: Date): Promise<void> {
    await this.#db.query(
      `INSERT INTO request_log_clear (cleared_through, cleared_at, hawk_id)
       SELECT COALESCE(max(id), 0), $1, $2 FROM request_log`,
      [now, hawkId],
    );
  }
}
