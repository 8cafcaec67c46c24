import type { Database, Queryable } from './database.js';
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
 * One component's migrations: the core's, or a face's (component = the face's name). Versions
 * count 1..n within a component, so two faces never collide on a number.
 */
export interface MigrationSet {
  component: string;
  migrations: readonly Migration[];
}

/** The component of the list below: every table that existed before faces, LKM tables included (names kept). */
export const CORE_COMPONENT = 'core';

/**
 * The core component's schema, in order. A released migration is never edited: add a new one.
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

/** Apply every core migration not yet applied (see `migrateAll`); answers the versions applied. */
export async function migrate(db: Database, list: readonly Migration[] = migrations): Promise<number[]> {
  const applied = await migrateAll(db, [{ component: CORE_COMPONENT, migrations: list }]);
  return applied.map((m) => m.version);
}

/**
 * Apply every migration of `sets` not yet applied, component by component in the order given
 * (the core first), each in version order, all in one transaction holding an advisory lock:
 * a second instance starting at the same time waits, then finds nothing left to do.
 * `schema_migration` is keyed (component, version); a database from before components (keyed
 * by version alone, every row the core's) is converted in place first. A component the
 * database knows but `sets` does not name (a face not enabled) is left alone; one whose newest
 * applied version is beyond what this build knows stops the start.
 */
export async function migrateAll(db: Database, sets: readonly MigrationSet[]): Promise<Array<{ component: string; version: number }>> {
  for (const set of sets) checkSet(set);
  return db.transaction(async (tx) => {
    // A migration may rewrite a large table, and a second starter waits for the first one's:
    // neither is a stuck peer, so the per-connection limits do not apply here.
    await tx.query('SET LOCAL statement_timeout = 0');
    await tx.query('SET LOCAL lock_timeout = 0');
    await tx.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
    await tx.query(`
      CREATE TABLE IF NOT EXISTS schema_migration (
        component   text NOT NULL,
        version     integer NOT NULL,
        name        text NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (component, version)
      )`);
    await upgradeMigrationTable(tx);
    const { rows } = await tx.query<{ component: string; version: number }>('SELECT component, version FROM schema_migration');
    const applied: Array<{ component: string; version: number }> = [];
    for (const set of sets) {
      const done = new Set(rows.filter((r) => r.component === set.component).map((r) => Number(r.version)));
      const known = Math.max(0, ...set.migrations.map((m) => m.version));
      const newest = Math.max(0, ...done);
      if (newest > known) {
        const of = set.component === CORE_COMPONENT ? '' : ` of ${set.component}`;
        throw new Error(`the database schema${of} (version ${newest}) is newer than this build knows (${known}); upgrade strongroom`);
      }
      for (const m of [...set.migrations].sort((a, b) => a.version - b.version)) {
        if (done.has(m.version)) continue;
        for (const statement of splitStatements(m.sql)) await tx.query(statement);
        await tx.query('INSERT INTO schema_migration (component, version, name) VALUES ($1, $2, $3)', [set.component, m.version, m.name]);
        applied.push({ component: set.component, version: m.version });
      }
    }
    return applied;
  });
}

/** A component name is a face name or `core`; versions are positive and unique within it. */
function checkSet(set: MigrationSet): void {
  if (!/^[a-z][a-z0-9]*$/.test(set.component)) throw new TypeError(`migration component ${set.component} is not [a-z][a-z0-9]*`);
  const seen = new Set<number>();
  for (const m of set.migrations) {
    if (!Number.isSafeInteger(m.version) || m.version < 1) throw new TypeError(`${set.component} migration ${m.name}: version must be a positive integer`);
    if (seen.has(m.version)) throw new TypeError(`${set.component} has two migrations numbered ${m.version}`);
    seen.add(m.version);
  }
}

/**
 * Before components, `schema_migration` was keyed by version alone and every row was the
 * core's: add the column, mark the rows `core`, and key the table by (component, version).
 * Runs under the migration lock, in the migration transaction: all or nothing.
 */
async function upgradeMigrationTable(tx: Queryable): Promise<void> {
  const { rows } = await tx.query<{ has: boolean }>(
    "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'schema_migration'::regclass AND attname = 'component' AND NOT attisdropped) AS has",
  );
  if (rows[0]?.has) return;
  const { rows: keys } = await tx.query<{ name: string }>(
    "SELECT conname AS name FROM pg_constraint WHERE conrelid = 'schema_migration'::regclass AND contype = 'p'",
  );
  await tx.query(`ALTER TABLE schema_migration ADD COLUMN component text NOT NULL DEFAULT '${CORE_COMPONENT}'`);
  await tx.query('ALTER TABLE schema_migration ALTER COLUMN component DROP DEFAULT');
  for (const key of keys) await tx.query(`ALTER TABLE schema_migration DROP CONSTRAINT "${key.name.replace(/"/g, '""')}"`);
  await tx.query('ALTER TABLE schema_migration ADD PRIMARY KEY (component, version)');
}

/** Split on semicolons at line ends (migrations contain no procedural bodies); drop comments. */
function splitStatements(sql: string): string[] {
  return sql
    .split(/;\s*$/m)
    .map((s) => s.replace(/^\s*--.*$/gm, '').trim())
    .filter((s) => s.length > 0);
}
