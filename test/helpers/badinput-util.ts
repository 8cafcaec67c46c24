import type { FastifyInstance } from 'fastify';
import type { Test } from 'tap';
import type { Database } from '../../src/db/database.js';
import { ERROR_CODE_HEADER } from '../../src/errors.js';
import { startHarness } from './harness.js';
import type { Response } from './hawk-client.js';
import type { TestToken } from './token.js';

/** A tap test (the object each `t.test` callback receives). */
export type Tap = Test;

/** What an error response must never carry: stack frames, PKCS#11 codes, paths, error class names. */
const LEAKS: ReadonlyArray<[string, RegExp]> = [
  ['a stack frame', /\bat [\w.<>]+ \(|\bat (file:|node:|\/)/],
  ['"at "', /\bat /],
  ['a PKCS#11 return code', /CKR_/],
  ['a file path', /(?:\/(?:work|usr|tmp|home|opt|var|node_modules)\/)|\.(?:ts|js):\d+/],
  ['an error class name', /\b\w*Error:/],
  ['a pg or hsm error code', /HSM_ERR_|SQLSTATE|FST_ERR_/],
];

/** Assert a response carries no internal detail, in its body or its headers. */
export function assertNoLeak(t: Tap, res: Response, label: string): void {
  const headers = [...res.headers.entries()].map(([k, v]) => `${k}: ${v}`).join('\n');
  for (const [what, pattern] of LEAKS) {
    t.notMatch(res.text, pattern, `${label}: body has no ${what}`);
    t.notMatch(headers, pattern, `${label}: headers have no ${what}`);
  }
}

/**
 * Assert the exact error answer: status, the `{"message","status"}` body and nothing else,
 * the stable code header, a JSON content type, and no internal detail.
 */
export function assertError(
  t: Tap,
  res: Response,
  expected: { status: number; code: string; message: string },
  label: string,
): void {
  t.equal(res.status, expected.status, `${label}: status (${res.text.slice(0, 200)})`);
  t.same(res.json, { message: expected.message, status: expected.status }, `${label}: body`);
  t.equal(res.headers.get(ERROR_CODE_HEADER), expected.code, `${label}: ${ERROR_CODE_HEADER}`);
  t.equal(res.headers.get('content-type'), 'application/json; charset=utf-8', `${label}: content type`);
  assertNoLeak(t, res, label);
}

/** Everything a refused request must leave untouched. */
export interface SideEffectSnapshot {
  keypairRows: string[];
  credentialRows: string[];
  tokenKeys: string[];
}

export async function snapshot(db: Database, app: FastifyInstance): Promise<SideEffectSnapshot> {
  const keypairs = await db.query<{ id: string }>('SELECT id FROM keypair ORDER BY id');
  const credentials = await db.query<{ id: string; sealed_key: Buffer }>(
    'SELECT id, sealed_key FROM hawk_credential ORDER BY id',
  );
  return {
    keypairRows: keypairs.rows.map((r) => r.id),
    credentialRows: credentials.rows.map((r) => `${r.id}:${Buffer.from(r.sealed_key).toString('hex')}`),
    tokenKeys: await app.keyStore.listKeyPairIds(),
  };
}

/** An app on the same token and database as a harness, but started without ADMIN_TOKEN. */
export async function startAppWithoutAdminToken(
  t: Tap,
  token: TestToken,
  databaseUrl: string,
): Promise<{ app: FastifyInstance; base: string; close: () => Promise<void> }> {
  const other = await startHarness(t, {
    token,
    databaseUrl,
    withoutAdminToken: true,
    env: { PKCS11_SESSIONS: '1', DATABASE_POOL_SIZE: '2' },
  });
  if (other.config.adminToken !== undefined) throw new Error('this app must start without ADMIN_TOKEN');
  return { app: other.app, base: other.base, close: () => other.app.close() };
}

/** Every row of every table in the public schema, as text, with each bytea also kept as bytes. */
export interface DatabaseDump {
  tables: string[];
  /** JSON of every row; each bytea appears as its hex and its base64. */
  text: string;
  /** Every bytea value found. */
  blobs: Buffer[];
}

export async function dumpDatabase(db: Database): Promise<DatabaseDump> {
  const { rows: tableRows } = await db.query<{ table_name: string }>(
    `SELECT table_name FROM information_schema.tables
      WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name`,
  );
  const tables = tableRows.map((r) => r.table_name);
  const blobs: Buffer[] = [];
  const parts: string[] = [];
  for (const table of tables) {
    const { rows } = await db.query(`SELECT * FROM "${table.replace(/"/g, '""')}"`);
    const text = JSON.stringify(rows, function (this: Record<string, unknown>, key: string, value: unknown) {
      // JSON.stringify has already turned a Buffer into {type:'Buffer',data} by now: read the original.
      const original = key === '' ? value : this[key];
      if (original instanceof Uint8Array) {
        const b = Buffer.from(original);
        blobs.push(b);
        return { hex: b.toString('hex'), base64: b.toString('base64') };
      }
      return value;
    });
    parts.push(`${table}: ${text}`);
  }
  return { tables, text: parts.join('\n'), blobs };
}
