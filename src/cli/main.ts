#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { HsmError } from '../../hsm/index.js';
import { ConfigError } from '../config.js';
import { EmbeddedDatabaseLockedError } from '../db/embedded.js';
import { DatabaseUnavailableError } from '../db/unavailable.js';
import { AppError } from '../errors.js';
import { CommandFailed, UsageError, type Command } from './command.js';
import { auditCommands } from './commands/audit.js';
import { backupCommands } from './commands/backup.js';
import { kekCommands } from './commands/kek.js';
import { keysCommands } from './commands/keys.js';
import { tokenCommands } from './commands/token.js';
import { doctorCommands } from './commands/doctor.js';
import { encryptSecretCommands } from './commands/encrypt-secret.js';
import { legacyCommands } from './commands/legacy.js';
import { processIo } from './io.js';
import { knownFaces } from '../faces/index.js';

/** Every command; the usage text lists them in this order. */
const COMMANDS: Command[] = [...knownFaces().flatMap((face) => face.cli ?? []), ...legacyCommands, ...encryptSecretCommands, ...doctorCommands, ...auditCommands, ...tokenCommands, ...kekCommands, ...backupCommands, ...keysCommands];

const GLOBAL_OPTIONS = {
  help: { type: 'boolean', short: 'h' },
  json: { type: 'boolean' },
  yes: { type: 'boolean', short: 'y' },
} as const;

function usage(): string {
  const lines = COMMANDS.map((c) => {
    const head = `  ${[...c.words, c.synopsis].filter(Boolean).join(' ')}`;
    return head.length < 40 ? `${head.padEnd(40)}${c.summary}` : `${head}\n${' '.repeat(40)}${c.summary}`;
  });
  return `usage: strongroom <command> [--json] [--yes]

commands:
${lines.join('\n')}

Configuration comes from the environment, exactly as for the service (see README):
PKCS11_PIN or PKCS11_PIN_FILE, PKCS11_TOKEN_LABEL, PKCS11_MODULE, DATABASE_URL or DATA_DIR.
Secrets are never read from the command line. --json prints one JSON document for scripts;
--yes confirms destructive steps without a prompt.
`;
}

/** The command whose words start `positionals` (the longest match). */
function find(positionals: string[]): Command | undefined {
  let best: Command | undefined;
  for (const c of COMMANDS) {
    if (c.words.every((w, i) => positionals[i] === w) && (!best || c.words.length > best.words.length)) best = c;
  }
  return best;
}

async function main(argv: string[]): Promise<number | void> {
  const loose = parseArgs({ args: argv, allowPositionals: true, strict: false, options: GLOBAL_OPTIONS });
  const unknown = Object.keys(loose.values).filter((k) => !(k in GLOBAL_OPTIONS));
  const command = find(loose.positionals);
  if (!command) {
    // Name the option, never echo what followed it: it may be a secret someone tried to pass.
    if (unknown.length > 0) throw new UsageError(`unknown option --${unknown[0]}`);
    if (loose.values.help || loose.positionals.length === 0 || loose.positionals[0] === 'help') {
      process.stdout.write(usage());
      return 0;
    }
    throw new UsageError(`unknown command: ${loose.positionals.join(' ')}`);
  }
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: { ...GLOBAL_OPTIONS, ...command.options },
  });
  if (values.help) {
    process.stdout.write(usage());
    return 0;
  }
  const io = processIo({ json: values.json === true, yes: values.yes === true });
  return command.run({ positionals: positionals.slice(command.words.length), values, io });
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code ?? 0),
  (err: unknown) => {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`strongroom: ${(err as Error).message}\n\n${usage()}`);
      process.exit(2);
    }
    if (err instanceof ConfigError) {
      process.stderr.write(`strongroom: ${err.message}\n`);
      process.exit(2);
    }
    const known =
      err instanceof CommandFailed ||
      err instanceof AppError ||
      err instanceof HsmError ||
      err instanceof EmbeddedDatabaseLockedError ||
      err instanceof DatabaseUnavailableError;
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`strongroom: ${known ? message : `unexpected error: ${message}`}\n`);
    process.exit(1);
  },
);
