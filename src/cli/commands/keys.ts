import { KeypairRepository } from '../../db/keypairs.js';
import { DELETION_DAYS, KeyLifecycle, type KeypairAdminView } from '../../keys/lifecycle.js';
import { UsageError, type Command, type CommandArgs } from '../command.js';
import { withContext, type CliContext } from '../context.js';
import { confirm, printJson, printTable, say } from '../io.js';

function lifecycleOf(ctx: CliContext): KeyLifecycle {
  return new KeyLifecycle({ keypairs: new KeypairRepository(ctx.db), keyStore: ctx.keyStore, audit: ctx.audit });
}

function oneId(args: CommandArgs, words: string): string {
  if (args.positionals.length !== 1) throw new UsageError(`${words} takes exactly one argument: the keypair id`);
  return args.positionals[0] as string;
}

function printKeypair(args: CommandArgs, keypair: KeypairAdminView, done: string): void {
  if (args.io.json) printJson(args.io, keypair);
  else args.io.stdout.write(`${done}: ${keypair.id} is now ${keypair.state.replace('_', ' ')}` +
    `${keypair.deleteAfter && keypair.state === 'pending_deletion' ? ` (purgeable after ${keypair.deleteAfter})` : ''}\n`);
}

const list: Command = {
  words: ['keys', 'list'],
  synopsis: '[--pool]',
  summary: 'keypairs with id, created, owner, state, and whether the token really holds the key (--pool: include unassigned pool keys)',
  options: { pool: { type: 'boolean' } },
  async run({ io, values }) {
    const keypairs = await withContext(io.env, (ctx) =>
      lifecycleOf(ctx).list({ checkToken: true, includePool: values.pool === true }),
    );
    if (io.json) {
      printJson(io, keypairs.map(({ publicKey: _omit, ...rest }) => rest));
      return;
    }
    printTable(
      io,
      ['ID', 'CREATED', 'OWNER', 'STATE', 'DELETE AFTER', 'IN TOKEN'],
      keypairs.map((k) => [k.id, k.dateCreated, k.owner, k.state, k.deleteAfter, k.inToken ? 'yes' : 'NO']),
    );
    const missing = keypairs.filter((k) => !k.inToken && k.state !== 'deleted').length;
    say(io, `${keypairs.length} keypair(s)${missing > 0 ? `; ${missing} missing from the token: run strongroom doctor` : ''}`);
    // A keypair the token lacks is a failure the operator must see in the exit code too.
    if (missing > 0) return 1;
  },
};

const disable: Command = {
  words: ['keys', 'disable'],
  synopsis: '<id>',
  summary: 'stop a keypair from decrypting (running instances refuse it within seconds); reversible with keys enable',
  async run(args) {
    const id = oneId(args, 'keys disable');
    printKeypair(args, await withContext(args.io.env, (ctx) => lifecycleOf(ctx).disable(id, ctx.actor)), 'disabled');
  },
};

const enable: Command = {
  words: ['keys', 'enable'],
  synopsis: '<id>',
  summary: 'let a disabled keypair decrypt again',
  async run(args) {
    const id = oneId(args, 'keys enable');
    printKeypair(args, await withContext(args.io.env, (ctx) => lifecycleOf(ctx).enable(id, ctx.actor)), 'enabled');
  },
};

const scheduleDeletion: Command = {
  words: ['keys', 'schedule-deletion'],
  synopsis: `<id> [--days N]`,
  summary: `refuse decrypts now and allow keys purge to destroy the key after N days (${DELETION_DAYS.min}–${DELETION_DAYS.max}, default ${DELETION_DAYS.default})`,
  options: { days: { type: 'string' } },
  async run(args) {
    const id = oneId(args, 'keys schedule-deletion');
    const days = args.values.days;
    if (days !== undefined && (typeof days !== 'string' || !/^\d+$/.test(days))) {
      throw new UsageError(`--days must be a whole number of days from ${DELETION_DAYS.min} to ${DELETION_DAYS.max}`);
    }
    const keypair = await withContext(args.io.env, (ctx) => lifecycleOf(ctx).scheduleDeletion(id, days, ctx.actor));
    printKeypair(args, keypair, 'deletion scheduled');
  },
};

const cancelDeletion: Command = {
  words: ['keys', 'cancel-deletion'],
  synopsis: '<id>',
  summary: 'cancel a scheduled deletion; the keypair stays disabled until keys enable',
  async run(args) {
    const id = oneId(args, 'keys cancel-deletion');
    printKeypair(args, await withContext(args.io.env, (ctx) => lifecycleOf(ctx).cancelDeletion(id, ctx.actor)), 'deletion cancelled');
  },
};

const purge: Command = {
  words: ['keys', 'purge'],
  synopsis: '',
  summary: 'destroy in the token the keys whose scheduled deletion date has passed (asks first; --yes in scripts)',
  async run({ io }) {
    return withContext(io.env, async (ctx) => {
      const lifecycle = lifecycleOf(ctx);
      const due = await lifecycle.due();
      if (due.length > 0) {
        if (!io.json) {
          printTable(io, ['ID', 'OWNER', 'DELETE AFTER'], due.map((k) => [k.id, k.owner, k.deleteAfter]));
        }
        const ok = await confirm(io, `Destroy ${due.length} key(s) in token "${ctx.keyStore.token.label}"? This cannot be undone`);
        if (!ok) {
          say(io, 'nothing destroyed');
          return 1;
        }
      }
      const { purged } = await lifecycle.purge(ctx.actor);
      if (io.json) printJson(io, { purged });
      else io.stdout.write(`${purged.length} key(s) destroyed\n`);
      return 0;
    });
  },
};

export const keysCommands: Command[] = [list, disable, enable, scheduleDeletion, cancelDeletion, purge];
