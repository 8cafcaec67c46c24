import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { StringDecoder } from 'node:string_decoder';
import type { Readable, Writable } from 'node:stream';
import { UsageError } from './command.js';

/** Where a command reads and writes, and the global flags. */
export interface CliIo {
  stdin: Readable & { isTTY?: boolean; setRawMode?: (raw: boolean) => unknown };
  stdout: Writable & { isTTY?: boolean };
  stderr: Writable & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
  /** Machine output: one JSON document on stdout, nothing decorative. */
  json: boolean;
  /** Destructive steps proceed without asking (scripts). */
  yes: boolean;
}

export function processIo(flags: { json: boolean; yes: boolean }): CliIo {
  return { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, env: process.env, ...flags };
}

/** Print `value` as one line of JSON. */
export function printJson(io: CliIo, value: unknown): void {
  io.stdout.write(`${JSON.stringify(value)}\n`);
}

/** A plain text table: a header row and left-aligned columns. */
export function printTable(io: CliIo, columns: string[], rows: (string | number | boolean | null | undefined)[][]): void {
  const cells = [columns, ...rows.map((r) => r.map((c) => (c === null || c === undefined ? '-' : String(c))))];
  const widths = columns.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  for (const row of cells) {
    io.stdout.write(`${row.map((c, i) => (i === row.length - 1 ? c : (c ?? '').padEnd(widths[i] ?? 0))).join('  ')}\n`);
  }
}

/** A line for people on stderr (suppressed with --json, so stdout stays machine-readable). */
export function say(io: CliIo, line: string): void {
  if (!io.json) io.stderr.write(`${line}\n`);
}

/**
 * Read one line from a terminal without echo. A TTY in its normal (cooked) mode echoes every key
 * itself, whatever readline does; raw mode turns the echo off, so the line is assembled here.
 */
async function readHiddenFromTty(io: CliIo): Promise<string> {
  const input = io.stdin;
  const decoder = new StringDecoder('utf8');
  input.setRawMode?.(true);
  input.resume();
  try {
    return await new Promise<string>((resolve, reject) => {
      let value = '';
      const onData = (chunk: Buffer | string) => {
        const text = typeof chunk === 'string' ? chunk : decoder.write(chunk);
        for (const ch of text) {
          if (ch === '\r' || ch === '\n') {
            cleanup();
            resolve(value);
            return;
          }
          if (ch === '\u0003') {
            cleanup();
            reject(new UsageError('cancelled'));
            return;
          }
          if (ch === '\u0004' && value === '') {
            cleanup();
            reject(new UsageError('no answer: standard input closed'));
            return;
          }
          if (ch === '\u007f' || ch === '\b') value = value.slice(0, -1);
          else if (ch === '\u0015') value = '';
          else if (ch >= ' ') value += ch;
        }
      };
      const onEnd = () => {
        cleanup();
        reject(new UsageError('no answer: standard input closed'));
      };
      const cleanup = () => {
        input.off('data', onData);
        input.off('end', onEnd);
      };
      input.on('data', onData);
      input.once('end', onEnd);
    });
  } finally {
    input.setRawMode?.(false);
    input.pause();
    io.stderr.write('\n');
  }
}

async function readLine(io: CliIo, prompt: string, hidden: boolean): Promise<string> {
  io.stderr.write(prompt);
  if (hidden && io.stdin.isTTY && io.stdin.setRawMode) return readHiddenFromTty(io);
  const rl = createInterface({ input: io.stdin, terminal: false });
  try {
    const line = await new Promise<string>((resolve, reject) => {
      rl.once('line', resolve);
      rl.once('close', () => reject(new UsageError('no answer: standard input closed')));
    });
    if (hidden) io.stderr.write('\n');
    return line;
  } finally {
    rl.close();
  }
}

/**
 * Ask before something destructive. `--yes` answers for scripts; without it a terminal is
 * required, so a script never proceeds by accident.
 */
export async function confirm(io: CliIo, question: string): Promise<boolean> {
  if (io.yes) return true;
  if (!io.stdin.isTTY) throw new UsageError(`${question} — refusing without a terminal; pass --yes to confirm`);
  const answer = await readLine(io, `${question} [y/N] `, false);
  return /^y(es)?$/i.test(answer.trim());
}

/**
 * A secret from the environment (`NAME`), a file (`NAME_FILE`, one trailing newline dropped) or,
 * on a terminal, a prompt. Never from argv.
 */
export async function readSecret(io: CliIo, name: string, prompt: string): Promise<string> {
  const direct = io.env[name];
  const file = io.env[`${name}_FILE`];
  if (direct && file) throw new UsageError(`${name} and ${name}_FILE are both set; set only one`);
  if (direct) return direct;
  if (file) {
    let value: string;
    try {
      value = readFileSync(file, 'utf8').replace(/\r?\n$/, '');
    } catch (err) {
      throw new UsageError(`${name}_FILE: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
    if (value === '') throw new UsageError(`${name}_FILE: ${file} is empty`);
    return value;
  }
  if (!io.stdin.isTTY) throw new UsageError(`${name} or ${name}_FILE is required (no terminal to prompt on)`);
  const value = await readLine(io, `${prompt}: `, true);
  if (value === '') throw new UsageError(`${prompt}: empty`);
  return value;
}

/** Progress on stderr: a bar on a terminal, a line every 10% otherwise; nothing with --json. */
export class Progress {
  readonly #io: CliIo;
  readonly #label: string;
  readonly #total: number;
  #done = 0;
  #lastDecile = -1;

  constructor(io: CliIo, label: string, total: number) {
    this.#io = io;
    this.#label = label;
    this.#total = total;
  }

  tick(n = 1): void {
    this.#done += n;
    if (this.#io.json || this.#total === 0) return;
    const fraction = Math.min(1, this.#done / this.#total);
    if (this.#io.stderr.isTTY) {
      const width = 30;
      const filled = Math.round(fraction * width);
      this.#io.stderr.write(`\r${this.#label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${this.#done}/${this.#total}`);
      if (this.#done >= this.#total) this.#io.stderr.write('\n');
      return;
    }
    const decile = Math.floor(fraction * 10);
    if (decile !== this.#lastDecile) {
      this.#lastDecile = decile;
      this.#io.stderr.write(`${this.#label}: ${this.#done}/${this.#total}\n`);
    }
  }
}
