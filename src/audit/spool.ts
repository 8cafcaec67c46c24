import { mkdirSync, rmSync, statSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { tryPidLock } from '../pid-lock.js';
import type { AuditRecord } from './chain.js';

/** How many spool slots a directory offers (one per instance sharing it). */
const MAX_SLOTS = 64;
/** Bytes read from the spool at a time during replay. */
const READ_BLOCK = 1024 * 1024;

/** Wire form of a record in the spool file: one JSON object per line. */
type SpoolLine = Omit<AuditRecord, 'loggedAt'> & { loggedAt: string };

function toLine(r: AuditRecord): string {
  const line: SpoolLine = { ...r, loggedAt: r.loggedAt.toISOString() };
  return `${JSON.stringify(line)}\n`;
}

/** Fields added by audit v2: a line spooled by an older build lacks them (it is replayed with nulls). */
const V2_FIELDS = { face: null, principalKind: null, principalId: null, subjectKind: null, subjectId: null } as const;

function fromLine(text: string): AuditRecord {
  const l = JSON.parse(text) as SpoolLine;
  return { ...V2_FIELDS, ...l, loggedAt: new Date(l.loggedAt) };
}

/** The spool file reached its size cap (AUDIT_SPOOL_MAX_MB): nothing more is accepted until it drains. */
export class AuditSpoolFullError extends Error {
  readonly code = 'AUDIT_SPOOL_FULL';
  constructor(path: string, maxBytes: number) {
    super(`the audit spool ${path} reached its cap of ${maxBytes} bytes`);
    this.name = 'AuditSpoolFullError';
  }
}

export interface AuditSpoolOptions {
  /** Largest spool file in bytes (default 1 GiB); an append that would pass it is refused. */
  maxBytes?: number;
}

/**
 * A local, append-only file where audit entries wait while the database cannot take them.
 * Every append is fsync'd before it resolves. Each instance takes a slot (`spool-<n>.jsonl` with
 * a pid lock file) so instances sharing a directory never interleave; a slot left by a dead
 * process is taken over, and its entries are replayed by the new owner.
 */
export class AuditSpool {
  readonly #dir: string;
  readonly #maxBytes: number;
  /** Size of the open spool file (known once it is open). */
  #size = 0;
  #slot: string | undefined;
  #release: (() => void) | undefined;
  #file: FileHandle | undefined;
  /** Bytes of the file already replayed into the database. */
  #replayed = 0;
  /** Bytes read from the file past the replayed offset, starting at file offset `#aheadAt`. */
  #ahead: Buffer = Buffer.alloc(0);
  #aheadAt = 0;

  constructor(dir: string, options: AuditSpoolOptions = {}) {
    this.#dir = dir;
    this.#maxBytes = options.maxBytes ?? 1024 * 1024 * 1024;
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
      this.#size = (await this.#file.stat()).size;
    }
    // Fail closed at the cap: the writer refuses the request (503) instead of filling the disk.
    const text = records.map(toLine).join('');
    const bytes = Buffer.byteLength(text);
    if (this.#size + bytes > this.#maxBytes) throw new AuditSpoolFullError(this.path as string, this.#maxBytes);
    this.#size += bytes;
    await this.#file.write(text);
    await this.#file.sync();
  }

  /**
   * The next records not yet replayed, in order, and a function that marks them replayed. A
   * torn last line (a crash mid-append) is never returned: it was never acknowledged.
   *
   * Linear in the spool: lines are found as bytes (no re-measuring of text), and what was read
   * beyond this chunk is kept for the next call, so each byte is read from disk about once.
   */
  async next(max: number): Promise<{ records: AuditRecord[]; done: () => void } | undefined> {
    const path = this.path;
    if (!path || !this.pending()) return undefined;
    const from = this.#replayed;
    // The read-ahead is valid only if it starts at or before `from` (a chunk not marked done is read again).
    if (from < this.#aheadAt || from > this.#aheadAt + this.#ahead.length) this.#ahead = Buffer.alloc(0);
    if (this.#ahead.length === 0) this.#aheadAt = from;
    const records: AuditRecord[] = [];
    let pos = from - this.#aheadAt;
    const handle = await open(path, 'r');
    try {
      while (records.length < max) {
        const nl = this.#ahead.indexOf(0x0a, pos);
        if (nl < 0) {
          // Keep the partial line, read the next block after it.
          const rest = this.#ahead.subarray(pos);
          const block = Buffer.alloc(Math.max(READ_BLOCK, rest.length * 2));
          const { bytesRead } = await handle.read(block, 0, block.length, this.#aheadAt + this.#ahead.length);
          if (bytesRead === 0) break;
          this.#aheadAt += pos;
          this.#ahead = Buffer.concat([rest, block.subarray(0, bytesRead)]);
          pos = 0;
          continue;
        }
        const line = this.#ahead.toString('utf8', pos, nl);
        pos = nl + 1;
        if (line.trim() === '') continue;
        try {
          records.push(fromLine(line));
        } catch {
          // A torn line left by a crash mid-write is followed by newer whole lines: skip it.
        }
      }
    } finally {
      await handle.close();
    }
    const used = this.#aheadAt + pos - from;
    if (used === 0) return undefined;
    return {
      records,
      done: () => {
        if (this.#replayed === from) this.#replayed = from + used;
      },
    };
  }

  /** Where records the database refused are kept (beside the spool file, one per slot). */
  get quarantinePath(): string | undefined {
    return this.#slot && `${this.#slot}.quarantine.jsonl`;
  }

  /**
   * Keep a record the database refused (not an outage: the record itself), with why, in the
   * quarantine file, fsync'd: nothing is lost, and an operator can inspect and re-enter it. The
   * file counts against the same cap as the spool.
   */
  async quarantine(record: AuditRecord, reason: { name: string; code: string | null }): Promise<string> {
    this.acquire();
    const path = this.quarantinePath as string;
    const line = `${JSON.stringify({ quarantinedAt: new Date().toISOString(), reason, record: JSON.parse(toLine(record)) as unknown })}\n`;
    const handle = await open(path, 'a', 0o600);
    try {
      const { size } = await handle.stat();
      if (size + Buffer.byteLength(line) > this.#maxBytes) throw new AuditSpoolFullError(path, this.#maxBytes);
      await handle.write(line);
      await handle.sync();
    } finally {
      await handle.close();
    }
    return path;
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
    this.#size = 0;
    rmSync(path, { force: true });
    this.#replayed = 0;
    this.#ahead = Buffer.alloc(0);
    this.#aheadAt = 0;
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
