import type { Migration } from './migrations.js';

/**
 * A credential that has once authenticated a request with its query string in the MAC signs
 * queries: from then on its path-only MACs are refused (a relay could append a query it did
 * not sign). Set once, never cleared.
 */
export const migration010: Migration = {
  version: 10,
  name: 'hawk-signs-query',
  sql: `
    ALTER TABLE hawk_credential ADD COLUMN signs_query boolean NOT NULL DEFAULT false;
  `,
};
