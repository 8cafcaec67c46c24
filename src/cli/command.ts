import type { ParseArgsConfig } from 'node:util';
import type { CliIo } from './io.js';

/** A command's parsed arguments: positionals after the command words, and its options. */
export interface CommandArgs {
  positionals: string[];
  values: Record<string, string | boolean | string[] | boolean[] | undefined>;
  io: CliIo;
}

/**
 * One `strongroom` command. Commands are thin: they parse, confirm, call services over the same
 * config and hsm/ code as the service, and print (a table for people, `--json` for scripts).
 */
export interface Command {
  /** The command words, e.g. ['keys', 'backup']. */
  words: string[];
  /** Argument synopsis after the words, e.g. '--out FILE'. */
  synopsis: string;
  /** One line for the usage text. */
  summary: string;
  /** Options beyond the global --json, --yes and --help. */
  options?: ParseArgsConfig['options'];
  /** Exit code; resolving without one means 0. */
  run(args: CommandArgs): Promise<number | void>;
}

/** Wrong use of the command line: exit 2 with the usage text. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** A command that refused or failed in a way already explained to the user: exit 1. */
export class CommandFailed extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CommandFailed';
  }
}
