import type { Migration } from './migrations.js';

/**
 * Storage of the shared authentication blocks (src/auth/). No secret a caller presents is stored:
 * bearer tokens and session ids only as their SHA-256 (they are 256-bit random values, see
 * src/auth/bearer-tokens.ts), TOTP only the last time step used. Each table is keyed by a
 * `realm` (the face or purpose that owns the rows), so two faces can never accept each other's
 * tokens or share a TOTP subject by accident.
 *
 * Version 30 leaves room below it for the core's migrations until the face registry orders
 * migrations per component.
 */
export const migration030: Migration = {
  version: 30,
  name: 'auth',
  sql: `
    CREATE TABLE auth_bearer_token (
      token_hash  bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
      realm       text NOT NULL,
      client_id   text NOT NULL,
      subject     text,
      scope       text NOT NULL,
      issued_at   timestamptz NOT NULL,
      expires_at  timestamptz NOT NULL,
      revoked_at  timestamptz,
      CHECK (expires_at > issued_at)
    );
    CREATE INDEX auth_bearer_token_expires_idx ON auth_bearer_token (expires_at);
    CREATE INDEX auth_bearer_token_client_idx ON auth_bearer_token (realm, client_id);

    CREATE TABLE auth_session (
      id_hash          bytea PRIMARY KEY CHECK (octet_length(id_hash) = 32),
      realm            text NOT NULL,
      operator         text NOT NULL,
      csrf_secret      bytea NOT NULL CHECK (octet_length(csrf_secret) = 32),
      created_at       timestamptz NOT NULL,
      last_seen_at     timestamptz NOT NULL,
      idle_expires_at  timestamptz NOT NULL,
      expires_at       timestamptz NOT NULL,
      CHECK (idle_expires_at <= expires_at)
    );
    CREATE INDEX auth_session_operator_idx ON auth_session (realm, operator);
    CREATE INDEX auth_session_expires_idx ON auth_session (expires_at);

    -- RFC 6238 §5.2: a code is accepted once. The newest step accepted per subject, in the
    -- database so that every instance refuses a code another instance has accepted.
    CREATE TABLE auth_totp_step (
      realm      text NOT NULL,
      subject    text NOT NULL,
      last_step  bigint NOT NULL,
      used_at    timestamptz NOT NULL,
      PRIMARY KEY (realm, subject)
    );
  `,
};
