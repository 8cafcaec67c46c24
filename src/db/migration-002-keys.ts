import type { Migration } from './migrations.js';

/**
 * Key lifecycle and the key pool. A keypair row now has a state:
 * - `generating`: written before the token generates the key (an intent record, never shown);
 *   a process killed mid-generation leaves this row, and the start-up reconciliation completes
 *   it (the token has the key) or deletes it (it does not). No public key yet.
 * - `pool`: generated ahead, not yet handed to anyone; never listed.
 * - `enabled`, `disabled`, `pending_deletion` (with `delete_after`), `deleted` (token objects gone).
 * Existing rows become `enabled`.
 */
export const migration002: Migration = {
  version: 2,
  name: 'keys',
  sql: `
    ALTER TABLE keypair ADD COLUMN state text NOT NULL DEFAULT 'enabled'
      CHECK (state IN ('generating', 'pool', 'enabled', 'disabled', 'pending_deletion', 'deleted'));
    ALTER TABLE keypair ADD COLUMN origin text NOT NULL DEFAULT 'generated'
      CHECK (origin IN ('generated', 'imported', 'restored'));
    ALTER TABLE keypair ADD COLUMN state_changed_at timestamptz NOT NULL DEFAULT now();
    ALTER TABLE keypair ADD COLUMN delete_after timestamptz;
    ALTER TABLE keypair ALTER COLUMN public_key DROP NOT NULL;
    ALTER TABLE keypair ALTER COLUMN modulus_bits DROP NOT NULL;
    ALTER TABLE keypair ADD CONSTRAINT keypair_public_key_known
      CHECK (state = 'generating' OR (public_key IS NOT NULL AND modulus_bits IS NOT NULL));
    ALTER TABLE keypair ADD CONSTRAINT keypair_pending_has_date
      CHECK (state <> 'pending_deletion' OR delete_after IS NOT NULL);

    -- POST /keypair takes the oldest pool key; the refiller counts them.
    CREATE INDEX keypair_pool_idx ON keypair (state_changed_at, id) WHERE state = 'pool';
    -- Reconciliation and purge look only at these few rows.
    CREATE INDEX keypair_transient_idx ON keypair (state, delete_after) WHERE state IN ('generating', 'pending_deletion', 'deleted');
  `,
};
