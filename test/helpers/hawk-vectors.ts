// Reads the Hawk known-answer vectors from ../shared/vectors/hawk.md at test time (nothing is
// copied into the repository) and recomputes their MACs with node:crypto alone.
import { createHash, createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { vectorsDir } from './paths.js';

export type HawkAlgorithm = 'sha1' | 'sha256';

export interface VectorCredential {
  id: string;
  key: string;
  algorithm: HawkAlgorithm;
}

/** One signed request: everything the normalized string covers, plus the expected MAC. */
export interface HeaderVector {
  name: string;
  id: string;
  method: string;
  host: string;
  port: number;
  resource: string;
  ts: string;
  nonce: string;
  hash: string | undefined;
  ext: string | undefined;
  mac: string;
  /** The Authorization header value. */
  header: string;
}

export interface ServerVector extends HeaderVector {
  expect: 'accept' | 'stale';
}

export interface HawkVectors {
  credentials: Map<string, VectorCredential>;
  v1: HeaderVector & { normalized: string };
  v2: HeaderVector & { normalized: string; payload: string; contentType: string };
  /** V3-V8, the rows of the test/server.js table, in file order. */
  server: ServerVector[];
  /** The MAC of the bad-MAC vector. */
  badMac: string;
  /** Malformed attribute lists from the error tests. */
  errors: { duplicate: string; unknown: string; empty: string; missing: string[] };
}

function must(match: RegExpMatchArray | null, what: string): RegExpMatchArray {
  if (!match) throw new Error(`hawk.md: could not find ${what}`);
  return match;
}

function section(text: string, heading: string): string {
  const start = text.indexOf(`## ${heading}`);
  if (start < 0) throw new Error(`hawk.md: no section "## ${heading}"`);
  const end = text.indexOf('\n## ', start + 3);
  return text.slice(start, end < 0 ? undefined : end);
}

function algorithm(value: string): HawkAlgorithm {
  if (value !== 'sha1' && value !== 'sha256') throw new Error(`hawk.md: unknown algorithm ${value}`);
  return value;
}

/** The markdown writes newlines inside code spans as the two characters `\n`. */
function unescapeNewlines(s: string): string {
  return s.replace(/\\n/g, '\n');
}

/** Split a normalized request string back into its fields. */
function fieldsOfNormalized(normalized: string) {
  const lines = normalized.split('\n');
  const [tag, ts, nonce, method, resource, host, port, hash, ext] = lines;
  if (tag !== 'hawk.1.header' || ts === undefined || nonce === undefined || method === undefined || resource === undefined || host === undefined || port === undefined || ext === undefined) {
    throw new Error(`hawk.md: malformed normalized string ${JSON.stringify(normalized)}`);
  }
  return { ts, nonce, method, resource, host, port: Number(port), hash: hash || undefined, ext: ext || undefined };
}

/** The header attribute order used by every vector in the file: id, ts, nonce, [hash], [ext], mac. */
export function buildHeader(v: Omit<HeaderVector, 'header' | 'name'>): string {
  const parts = [`id="${v.id}"`, `ts="${v.ts}"`, `nonce="${v.nonce}"`];
  if (v.hash !== undefined) parts.push(`hash="${v.hash}"`);
  if (v.ext !== undefined) parts.push(`ext="${v.ext}"`);
  parts.push(`mac="${v.mac}"`);
  return `Hawk ${parts.join(', ')}`;
}

/** The hawk.1.header normalized string, written out from the spec (not from any Hawk library). */
export function normalizedString(v: Pick<HeaderVector, 'ts' | 'nonce' | 'method' | 'resource' | 'host' | 'port' | 'hash' | 'ext'>): string {
  const ext = (v.ext ?? '').replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
  return `hawk.1.header\n${v.ts}\n${v.nonce}\n${v.method.toUpperCase()}\n${v.resource}\n${v.host.toLowerCase()}\n${v.port}\n${v.hash ?? ''}\n${ext}\n`;
}

export function hmacBase64(alg: HawkAlgorithm, key: string, message: string): string {
  return createHmac(alg, Buffer.from(key, 'utf8')).update(message, 'utf8').digest('base64');
}

export function payloadHash(alg: HawkAlgorithm, contentType: string, payload: string): string {
  const type = contentType.split(';')[0]!.trim().toLowerCase();
  return createHash(alg).update(`hawk.1.payload\n${type}\n${payload}\n`, 'utf8').digest('base64');
}

/** tsm = base64(HMAC(key, "hawk.1.ts\n<ts>\n")). */
export function timestampMac(alg: HawkAlgorithm, key: string, ts: string | number): string {
  return hmacBase64(alg, key, `hawk.1.ts\n${ts}\n`);
}

function parseCredentials(text: string): Map<string, VectorCredential> {
  const sec = section(text, 'Credentials used by all vectors');
  const main = must(sec.match(/id `([^`]+)`, key `([^`]+)`, algorithm `(sha1|sha256)`/), 'the main credential');
  const base: VectorCredential = { id: main[1]!, key: main[2]!, algorithm: algorithm(main[3]!) };
  const map = new Map<string, VectorCredential>([[base.id, base]]);
  const reuse = must(sec.match(/reuse the same key under ids (.*)$/m), 'the reused ids')[1]!;
  for (const m of reuse.matchAll(/`([^`]+)`(?:\s*\((sha1|sha256)\))?/g)) {
    map.set(m[1]!, { id: m[1]!, key: base.key, algorithm: m[2] ? algorithm(m[2]) : base.algorithm });
  }
  return map;
}

function parseTable(sec: string, credentials: Map<string, VectorCredential>): ServerVector[] {
  const rows = sec
    .split('\n')
    .filter((l) => l.startsWith('|') && !/^\|\s*-/.test(l) && !/^\|\s*Case\s*\|/.test(l))
    .map((l) => l.split('|').slice(1, -1).map((c) => c.trim()));
  if (rows.length === 0) throw new Error('hawk.md: the V3-V8 table has no rows');
  const out: ServerVector[] = [];
  let request: [string, string, string, string] | undefined;
  let fields: [string, string, string] | undefined;
  for (const [caseCell, requestCell, fieldCell, algCell, macCell] of rows) {
    if (caseCell === undefined || requestCell === undefined || fieldCell === undefined || algCell === undefined || macCell === undefined) {
      throw new Error('hawk.md: a V3-V8 row has too few columns');
    }
    const id = must(caseCell.match(/\(id "?([^",)\s]+)"?/), `the id in "${caseCell}"`)[1]!;
    const otherKey = caseCell.match(/key `([^`]+)`/);
    const alg = algorithm(algCell);
    if (otherKey) credentials.set(id, { id, key: otherKey[1]!, algorithm: alg });
    else if (!credentials.has(id)) throw new Error(`hawk.md: no credential for id ${id}`);

    if (requestCell !== 'same') {
      const m = must(requestCell.match(/^([\w.-]+):(\d+) (\w+) (\S+)$/), `the request in "${requestCell}"`);
      request = [m[1]!, m[2]!, m[3]!, m[4]!];
    }
    if (!request) throw new Error('hawk.md: the first row says "same"');
    let hash: string | undefined;
    if (fieldCell !== 'same') {
      const m = must(fieldCell.match(/^(\d+) \/ (\S+) \/ ([^,]+?)(?:, hash `([^`]+)`)?$/), `the fields in "${fieldCell}"`);
      fields = [m[1]!, m[2]!, m[3]!];
      hash = m[4];
    }
    if (!fields) throw new Error('hawk.md: the first row says "same"');
    const mac = must(macCell.match(/`([^`]+)`/), `the mac in "${macCell}"`)[1]!;
    const [host, port, method, resource] = request;
    const [ts, nonce, ext] = fields;
    const v = { id, method, host, port: Number(port), resource, ts, nonce, hash, ext, mac };
    out.push({ ...v, name: caseCell.replace(/`/g, ''), header: buildHeader(v), expect: /Stale timestamp/.test(macCell) ? 'stale' : 'accept' });
  }
  return out;
}

let cached: HawkVectors | undefined;

/** Parse hawk.md; throws (failing the test) if anything expected is missing. */
export function loadHawkVectors(): HawkVectors {
  if (cached) return cached;
  const text = readFileSync(join(vectorsDir(), 'hawk.md'), 'utf8');
  const credentials = parseCredentials(text);
  const main = [...credentials.values()][0]!;

  const s1 = section(text, 'V1:');
  const n1 = unescapeNewlines(must(s1.match(/Normalized: `([^`]+)`/), 'V1 normalized')[1]!);
  const f1 = fieldsOfNormalized(n1);
  const v1 = {
    name: 'V1',
    id: main.id,
    ...f1,
    normalized: n1,
    mac: must(s1.match(/^- mac `([^`]+)`/m), 'V1 mac')[1]!,
    header: must(s1.match(/Header: `([^`]+)`/), 'V1 header')[1]!,
  };

  const s2 = section(text, 'V2:');
  const n2 = unescapeNewlines(must(s2.match(/Normalized: `([^`]+)`/), 'V2 normalized')[1]!);
  const v2 = {
    name: 'V2',
    id: main.id,
    ...fieldsOfNormalized(n2),
    normalized: n2,
    payload: must(s2.match(/payload `([^`]+)`/), 'V2 payload')[1]!,
    contentType: must(s2.match(/content-type `([^`]+)`/), 'V2 content-type')[1]!,
    mac: must(s2.match(/^- mac `([^`]+)`/m), 'V2 mac')[1]!,
    header: must(s2.match(/Header: `([^`]+)`/), 'V2 header')[1]!,
  };

  const s3 = section(text, 'V3-V8');
  const server = parseTable(s3, credentials);
  const badMac = must(s3.match(/Bad-MAC vector: `mac="([^"]+)"`/), 'the bad-MAC vector')[1]!;
  const errors = {
    duplicate: must(s3.match(/duplicate attribute \(`([^`]+)`\)/), 'the duplicate-attribute test')[1]!,
    unknown: must(s3.match(/unknown attribute `([^`]+)`/), 'the unknown-attribute test')[1]!,
    empty: must(s3.match(/; `(\w+="")` →/), 'the empty-attribute test')[1]!,
    missing: must(s3.match(/missing ([\w/]+) →/), 'the missing-attributes test')[1]!.split('/'),
  };

  cached = { credentials, v1, v2, server, badMac, errors };
  return cached;
}
