import { userInfo } from 'node:os';
import { openPkcs11KeyStore, type KeyStore } from '../../hsm/index.js';
import type { RecordAuditEvent } from '../audit/events.js';
import { AuditWriter } from '../audit/writer.js';
import { loadConfig, type Config } from '../config.js';
import { resolveCryptValues } from '../config-crypt.js';
import type { Database } from '../db/database.js';
import { openDatabase } from '../db/open.js';
import { ensureServiceKeys } from '../service-keys.js';

export interface CliContext {
  config: Config;
  db: Database;
  keyStore: KeyStore;
  /** Records an audit event in the service's chain; an empty actor becomes {@link CliContext.actor}. */
  audit: RecordAuditEvent;
  /** `cli:<os user>`: who CLI events are attributed to. */
  actor: string;
}

/** The operating-system user running the command, for audit attribution. */
function osUser(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER ?? 'unknown';
  }
}

/**
 * Open what a command needs from the same configuration as the service (environment only:
 * secrets never come from argv), run it, and close everything whatever happens.
 */
export async function withContext<T>(env: NodeJS.ProcessEnv, fn: (ctx: CliContext) => Promise<T>): Promise<T> {
  const config = loadConfig(await resolveCryptValues(env));
  const db = await openDatabase(config.database);
  try {
    const keyStore = await openPkcs11KeyStore({
      modulePath: config.pkcs11.modulePath,
      tokenLabel: config.pkcs11.tokenLabel,
      pin: config.pkcs11.pin.reveal(),
      sessions: 1,
    });
    try {
      await ensureServiceKeys(db, keyStore);
      // No spool here: a command that cannot audit fails, and the operator sees it at once.
      const writer = new AuditWriter({ db });
      const actor = `cli:${osUser()}`;
      const audit: RecordAuditEvent = (event) => writer.recordEvent({ ...event, actor: event.actor || actor });
      try {
        return await fn({ config, db, keyStore, audit, actor });
      } finally {
        await writer.close();
      }
    } finally {
      await keyStore.close();
    }
  } finally {
    await db.close();
  }
}
