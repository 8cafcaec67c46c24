#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { HsmError } from '../../hsm/index.js';
import { ConfigError } from '../config.js';
import { CredentialRepository } from '../db/credentials.js';
import { EmbeddedDatabaseLockedError } from '../db/embedded.js';
import { DatabaseUnavailableError } from '../db/unavailable.js';
import { AppError } from '../errors.js';
import { CredentialService } from '../lkm/credentials.js';
import { withContext } from './context.js';

const USAGE = `usage: strongroom <command>

commands:
  auth register <id>   create a Hawk credential for Genesys Cloud and print it as JSON
                       ({"id","authKey","algorithm"}); the authKey is shown only this once

Configuration comes from the environment, exactly as for the service (see README):
PKCS11_PIN or PKCS11_PIN_FILE, PKCS11_TOKEN_LABEL, PKCS11_MODULE, DATABASE_URL or DATA_DIR.
Secrets are never read from the command line.
`;

/** Exit codes: 0 done, 1 refused or failed, 2 usage or configuration error. */
class UsageError extends Error {}

async function authRegister(positionals: string[]): Promise<void> {
  if (positionals.length !== 1) throw new UsageError('auth register takes exactly one argument: the credential id');
  const id = positionals[0] as string;
  const credential = await withContext(process.env, async ({ db, keyStore }) =>
    new CredentialService({ repo: new CredentialRepository(db), keyStore }).register(id),
  );
  process.stdout.write(`${JSON.stringify(credential)}\n`);
}

async function main(argv: string[]): Promise<void> {
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: { help: { type: 'boolean', short: 'h' } },
  });
  const [group, command, ...rest] = positionals;
  if (values.help || group === undefined || group === 'help') {
    process.stdout.write(USAGE);
    return;
  }
  if (group === 'auth' && command === 'register') return authRegister(rest);
  throw new UsageError(`unknown command: ${positionals.join(' ')}`);
}

main(process.argv.slice(2)).then(
  () => process.exit(0),
  (err: unknown) => {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`strongroom: ${(err as Error).message}\n\n${USAGE}`);
      process.exit(2);
    }
    if (err instanceof ConfigError) {
      process.stderr.write(`strongroom: ${err.message}\n`);
      process.exit(2);
    }
    const known =
      err instanceof AppError ||
      err instanceof HsmError ||
      err instanceof EmbeddedDatabaseLockedError ||
      err instanceof DatabaseUnavailableError;
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`strongroom: ${known ? message : `unexpected error: ${message}`}\n`);
    process.exit(1);
  },
);
