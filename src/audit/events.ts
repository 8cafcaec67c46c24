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
}

/** Records an event durably (database or spool) before resolving; rejects if it cannot. */
export type RecordAuditEvent = (event: AuditEvent) => Promise<void>;

declare module 'fastify' {
  interface FastifyInstance {
    /** Records an audited event in the request log's hash chain (see src/audit). */
    audit: RecordAuditEvent;
  }
}
