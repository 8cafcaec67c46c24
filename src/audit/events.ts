/**
 * An audited event that is not an HTTP request: key state changes, credential changes, log
 * clears, ceremonies. It joins the same hash chain as the request log.
 */
export interface AuditEvent {
  /** Dotted name, e.g. `keypair.disable`, `credential.revoke`, `request-log.clear`. */
  event: string;
  /** Who did it: a Hawk id, `admin` (Bearer token), `cli:<os user>`, or `system`. */
  actor: string;
  keypairId?: string | null;
  /** Small JSON facts (never key material or secrets). */
  detail?: Record<string, unknown>;
  /** The face it happened in; by default derived from the actor (see `principalOf`). */
  face?: string;
  /** What it concerned, when not the keypair (`{kind: 'credential', id}`, `{kind: 'key-alias', id}`). */
  subject?: { kind: string; id: string };
}

/** Who acted, as audit v2 names it. */
export interface AuditPrincipal {
  kind: 'hawk' | 'admin-token' | 'cli' | 'system' | (string & {});
  id: string;
}

/**
 * The principal an event's actor names: `system`, `admin` (the admin bearer token), `cli:<os
 * user>`, otherwise a Hawk id; `unauthenticated`/`unknown` name nobody.
 */
export function principalOf(actor: string): AuditPrincipal | null {
  if (actor === '' || actor === 'unauthenticated' || actor === 'unknown') return null;
  if (actor === 'system') return { kind: 'system', id: 'system' };
  if (actor === 'admin') return { kind: 'admin-token', id: 'admin' };
  if (actor.startsWith('cli:')) return { kind: 'cli', id: actor };
  return { kind: 'hawk', id: actor };
}

/** The face an event belongs to when it does not say: where its principal comes from. */
export function faceOf(principal: AuditPrincipal | null): string {
  switch (principal?.kind) {
    case 'hawk':
      return 'lkm';
    case 'admin-token':
      return 'admin';
    case 'cli':
      return 'cli';
    default:
      return 'core';
  }
}

/** Records an event durably (database or spool) before resolving; rejects if it cannot. */
export type RecordAuditEvent = (event: AuditEvent) => Promise<void>;

declare module 'fastify' {
  interface FastifyInstance {
    /** Records an audited event in the request log's hash chain (see src/audit). */
    audit: RecordAuditEvent;
  }
}
