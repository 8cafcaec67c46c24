import { CredentialRepository } from '../../db/credentials.js';
import { CredentialService } from '../../lkm/credentials.js';
import { UsageError, type Command } from '../command.js';
import { withContext } from '../context.js';

const register: Command = {
  words: ['auth', 'register'],
  synopsis: '<id>',
  summary: 'create a Hawk credential for Genesys Cloud and print it as JSON ({"id","authKey","algorithm"}); the authKey is shown only this once',
  async run({ positionals, io }) {
    if (positionals.length !== 1) throw new UsageError('auth register takes exactly one argument: the credential id');
    const id = positionals[0] as string;
    const credential = await withContext(io.env, async ({ db, keyStore }) =>
      new CredentialService({ repo: new CredentialRepository(db), keyStore }).register(id),
    );
    io.stdout.write(`${JSON.stringify(credential)}\n`);
  },
};

export const authCommands: Command[] = [register];
