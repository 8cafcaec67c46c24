import { X509Certificate } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import { HsmError, openPkcs11KeyStore, type KeyStore } from '../../../hsm/index.js';
import { loadModule } from '../../../hsm/module.js';
import { listSlots } from '../../../hsm/token-admin.js';
import { ConfigError, loadConfig, type Config, type TlsConfig } from '../../config.js';
import { resolveCryptValues } from '../../config-crypt.js';
import type { Database } from '../../db/database.js';
import { openEmbedded } from '../../db/embedded.js';
import { CORE_COMPONENT, migrations } from '../../db/migrations.js';
import { openPostgres } from '../../db/postgres.js';
import { findKeyInconsistencies } from '../../keys/reconcile.js';
import { UsageError, type Command } from '../command.js';
import { printJson } from '../io.js';

/** One line of the report. `detail` never carries a secret. */
export interface DoctorCheck {
  check: string;
  ok: boolean;
  detail: string;
}

const DAY_MS = 86_400_000;
/** A certificate expiring sooner than this fails: time to renew it, not to find out from Genesys. */
const TLS_MIN_DAYS = 30;

/** The message of an error we made ourselves; for foreign ones only their code (may quote settings). */
function reason(err: unknown): string {
  if (err instanceof HsmError) return err.ckr ? `${err.message} (${err.ckr})` : err.message;
  if (err instanceof ConfigError) return err.problems.join('; ');
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string') return code;
  return err instanceof Error ? err.name : 'failed';
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** The leaf certificate of the configured TLS material. */
function leafCertificate(tls: TlsConfig): X509Certificate {
  if (tls.kind === 'pem') return new X509Certificate(tls.cert);
  const options = tls.passphrase ? { pfx: tls.pfx.reveal(), passphrase: tls.passphrase.reveal() } : { pfx: tls.pfx.reveal() };
  // Node parses PKCS#12 only inside a secure context; its native handle hands the leaf back.
  const native = (createSecureContext(options) as unknown as { context: { getCertificate?: () => Buffer | null } }).context;
  const der = native.getCertificate?.();
  if (!der) throw Object.assign(new Error('no certificate in the PKCS#12 file'), { code: 'NO_CERTIFICATE' });
  return new X509Certificate(der);
}

export function checkTls(tls: TlsConfig | undefined, now: number): DoctorCheck {
  if (!tls) return { check: 'tls', ok: true, detail: 'not configured (HTTPS must then be terminated by a proxy)' };
  let cert: X509Certificate;
  try {
    cert = leafCertificate(tls);
  } catch (err) {
    return { check: 'tls', ok: false, detail: `the certificate does not parse (${reason(err)})` };
  }
  const notBefore = Date.parse(cert.validFrom);
  const notAfter = Date.parse(cert.validTo);
  const subject = cert.subject.replace(/\n/g, ', ');
  if (notBefore > now) return { check: 'tls', ok: false, detail: `${subject}: not valid before ${new Date(notBefore).toISOString()}` };
  if (notAfter <= now) return { check: 'tls', ok: false, detail: `${subject}: expired ${new Date(notAfter).toISOString()}` };
  const days = Math.floor((notAfter - now) / DAY_MS);
  if (notAfter - now < TLS_MIN_DAYS * DAY_MS) {
    return { check: 'tls', ok: false, detail: `${subject}: expires in ${plural(days, 'day')} (${new Date(notAfter).toISOString()}); renew it` };
  }
  return { check: 'tls', ok: true, detail: `${subject}: valid until ${new Date(notAfter).toISOString()} (${plural(days, 'day')})` };
}

/** Open the database without migrating it: the doctor looks, it does not change anything. */
async function openForCheck(config: Config): Promise<Database> {
  return config.database.kind === 'postgres'
    ? openPostgres({ url: config.database.url.reveal(), poolSize: 1 })
    : openEmbedded({ dataDir: config.database.dataDir });
}

async function checkSchema(db: Database): Promise<DoctorCheck> {
  const known = Math.max(0, ...migrations.map((m) => m.version));
  const { rows } = await db.query<{ exists: boolean }>("SELECT to_regclass('schema_migration') IS NOT NULL AS exists");
  if (!rows[0]?.exists) return { check: 'database', ok: false, detail: `reachable (${db.kind}) but never migrated; start the service once` };
  // Keyed by component since faces; a table from before them holds the core's rows only.
  const { rows: c } = await db.query<{ has: boolean }>(
    "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'schema_migration'::regclass AND attname = 'component' AND NOT attisdropped) AS has",
  );
  const { rows: v } = await db.query<{ newest: number | null }>(
    c[0]?.has ? `SELECT max(version) AS newest FROM schema_migration WHERE component = '${CORE_COMPONENT}'` : 'SELECT max(version) AS newest FROM schema_migration',
  );
  const newest = Number(v[0]?.newest ?? 0);
  if (newest < known) return { check: 'database', ok: false, detail: `schema version ${newest}, this build needs ${known}; start the service to migrate` };
  if (newest > known) return { check: 'database', ok: false, detail: `schema version ${newest} is newer than this build (${known}); upgrade strongroom` };
  return { check: 'database', ok: true, detail: `reachable (${db.kind}), schema version ${newest}` };
}

/** Every check, in order; a check whose prerequisite failed is reported as not run (a failure). */
export async function runDoctor(env: NodeJS.ProcessEnv, now = Date.now()): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  const notRun = (names: string[], why: string) => names.forEach((check) => checks.push({ check, ok: false, detail: `not checked: ${why}` }));

  let config: Config;
  try {
    config = loadConfig(await resolveCryptValues(env));
    checks.push({ check: 'config', ok: true, detail: 'valid' });
  } catch (err) {
    checks.push({ check: 'config', ok: false, detail: reason(err) });
    notRun(['module', 'token', 'mechanisms', 'custody', 'database', 'tls', 'keys'], 'configuration invalid');
    return checks;
  }
  const { modulePath, tokenLabel } = config.pkcs11;

  let moduleOk = false;
  try {
    loadModule(modulePath).release();
    moduleOk = true;
    checks.push({ check: 'module', ok: true, detail: `${modulePath} loads` });
  } catch (err) {
    checks.push({ check: 'module', ok: false, detail: reason(err) });
  }

  let keyStore: KeyStore | undefined;
  let db: Database | undefined;
  try {
    if (moduleOk) {
      try {
        keyStore = await openPkcs11KeyStore({ modulePath, tokenLabel, pin: config.pkcs11.pin.reveal(), sessions: 1 });
        checks.push({ check: 'token', ok: true, detail: `"${tokenLabel}" (serial ${keyStore.token.serialNumber}) present, logged in` });
      } catch (err) {
        checks.push({ check: 'token', ok: false, detail: reason(err) });
      }
      try {
        const slots = listSlots(modulePath).filter((s) => s.label === tokenLabel);
        const m = slots.length === 1 ? slots[0]?.capabilities : undefined;
        if (!m) throw new HsmError('HSM_ERR_TOKEN_NOT_FOUND', `${slots.length === 0 ? 'no' : slots.length} tokens labelled "${tokenLabel}"`);
        const missing = [
          ...(m.rsa3072Generate ? [] : ['RSA-3072 generation']),
          ...(m.oaepSha1 === true ? [] : ['RSA-OAEP SHA-1']),
          ...(m.pkcs1 ? [] : ['RSA PKCS#1 v1.5']),
          ...(m.aesKeyWrapPad ? [] : ['AES key wrap with padding']),
        ];
        checks.push(
          missing.length === 0
            ? { check: 'mechanisms', ok: true, detail: 'RSA-3072 generation, RSA-OAEP SHA-1, RSA PKCS#1 v1.5, AES key wrap with padding' }
            : { check: 'mechanisms', ok: false, detail: `missing: ${missing.join(', ')}` },
        );
      } catch (err) {
        checks.push({ check: 'mechanisms', ok: false, detail: reason(err) });
      }
    } else {
      notRun(['token', 'mechanisms'], 'the module does not load');
    }

    if (keyStore) {
      try {
        const custody = await keyStore.checkCustody();
        checks.push(
          custody.wrapWithTrusted === 'enforced'
            ? { check: 'custody', ok: true, detail: 'the token refuses to wrap a CKA_WRAP_WITH_TRUSTED key under an ordinary key' }
            : {
                check: 'custody',
                ok: false,
                detail:
                  custody.wrapWithTrusted === 'not-enforced'
                    ? `CKA_WRAP_WITH_TRUSTED is not enforced (${custody.detail}): anyone with the user PIN could export the keys`
                    : `could not verify CKA_WRAP_WITH_TRUSTED (${custody.detail})`,
              },
        );
      } catch (err) {
        checks.push({ check: 'custody', ok: false, detail: reason(err) });
      }
    } else {
      notRun(['custody'], 'no logged-in token');
    }

    let schemaOk = false;
    try {
      db = await openForCheck(config);
      const result = await checkSchema(db);
      schemaOk = result.ok;
      checks.push(result);
    } catch (err) {
      checks.push({ check: 'database', ok: false, detail: `unreachable (${reason(err)})` });
    }

    checks.push(checkTls(config.tls, now));

    if (keyStore && db && schemaOk) {
      try {
        const { rowsWithoutKey, keysWithoutRow } = await findKeyInconsistencies(db, keyStore);
        const problems = [
          ...(rowsWithoutKey.length > 0 ? [`${plural(rowsWithoutKey.length, 'keypair')} without a key in the token: ${rowsWithoutKey.join(', ')}`] : []),
          ...(keysWithoutRow.length > 0 ? [`${plural(keysWithoutRow.length, 'key')} in the token without a keypair row: ${keysWithoutRow.join(', ')}`] : []),
        ];
        checks.push(
          problems.length === 0
            ? { check: 'keys', ok: true, detail: 'every keypair has its key in the token, and every key its keypair' }
            : { check: 'keys', ok: false, detail: problems.join('; ') },
        );
      } catch (err) {
        checks.push({ check: 'keys', ok: false, detail: reason(err) });
      }
    } else {
      notRun(['keys'], keyStore ? 'the database is not usable' : 'no logged-in token');
    }
  } finally {
    await db?.close().catch(() => undefined);
    await keyStore?.close().catch(() => undefined);
  }
  return checks;
}

const doctor: Command = {
  words: ['doctor'],
  synopsis: '',
  summary: 'check module, token, mechanisms, custody, database, TLS and key consistency; exit 0 only if all pass',
  async run({ positionals, io }) {
    if (positionals.length > 0) throw new UsageError('doctor takes no arguments');
    const checks = await runDoctor(io.env);
    const ok = checks.every((c) => c.ok);
    if (io.json) {
      printJson(io, { ok, checks });
    } else {
      const width = Math.max(...checks.map((c) => c.check.length));
      for (const c of checks) io.stdout.write(`${c.ok ? 'ok  ' : 'FAIL'}  ${c.check.padEnd(width)}  ${c.detail}\n`);
    }
    return ok ? 0 : 1;
  },
};

export const doctorCommands: Command[] = [doctor];
