import type { Migration } from './migrations.js';

/**
 * Audit v2 (src/audit/chain.ts):
 * - every entry names its face, its principal (kind + id) and its subject (kind + id), and the
 *   hash encoding it was chained with (`hash_version`: NULL on rows written before this
 *   migration, which keep the v1 encoding and are left as they are);
 * - `audit_head`, one row holding the chain's end (last seq, last row id, last hash): an append
 *   is one statement that moves it optimistically and inserts the batch (src/audit/store.ts).
 *   It starts at the last chained row, else the retention anchor, else genesis. New row ids
 *   continue from the highest id ever given (the old sequence included), so an id is never
 *   reused after retention and DELETE /request-log boundaries stay valid. `legacy_through`:
 *   rows without a chain position above this id were slipped in by hand;
 * - `hawk_nonce` becomes UNLOGGED: a claim no longer waits for a WAL flush. The trade-off
 *   (a Postgres crash empties the table, see the README's Hawk paragraph) is documented there.
 */
export const migration040: Migration = {
  version: 40,
  name: 'audit-v2',
  sql: `
    ALTER TABLE request_log
      ADD COLUMN face            text,
      ADD COLUMN principal_kind  text,
      ADD COLUMN principal_id    text,
      ADD COLUMN subject_kind    text,
      ADD COLUMN subject_id      text,
      ADD COLUMN hash_version    smallint CHECK (hash_version IN (2));

    CREATE TABLE audit_head (
      singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
      seq             bigint NOT NULL,
      last_id         bigint NOT NULL,
      hash            bytea NOT NULL,
      legacy_through  bigint NOT NULL
    );
    INSERT INTO audit_head (seq, last_id, hash, legacy_through)
    SELECT COALESCE(c.seq, a.seq, 0),
           GREATEST(
             COALESCE((SELECT max(id) FROM request_log), 0),
             (SELECT last_value FROM request_log_id_seq),
             COALESCE((SELECT max(cleared_through) FROM request_log_clear), 0)),
           COALESCE(c.hash, a.hash, decode(repeat('00', 32), 'hex')),
           COALESCE((SELECT min(id) - 1 FROM request_log WHERE seq IS NOT NULL),
                    (SELECT max(id) FROM request_log WHERE seq IS NULL), 0)
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (SELECT seq, hash FROM request_log WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1) AS c ON true
    LEFT JOIN LATERAL (SELECT seq, hash FROM audit_anchor ORDER BY seq DESC LIMIT 1) AS a ON true;

    ALTER TABLE hawk_nonce SET UNLOGGED;
  `,
};
