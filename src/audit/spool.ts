import { mkdirSync, rmSync, statSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { tryPidLock } from '../pid-lock.js';
import type { AuditRecord } from './chain.js';

/** How many spool slots a directory offers (one per instance sharing it). */
const MAX_SLOTS = 64;

/** Wire form of a record in the spool file: one JSON object per line. */
type SpoolLine = Omit<AuditRecord, 'loggedAt'> & { loggedAt: string };

function toLine(r: AuditRecord): string {
  const line: SpoolLine = { ...r, loggedAt: r.loggedAt.toISOString() };
  return `${JSON.stringify(line)}\n`;
}

function fromLine(text: string): AuditRecord {
  const l = JSON.parse(text) as SpoolLine;
  return { ...l, loggedAt: new Date(l.loggedAt) };
}

/**
 * A local, append-only file where audit entries wait while the database cannot take them.
 * Every append is fsync'd before it resolves. Each instance takes a slot (`spool-<n>.jsonl` with
 * a pid lock file) so instances sharing a directory never interleave; a slot left by a dead
 * process is taken over, and its entries are replayed by the new owner.
 */
export class AuditSpool {
  readonly #dir: string;
  #slot: string | undefined;
  #release: (() => void) | undefined;
  #file: FileHandle | undefined;
  /** Bytes of the file already replayed into the database. */
  #replayed = 0;

  constructor(dir: string) {
    this.#dir = dir;
  }

  /** The spool file's path, once a slot is held. */
  get path(): string | undefined {
    return this.#slot && `${this.#slot}.jsonl`;
  }

  /** Take a slot now (at start), so entries a previous owner left are replayed early. */
  acquire(): void {
    if (this.#slot) return;
    mkdirSync(this.#dir, { recursive: true, mode: 0o700 });
    for (let n = 0; n < MAX_SLOTS; n += 1) {
      const base = join(this.#dir, `spool-${n}`);
      const lock = tryPidLock(`${base}.lock`);
      if ('holder' in lock) continue;
      this.#slot = base;
      this.#release = lock.release;
      return;
    }
    throw new Error(`no free audit spool slot in ${this.#dir}`);
  }

  /** True when entries wait in the file (also entries a previous owner of the slot left). */
  pending(): boolean {
    const path = this.path;
    if (!path) return false;
    try {
      return statSync(path).size > this.#replayed;
    } catch {
      return false;
    }
  }

  /** Append records and fsync; resolves only once they are on disk. */
  async append(records: readonly AuditRecord[]): Promise<void> {
    if (records.length === 0) return;
    this.acquire();
    if (!this.#file) {
      this.#file = await open(this.path as string, 'a', 0o600);
      // A crash mid-append may have left a torn last line: end it so the next record starts clean.
      const { size } = await this.#file.stat();
      if (size > 0) {
        const last = Buffer.alloc(1);
        const reader = await open(this.path as string, 'r');
        try {
          await reader.read(last, 0, 1, size - 1);
        } finally {
          await reader.close();
        }
        if (last[0] !== 0x0a) await this.#file.write('\n');
      }
    }
    await this.#file.write(records.map(toLine).join(''));
    await this.#file.sync();
  }

  /**
   * The next records not yet replayed, in order, and a function that marks them replayed. A
   * torn last line (a crash mid-append) is never returned: it was never acknowledged.
   */
  async next(max: number): Promise<{ records: AuditRecord[]; done: () => void } | undefined> {
    const path = this.path;
    if (!path || !this.pending()) return undefined;
    const handle = await open(path, 'r');
    try {
      const size = (await handle.stat()).size;
      const chunk = Buffer.alloc(Math.min(size - this.#replayed, 4 * 1024 * 1024));
      const { bytesRead } = await handle.read(chunk, 0, chunk.length, this.#replayed);
      const text = chunk.subarray(0, bytesRead).toString('utf8');
      const records: AuditRecord[] = [];
      let used = 0;
      let start = 0;
      for (let nl = text.indexOf('\n'); nl >= 0 && records.length < max; nl = text.indexOf('\n', start)) {
        const line = text.slice(start, nl);
        start = nl + 1;
        used = Buffer.byteLength(text.slice(0, start));
        if (line.trim() === '') continue;
        try {
          records.push(fromLine(line));
        } catch {
          // A torn line left by a crash mid-write is followed by newer whole lines: skip it.
        }
      }
      if (used === 0) return undefined;
      return { records, done: () => void (this.#replayed += used) };
    } finally {
      await handle.close();
    }
  }

  /**
   * Once every whole line is replayed, remove the file so the next outage starts a fresh one;
   * a torn last line (a crash mid-append: never acknowledged) goes with it. The caller must hold
   * off appends meanwhile. Returns false when whole lines still wait.
   */
  async settle(): Promise<boolean> {
    const path = this.path;
    if (!path) return true;
    if (this.pending() && (await this.next(1))) return false;
    await this.#file?.close();
    this.#file = undefined;
    rmSync(path, { force: true });
    this.#replayed = 0;
    return true;
  }

  async close(): Promise<void> {
    await this.#file?.close().catch(() => undefined);
    this.#file = undefined;
    this.#release?.();
    this.#release = undefined;
    this.#slot = undefined;
  }
}
