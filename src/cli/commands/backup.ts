import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { makeBackup, parseBackup, restoreKey, verifyBackup, type BackupKeyMeta } from '../../../hsm/backup.js';
import { HsmError } from '../../../hsm/index.js';
import { openTokenSession, type TokenSession } from '../../../hsm/token-admin.js';
import { KEY_HOLDING_STATES, KeypairRepository, type KeypairState } from '../../db/keypairs.js';
import { CommandFailed, UsageError, type Command } from '../command.js';
import { withContext, type CliContext } from '../context.js';
import { Progress, printJson, say } from '../io.js';
import { writeOutput } from './kek.js';

function fileOption(values: Record<string, unknown>, name: string): string {
  const v = values[name];
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${name} FILE is required`);
  return v;
}

/** A ceremony session on the service's token, logged in as the user (the key store already is). */
function userSession(ctx: CliContext): TokenSession {
  const ts = openTokenSession(ctx.config.pkcs11.modulePath, ctx.config.pkcs11.tokenLabel);
  try {
    ts.login('user', ctx.config.pkcs11.pin.reveal());
    return ts;
  } catch (err) {
    ts.close();
    throw err;
  }
}

const backup: Command = {
  words: ['keys', 'backup'],
  synopsis: '--out FILE',
  summary: 'write every key, wrapped by the token under the backup KEK (AES key wrap with padding), with its metadata to FILE, sealed by an HMAC',
  options: { out: { type: 'string' } },
  async run({ positionals, values, io }) {
    if (positionals.length > 0) throw new UsageError('keys backup takes no positional arguments');
    const out = fileOption(values, 'out');
    const summary = await withContext(io.env, async (ctx) => {
      const rows = (await new KeypairRepository(ctx.db).listAll()).filter((r) => KEY_HOLDING_STATES.includes(r.state));
      const keys: BackupKeyMeta[] = rows.map((r) => ({
        id: r.id,
        publicKey: r.publicKey,
        modulusBits: r.modulusBits,
        dateCreated: r.dateCreated,
        owner: r.owner,
        state: r.state,
      }));
      const progress = new Progress(io, 'backup', keys.length);
      const ts = userSession(ctx);
      let result;
      try {
        result = makeBackup(ts, keys, () => progress.tick());
      } finally {
        ts.close();
      }
      await writeOutput(io, out, result.bytes);
      await ctx.audit({
        event: 'keys.backup',
        actor: '',
        detail: { file: basename(out), kekId: result.kekId, keys: result.written, failed: result.failures.length },
      });
      return { file: out, token: ctx.config.pkcs11.tokenLabel, kekId: result.kekId, keys: result.written, failures: result.failures };
    });
    if (io.json) printJson(io, summary);
    else {
      for (const f of summary.failures) say(io, `  ${f.id}: ${f.reason}`);
      io.stdout.write(
        `${summary.keys} key${summary.keys === 1 ? '' : 's'} of token "${summary.token}" backed up under KEK ${summary.kekId} to ${summary.file}` +
          `${summary.failures.length > 0 ? `; ${summary.failures.length} FAILED` : ''}\n`,
      );
    }
    return summary.failures.length > 0 ? 1 : 0;
  },
};

const restore: Command = {
  words: ['keys', 'restore'],
  synopsis: '--in FILE',
  summary: 'check FILE (KEK and HMAC) before touching anything, then unwrap each key into the token, verify it, and record it; keys already present are skipped',
  options: { in: { type: 'string' } },
  async run({ positionals, values, io }) {
    if (positionals.length > 0) throw new UsageError('keys restore takes no positional arguments');
    const input = fileOption(values, 'in');
    let bytes: Buffer;
    try {
      bytes = readFileSync(input);
    } catch (err) {
      throw new CommandFailed(`cannot read ${input} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
    // Shape first: a damaged file is refused before a database or token is even opened.
    const parsed = parseBackup(bytes);
    const summary = await withContext(io.env, async (ctx) => {
      const repo = new KeypairRepository(ctx.db);
      const ts = userSession(ctx);
      let restored = 0;
      let present = 0;
      const failures: { id: string; reason: string }[] = [];
      try {
        verifyBackup(ts, parsed);
        const progress = new Progress(io, 'restore', parsed.keys.length);
        for (const key of parsed.keys) {
          try {
            const outcome = restoreKey(ts, parsed, key.id);
            const recorded = (await repo.find(key.id)) !== undefined;
            if (!recorded) {
              await repo.insert({
                id: key.id,
                publicKey: key.publicKey,
                modulusBits: key.modulusBits,
                dateCreated: key.dateCreated,
                owner: key.owner,
                state: key.state as KeypairState,
                origin: 'restored',
              });
            }
            if (outcome === 'restored' || !recorded) restored += 1;
            else present += 1;
          } catch (err) {
            failures.push({ id: key.id, reason: err instanceof HsmError ? err.message : 'could not be recorded in the database' });
          }
          progress.tick();
        }
      } finally {
        ts.close();
      }
      await ctx.audit({
        event: 'keys.restore',
        actor: '',
        detail: { file: basename(input), kekId: parsed.kek.id, sourceToken: parsed.token.serial, restored, present, failed: failures.length },
      });
      return { file: input, token: ctx.config.pkcs11.tokenLabel, kekId: parsed.kek.id, restored, alreadyPresent: present, failures };
    });
    if (io.json) printJson(io, summary);
    else {
      for (const f of summary.failures) say(io, `  ${f.id}: ${f.reason}`);
      io.stdout.write(
        `restored ${summary.restored}, already present ${summary.alreadyPresent}, failed ${summary.failures.length} ` +
          `(backup KEK ${summary.kekId}, token "${summary.token}")\n`,
      );
    }
    return summary.failures.length > 0 ? 1 : 0;
  },
};

export const backupCommands: Command[] = [backup, restore];
