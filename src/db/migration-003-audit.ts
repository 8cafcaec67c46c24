import type { Migration } from './migrations.js';

/**
 * Tamper-evident audit: every request-log entry (and every audited event, which shares the
 * table) gets a position `seq` in one hash chain, the hash of its predecessor and its own hash
 * (src/audit/chain.ts). `entry_uid` makes a spool replay idempotent. Retention removes a prefix
 * of the chain and leaves an anchor (last removed seq and hash) that verification starts from.
 * Rows logged before this migration keep seq NULL: they predate the chain.
 */
export const migration003: Migration = {
  version: 3,
  name: 'audit',
  sql: `
    ALTER TABLE request_log ALTER COLUMN user_id DROP NOT NULL;
    ALTER TABLE request_log ALTER COLUMN request_method DROP NOT NULL;
    ALTER TABLE request_log ALTER COLUMN request_uri DROP NOT NULL;
    ALTER TABLE request_log
      ADD COLUMN entry_uid  uuid,
      ADD COLUMN event      text,
      ADD COLUMN actor      text,
      ADD COLUMN detail     jsonb,
      ADD COLUMN seq        bigint,
      ADD COLUMN prev_hash  bytea,
      ADD COLUMN hash       bytea;
    CREATE UNIQUE INDEX request_log_seq_idx ON request_log (seq);
    CREATE UNIQUE INDEX request_log_entry_uid_idx ON request_log (entry_uid);

    CREATE TABLE audit_anchor (
      seq           bigint PRIMARY KEY,
      hash          bytea NOT NULL,
      removed_rows  bigint NOT NULL,
      removed_at    timestamptz NOT NULL
    );
  `,
};
