import type { Database } from './database.js';
import { migration002 } from './migration-002-keys.js';
import { migration003 } from './migration-003-audit.js';
import { migration010 } from './migration-010-signs-query.js';
import { migration030 } from './migration-030-auth.js';
import { migration040 } from './migration-040-audit-v2.js';

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/**
 * The schema, in order. A released migration is never edited: add a new one.
 * Nothing here holds key material: private keys live in the token, Hawk keys are sealed by it.
 */
export const migrations: readonly Migration[] = [
  {
    version: 1,
    name: 'lkm',
    sql: `
      CREATE TABLE hawk_credential (
        id          text PRIMARY KEY,
        sealed_key  bytea NOT NULL,
        algorithm   text NOT NULL CHECK (algorithm IN ('sha1', 'sha256')),
        created_at  timestamptz NOT NULL DEFAULT now(),
        revoked_at  timestamptz
      );

      CREATE TABLE keypair (
        id            uuid PRIMARY KEY,
        public_key    bytea NOT NULL,
        modulus_bits  integer NOT NULL,
        date_created  timestamptz NOT NULL,
        owner         text
      );
      CREATE INDEX keypair_date_created_idx ON keypair (date_created, id);

      CREATE TABLE hawk_nonce (
        hawk_id     text NOT NULL,
        nonce       text NOT NULL,
        expires_at  timestamptz NOT NULL,
        PRIMARY KEY (hawk_id, nonce)
      );
      CREATE INDEX hawk_nonce_expires_at_idx ON hawk_nonce (expires_at);

      CREATE TABLE request_log (
        id              bigserial PRIMARY KEY,
        user_id         text NOT NULL,
        request_method  text NOT NULL,
        request_uri     text NOT NULL,
        logged_at       timestamptz NOT NULL,
        hawk_id         text,
        status_code     integer,
        keypair_id      uuid,
        client_address  text
      );
      CREATE INDEX request_log_logged_at_idx ON request_log (logged_at, id);

      -- DELETE /request-log hides entries up to a point; it never destroys them.
      CREATE TABLE request_log_clear (
        id               bigserial PRIMARY KEY,
        cleared_through  bigint NOT NULL,
        cleared_at       timestamptz NOT NULL,
        hawk_id          text
      );
    `,
  },
  migration002,
  migration003,
  migration010,
  migration030,
  migration040,
];

/** Arbitrary constant: the advisory lock that serialises migrations across instances. */
const MIGRATION_LOCK = 0x5354524e; // 'STRN'

/** Apply every migration not yet applied, in one transaction, holding an advisory lock. */
export async function migrate(db: Database, list: readonly Migration[] = migrations): Promise<number[]> {
  return db.transaction(async (tx) => {
    // A migration may rewrite a large table, and a second starter waits for the first one's:
    // neither is a stuck peer, so the per-connection limits do not apply here.
    await tx.query('SET LOCAL statement_timeout = 0');
    await tx.query('SET LOCAL lock_timeout = 0');
    await tx.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
    await tx.query(`
      CREATE TABLE IF NOT EXISTS schema_migration (
        version     integer PRIMARY KEY,
        name        text NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT now()
      )`);
    const { rows } = await tx.query<{ version: number }>('SELECT version FROM schema_migration');
    const done = new Set(rows.map((r) => Number(r.version)));
    const known = Math.max(0, ...list.map((m) => m.version));
    const newest = Math.max(0, ...done);
    if (newest > known) {
      throw new Error(`the database schema (version ${newest}) is newer than this build knows (${known}); upgrade strongroom`);
    }
    const applied: number[] = [];
    for (const m of [...list].sort((a, b) => a.version - b.version)) {
      if (done.has(m.version)) continue;
      for (const statement of splitStatements(m.sql)) await tx.query(statement);
      await tx.query('INSERT INTO schema_migration (version, name) VALUES ($1, $2)', [m.version, m.name]);
      applied.push(m.version);
    }
    return applied;
  });
}

/** Split on semicolons at line ends (migrations contain no procedural bodies); drop comments. */
function splitStatements(sql: string): string[] {
  return sql
    .split(/;\s*$/m)
    .map((s) => s.replace(/^\s*--.*$/gm, '').trim())
    .filter((s) => s.length > 0);
}
