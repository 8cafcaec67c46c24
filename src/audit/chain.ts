import { createHash } from 'node:crypto';

/**
 * One entry of the audit chain: an HTTP request (the request-log fields) or an event (key state
 * change, credential change, log clear). Both kinds share one hash chain.
 */
export interface AuditRecord {
  /** Unique id given when the entry is made: a spooled entry replayed twice lands once. */
  uid: string;
  loggedAt: Date;
  /** The caller's `PureCloud-User-Id` claim (requests only). */
  userId: string | null;
  method: string | null;
  uri: string | null;
  hawkId: string | null;
  statusCode: number | null;
  keypairId: string | null;
  clientAddress: string | null;
  /** Dotted event name; null for a request. */
  event: string | null;
  /** Who did an event: a Hawk id, `admin`, `cli:<user>`, `system`. */
  actor: string | null;
  detail: Record<string, unknown> | null;
}

/** A record with its place in the chain. */
export interface ChainedRecord extends AuditRecord {
  /** The row id (what GET /request-log shows), allocated before hashing so it is covered too. */
  id: number;
  seq: number;
  prevHash: Buffer;
  hash: Buffer;
}

/** Version tag of the canonical encoding, hashed too: a future format cannot be confused with this one. */
const ENCODING = 'strongroom-audit-v1';

/** The previous hash of the first entry of a chain that has never been trimmed. */
export const GENESIS_HASH: Buffer = Buffer.alloc(32);

/** JSON with object keys sorted at every level: the same value always encodes to the same bytes. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value ?? null);
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj)
    .filter((k) => obj[k] !== undefined)
    .sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`;
}

/**
 * SHA-256 over a canonical encoding of every field, the position (seq and row id) and the
 * previous hash. Times
 * are hashed at millisecond precision (what JavaScript and the log keep).
 */
export function hashRecord(record: AuditRecord, seq: number, id: number, prevHash: Buffer): Buffer {
  const fields = [
    ENCODING,
    seq,
    id,
    record.uid,
    record.loggedAt.toISOString(),
    record.userId,
    record.method,
    record.uri,
    record.hawkId,
    record.statusCode,
    record.keypairId,
    record.clientAddress,
    record.event,
    record.actor,
    record.detail === null ? null : canonicalJson(record.detail),
    prevHash.toString('hex'),
  ];
  return createHash('sha256').update(JSON.stringify(fields)).digest();
}
