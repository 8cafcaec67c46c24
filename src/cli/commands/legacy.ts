import { KeypairRepository } from '../../db/keypairs.js';
import { importLegacyRows } from '../../legacy/import.js';
import { LegacySourceError, readExportFile, readMysql, redactUrl, type LegacyRow } from '../../legacy/source.js';
import { CommandFailed, UsageError, type Command } from '../command.js';
import { withContext } from '../context.js';
import { Progress, printJson, readSecret, say } from '../io.js';

const PASSWORD_VAR = 'LEGACY_MYSQL_PASSWORD';

/**
 * The source's password never comes from argv: a URL carrying one is refused (without echoing
 * it), and LEGACY_MYSQL_PASSWORD or LEGACY_MYSQL_PASSWORD_FILE supplies it instead.
 */
async function mysqlUrl(from: string, env: NodeJS.ProcessEnv, io: Parameters<typeof readSecret>[0]): Promise<string> {
  let url: URL;
  try {
    url = new URL(from);
  } catch {
    throw new UsageError('--from must be a mysql://user@host:port/database URL');
  }
  if (url.protocol !== 'mysql:' && url.protocol !== 'mariadb:') throw new UsageError('--from must be a mysql:// or mariadb:// URL');
  if (url.password !== '') {
    throw new UsageError(
      `--from carries a password: secrets are never taken from the command line; give ${redactUrl(from)} ` +
        `and put the password in ${PASSWORD_VAR} or ${PASSWORD_VAR}_FILE`,
    );
  }
  if (env[PASSWORD_VAR] || env[`${PASSWORD_VAR}_FILE`]) {
    url.password = encodeURIComponent(await readSecret(io, PASSWORD_VAR, 'MySQL password'));
  }
  return url.toString();
}

const importLegacy: Command = {
  words: ['keys', 'import-legacy'],
  synopsis: '--from mysql://user@host:port/db | --file export.json|export.csv',
  summary: "move the example service's keypair table into the token, keeping ids and dates (idempotent; exit 1 if any row failed)",
  options: { from: { type: 'string' }, file: { type: 'string' } },
  async run({ positionals, values, io }) {
    if (positionals.length > 0) throw new UsageError('keys import-legacy takes no arguments besides --from or --file');
    const from = values.from as string | undefined;
    const file = values.file as string | undefined;
    if ((from === undefined) === (file === undefined)) throw new UsageError('give exactly one of --from <mysql URL> or --file <export.json|export.csv>');
    const source = from !== undefined ? redactUrl(from) : (file as string);

    let rows: LegacyRow[];
    try {
      rows = from !== undefined ? await readMysql(await mysqlUrl(from, io.env, io)) : await readExportFile(file as string);
    } catch (err) {
      if (err instanceof LegacySourceError) throw new CommandFailed(err.message);
      throw err;
    }

    const summary = await withContext(io.env, async (ctx) => {
      say(io, `importing ${rows.length} keypair${rows.length === 1 ? '' : 's'} from ${source} into token "${ctx.keyStore.token.label}"`);
      const progress = new Progress(io, 'import', rows.length);
      const result = await importLegacyRows(rows, { keyStore: ctx.keyStore, keypairs: new KeypairRepository(ctx.db) }, () =>
        progress.tick(),
      );
      const imported = result.results.filter((r) => r.status === 'imported').map((r) => r.id);
      // One event for the run: the ids it brought into the token (failures change nothing).
      if (imported.length > 0) {
        await ctx.audit({ event: 'keypair.import-legacy', actor: ctx.actor, detail: { source, imported } });
      }
      return result;
    });

    if (io.json) {
      printJson(io, summary);
    } else {
      for (const r of summary.results) if (r.status === 'failed') io.stderr.write(`failed  ${r.id}: ${r.reason}\n`);
      io.stdout.write(`imported ${summary.imported}, skipped ${summary.skipped}, failed ${summary.failed}\n`);
    }
    return summary.failed > 0 ? 1 : 0;
  },
};

export const legacyCommands: Command[] = [importLegacy];
