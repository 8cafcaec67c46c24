import { readFile } from 'node:fs/promises';
import { extname } from 'node:path';
import mysql from 'mysql2/promise';

/**
 * One row of the example service's `keypair` table, as read: nothing is decoded yet, so a corrupt
 * row still reaches the importer and is reported by id instead of stopping the whole read.
 */
export interface LegacyRow {
  /** 1-based position in the source, to name rows whose id is unusable. */
  position: number;
  id: unknown;
  /** base64 PKCS#1 RSAPrivateKey DER. */
  privateKey: unknown;
  /** base64 PKCS#1 RSAPublicKey DER. */
  publicKey: unknown;
  /** Epoch ms, DATETIME text or ISO-8601, whatever the example's database wrote. */
  dateCreated: unknown;
}

/** The source cannot be read at all (unreachable server, unreadable or malformed file). */
export class LegacySourceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LegacySourceError';
  }
}

const QUERY = 'SELECT id, private_key, public_key, date_created FROM keypair ORDER BY date_created, id';

/** `mysql://user[:password]@host[:port]/db` with the password removed, for messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    u.password = '';
    u.search = '';
    return u.toString();
  } catch {
    return '<unparseable URL>';
  }
}

/** Read every row of `keypair` from MySQL/MariaDB. Errors name the server, never the password. */
export async function readMysql(url: string): Promise<LegacyRow[]> {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new LegacySourceError('--from must be a mysql://user@host:port/database URL');
  }
  if (u.protocol !== 'mysql:' && u.protocol !== 'mariadb:') {
    throw new LegacySourceError('--from must be a mysql:// or mariadb:// URL');
  }
  const database = decodeURIComponent(u.pathname.replace(/^\//, ''));
  if (database === '') throw new LegacySourceError(`${redactUrl(url)}: the URL names no database`);
  let connection: mysql.Connection | undefined;
  try {
    connection = await mysql.createConnection({
      host: u.hostname,
      port: u.port === '' ? 3306 : Number(u.port),
      user: decodeURIComponent(u.username),
      password: decodeURIComponent(u.password),
      database,
      // Keep DATETIME as the text stored: the driver would otherwise apply this machine's zone.
      dateStrings: true,
      supportBigNumbers: true,
      bigNumberStrings: true,
      connectTimeout: 10_000,
    });
    const [rows] = await connection.query<mysql.RowDataPacket[]>(QUERY);
    return rows.map((r, i) => ({
      position: i + 1,
      id: text(r.id),
      privateKey: text(r.private_key),
      publicKey: text(r.public_key),
      dateCreated: r.date_created,
    }));
  } catch (err) {
    // The driver's message can quote the connection settings: keep only its code.
    const code = (err as { code?: unknown }).code;
    throw new LegacySourceError(
      `cannot read the keypair table from ${redactUrl(url)} (${typeof code === 'string' ? code : 'connection failed'})`,
    );
  } finally {
    await connection?.end().catch(() => undefined);
  }
}

/** BLOB/VARBINARY columns arrive as Buffers: the base64 is text either way. */
function text(value: unknown): unknown {
  return Buffer.isBuffer(value) ? value.toString('utf8') : value;
}

/** Read an export written by `sqlite3 -json` or `sqlite3 -csv -header` (by file extension). */
export async function readExportFile(path: string): Promise<LegacyRow[]> {
  let content: string;
  try {
    content = await readFile(path, 'utf8');
  } catch (err) {
    throw new LegacySourceError(`cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const ext = extname(path).toLowerCase();
  if (ext === '.json') return parseJsonExport(content, path);
  if (ext === '.csv') return parseCsvExport(content, path);
  throw new LegacySourceError(`${path}: the export must be a .json or .csv file`);
}

/** Column names as the table has them, or in the example's JSON (camelCase). */
function field(record: Record<string, unknown>, snake: string, camel: string): unknown {
  return snake in record ? record[snake] : record[camel];
}

export function parseJsonExport(content: string, name = 'JSON export'): LegacyRow[] {
  let data: unknown;
  try {
    data = JSON.parse(content.trim() === '' ? '[]' : content);
  } catch {
    throw new LegacySourceError(`${name}: not valid JSON`);
  }
  if (!Array.isArray(data)) throw new LegacySourceError(`${name}: expected a JSON array of rows`);
  return data.map((item, i) => {
    const r = item && typeof item === 'object' ? (item as Record<string, unknown>) : {};
    return {
      position: i + 1,
      id: r.id,
      privateKey: field(r, 'private_key', 'privateKey'),
      publicKey: field(r, 'public_key', 'publicKey'),
      dateCreated: field(r, 'date_created', 'dateCreated'),
    };
  });
}

/** RFC 4180 records: quoted fields may hold commas, doubled quotes and line breaks. */
function csvRecords(content: string): string[][] {
  const records: string[][] = [];
  let record: string[] = [];
  let fieldText = '';
  let quoted = false;
  let i = 0;
  while (i < content.length) {
    const c = content[i] as string;
    if (quoted) {
      if (c === '"' && content[i + 1] === '"') {
        fieldText += '"';
        i += 2;
        continue;
      }
      if (c === '"') quoted = false;
      else fieldText += c;
      i += 1;
      continue;
    }
    if (c === '"') quoted = true;
    else if (c === ',') {
      record.push(fieldText);
      fieldText = '';
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && content[i + 1] === '\n') i += 1;
      record.push(fieldText);
      records.push(record);
      record = [];
      fieldText = '';
    } else fieldText += c;
    i += 1;
  }
  if (fieldText !== '' || record.length > 0) {
    record.push(fieldText);
    records.push(record);
  }
  return records.filter((r) => !(r.length === 1 && r[0] === ''));
}

export function parseCsvExport(content: string, name = 'CSV export'): LegacyRow[] {
  const [header, ...rows] = csvRecords(content.replace(/^\uFEFF/, ''));
  if (!header) return [];
  const index = (snake: string, camel: string) => {
    const at = header.findIndex((h) => h.trim() === snake || h.trim() === camel);
    if (at < 0) {
      throw new LegacySourceError(
        `${name}: the header row must name id, private_key, public_key and date_created (export with sqlite3 -csv -header)`,
      );
    }
    return at;
  };
  const cols = {
    id: index('id', 'id'),
    privateKey: index('private_key', 'privateKey'),
    publicKey: index('public_key', 'publicKey'),
    dateCreated: index('date_created', 'dateCreated'),
  };
  return rows.map((r, i) => ({
    position: i + 1,
    id: r[cols.id],
    privateKey: r[cols.privateKey],
    publicKey: r[cols.publicKey],
    dateCreated: r[cols.dateCreated],
  }));
}

const DATETIME = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?\s*(Z|[+-]\d{2}:?\d{2})?$/i;

/**
 * The example's `date_created` as a Date. Hibernate writes java.util.Date as DATETIME text in
 * the service's time zone (UTC on the servers it ran on: text without an offset is read as UTC)
 * or, in SQLite, possibly as epoch milliseconds. A bare number below 10^11 can only be seconds
 * (in ms it would be 1973), so it is read as seconds. Undefined when unusable.
 */
export function parseLegacyDate(value: unknown): Date | undefined {
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? undefined : value;
  let ms: number | undefined;
  if (typeof value === 'number' && Number.isFinite(value)) ms = value;
  else if (typeof value === 'string' && /^\s*\d{1,16}(\.\d+)?\s*$/.test(value)) ms = Number(value);
  if (ms !== undefined) {
    if (ms <= 0) return undefined;
    return new Date(Math.trunc(ms < 1e11 ? ms * 1000 : ms));
  }
  if (typeof value !== 'string') return undefined;
  const m = DATETIME.exec(value.trim());
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s, frac, zone] = m;
  const millis = Number((frac ?? '').padEnd(3, '0').slice(0, 3));
  let t = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s ?? 0), millis);
  // Date.UTC rolls 2019-02-31 over into March: refuse instead of guessing.
  const check = new Date(t);
  if (Number.isNaN(t) || check.getUTCDate() !== Number(d) || check.getUTCMonth() !== Number(mo) - 1 || Number(h) > 23 || Number(mi) > 59 || Number(s ?? 0) > 59) {
    return undefined;
  }
  if (zone && zone.toUpperCase() !== 'Z') {
    const sign = zone.startsWith('-') ? -1 : 1;
    const digits = zone.slice(1).replace(':', '');
    t -= sign * (Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2))) * 60_000;
  }
  return new Date(t);
}
