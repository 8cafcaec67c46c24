import { randomUUID } from 'node:crypto';
import type { AuditRecord } from '../../src/audit/chain.js';

/** An LKM request entry as the request-log plugin writes it (a fresh uid, now), with overrides. */
export function lkmRequestRecord(over: Partial<AuditRecord> = {}): AuditRecord {
  return {
    uid: randomUUID(),
    loggedAt: new Date(),
    userId: 'genesys-user',
    method: 'POST',
    uri: '/key-management/v1/decrypt',
    hawkId: 'genesys',
    statusCode: 200,
    keypairId: null,
    clientAddress: '127.0.0.1',
    event: null,
    actor: null,
    detail: null,
    face: 'lkm',
    principalKind: 'hawk',
    principalId: 'genesys',
    subjectKind: null,
    subjectId: null,
    ...over,
  };
}
