import { CredentialRepository } from '../../db/credentials.js';
import { CredentialService } from './credentials.js';
import { CommandFailed, UsageError, type Command } from '../../cli/command.js';
import { withContext } from '../../cli/context.js';
import { confirm, printJson, printTable, say } from '../../cli/io.js';

function oneId(positionals: string[], command: string): string {
  if (positionals.length !== 1) throw new UsageError(`${command} takes exactly one argument: the credential id`);
  return positionals[0] as string;
}

const register: Command = {
  words: ['auth', 'register'],
  synopsis: '<id>',
  summary: 'create a Hawk credential for Genesys Cloud and print it as JSON ({"id","authKey","algorithm"}); the authKey is shown only this once',
  async run({ positionals, io }) {
    const id = oneId(positionals, 'auth register');
    const credential = await withContext(io.env, async (ctx) => {
      const created = await new CredentialService({ repo: new CredentialRepository(ctx.db), keyStore: ctx.keyStore }).register(id);
      await ctx.audit({ event: 'credential.register', actor: ctx.actor, detail: { id } });
      return created;
    });
    io.stdout.write(`${JSON.stringify(credential)}\n`);
  },
};

const list: Command = {
  words: ['auth', 'list'],
  synopsis: '',
  summary: 'list Hawk credentials: id, algorithm, created, revoked (never the key)',
  async run({ positionals, io }) {
    if (positionals.length > 0) throw new UsageError('auth list takes no arguments');
    const rows = await withContext(io.env, ({ db }) => new CredentialRepository(db).list());
    if (io.json) {
      printJson(
        io,
        rows.map((r) => ({
          id: r.id,
          algorithm: r.algorithm,
          createdAt: r.createdAt.toISOString(),
          revokedAt: r.revokedAt?.toISOString() ?? null,
        })),
      );
      return;
    }
    if (rows.length === 0) {
      say(io, 'no credentials; create one with: strongroom auth register <id>');
      return;
    }
    printTable(
      io,
      ['ID', 'ALGORITHM', 'CREATED', 'REVOKED'],
      rows.map((r) => [r.id, r.algorithm, r.createdAt.toISOString(), r.revokedAt?.toISOString() ?? '-']),
    );
  },
};

const revoke: Command = {
  words: ['auth', 'revoke'],
  synopsis: '<id>',
  summary: 'revoke a Hawk credential; every running instance refuses it within 2 seconds (asks first; --yes in scripts)',
  async run({ positionals, io }) {
    const id = oneId(positionals, 'auth revoke');
    const result = await withContext(io.env, async (ctx) => {
      const repo = new CredentialRepository(ctx.db);
      const row = await repo.find(id);
      if (!row) throw new CommandFailed(`no credential "${id}"`);
      if (row.revokedAt !== null) return { revokedAt: row.revokedAt, already: true };
      if (!(await confirm(io, `Revoke Hawk credential "${id}"? Requests signed with it will be refused`))) {
        throw new CommandFailed('not revoked');
      }
      const outcome = await repo.revoke(id);
      if (outcome === 'unknown') throw new CommandFailed(`no credential "${id}"`);
      if (outcome === 'revoked') await ctx.audit({ event: 'credential.revoke', actor: ctx.actor, detail: { id } });
      const after = await repo.find(id);
      return { revokedAt: after?.revokedAt ?? new Date(), already: outcome === 'already-revoked' };
    });
    if (io.json) {
      printJson(io, { id, revoked: true, revokedAt: result.revokedAt.toISOString(), alreadyRevoked: result.already });
      return;
    }
    say(io, result.already ? `credential "${id}" was already revoked` : `credential "${id}" revoked`);
  },
};

const rotate: Command = {
  words: ['auth', 'rotate'],
  synopsis: '<id>',
  summary: 'give a Hawk credential a new key, printed once as JSON like register; the old key is refused within 2 seconds',
  async run({ positionals, io }) {
    const id = oneId(positionals, 'auth rotate');
    const credential = await withContext(io.env, async (ctx) => {
      const repo = new CredentialRepository(ctx.db);
      const row = await repo.find(id);
      if (!row) throw new CommandFailed(`no credential "${id}"`);
      if (row.revokedAt !== null) throw new CommandFailed(`credential "${id}" is revoked; register a new id instead`);
      if (!(await confirm(io, `Replace the key of "${id}"? Genesys Cloud must be given the new key`))) {
        throw new CommandFailed('not rotated');
      }
      const rotated = await new CredentialService({ repo, keyStore: ctx.keyStore }).rotate(id);
      if (!rotated) throw new CommandFailed(`credential "${id}" was revoked or removed meanwhile`);
      await ctx.audit({ event: 'credential.rotate', actor: ctx.actor, detail: { id } });
      return rotated;
    });
    io.stdout.write(`${JSON.stringify(credential)}\n`);
  },
};

export const authCommands: Command[] = [register, list, revoke, rotate];
