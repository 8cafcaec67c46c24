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
  /** The face the entry belongs to: `lkm`, `admin`, `cli`, `core` (later `jose`, `signing`, `console`). */
  face: string | null;
  /** Who acted: `hawk` (Hawk id), `admin-token`, `cli` (`cli:<os user>`), `system`; null when nobody authenticated. */
  principalKind: string | null;
  principalId: string | null;
  /** What it concerned: `keypair` (UUID), `key-alias`, `credential` (Hawk id); null when nothing in particular. */
  subjectKind: string | null;
  subjectId: string | null;
}

/** Hash encoding of new entries (see {@link hashRecord}); rows before migration 040 carry v1. */
export const CURRENT_HASH_VERSION = 2;
export type HashVersion = 1 | 2;

/** A record with its place in the chain. */
export interface ChainedRecord extends AuditRecord {
  /** The row id (what GET /request-log shows), allocated before hashing so it is covered too. */
  id: number;
  seq: number;
  prevHash: Buffer;
  hash: Buffer;
  hashVersion: HashVersion;
}

/** Version tag of the canonical encoding, hashed too: a future format cannot be confused with this one. */
const ENCODING_V1 = 'strongroom-audit-v1';
const ENCODING_V2 = 'strongroom-audit-v2';

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
 * v1 (rows written before migration 040): SHA-256 over a JSON array of the request-shaped
 * fields, the position (seq and row id) and the previous hash. The v2 fields are not covered.
 * Times are hashed at millisecond precision (what JavaScript and the log keep).
 */
export function hashRecordV1(record: AuditRecord, seq: number, id: number, prevHash: Buffer): Buffer {
  const fields = [
    ENCODING_V1,
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

/** One field of the v2 encoding: 0x00 for null, else 0x01, a 4-byte big-endian length and the UTF-8 bytes. */
function field(value: string | number | null): Buffer {
  if (value === null) return Buffer.from([0]);
  const bytes = Buffer.from(String(value), 'utf8');
  const head = Buffer.alloc(5);
  head[0] = 1;
  head.writeUInt32BE(bytes.length, 1);
  return Buffer.concat([head, bytes]);
}

/**
 * v2: SHA-256 over a length-prefixed encoding of every column (the v1 fields, face, principal
 * and subject), the position and the previous hash. Length prefixes make it unambiguous without
 * any quoting rules, and null differs from the empty string. The version tag comes first, so a
 * row whose hash_version is changed no longer matches its hash.
 */
export function hashRecordV2(record: AuditRecord, seq: number, id: number, prevHash: Buffer): Buffer {
  const fields: (string | number | null)[] = [
    ENCODING_V2,
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
    record.face,
    record.principalKind,
    record.principalId,
    record.subjectKind,
    record.subjectId,
  ];
  const hash = createHash('sha256');
  for (const f of fields) hash.update(field(f));
  return hash.update(prevHash).digest();
}

/** The entry's hash under the encoding its row names. */
export function hashRecord(version: HashVersion, record: AuditRecord, seq: number, id: number, prevHash: Buffer): Buffer {
  return version === 1 ? hashRecordV1(record, seq, id, prevHash) : hashRecordV2(record, seq, id, prevHash);
}
