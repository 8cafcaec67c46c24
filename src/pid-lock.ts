import { randomBytes } from 'node:crypto';
import { closeSync, linkSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';

/** A lock file's outcome: held (with its release), or held by another live process. */
export type PidLockResult = { release: () => void } | { holder: number };

/** Lock files this process holds: a file with our own pid is only ours if it is in here. */
const heldHere = new Set<string>();

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function readPid(path: string): number | undefined {
  try {
    const pid = Number(readFileSync(path, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** A lock is live when its pid is another running process (our own pid only counts via heldHere). */
function liveHolder(pid: number | undefined): pid is number {
  return pid !== undefined && pid !== process.pid && alive(pid);
}

/**
 * Take the lock file `path` (exclusive create, holding our pid), for resources one process at a
 * time may use (the embedded database, an audit spool slot). A second taker in this process is
 * refused through `heldHere`. A lock left by a dead process is taken over (so is one carrying our
 * own pid but not held here: a container restarted as the same pid). Taking over renames the
 * stale file aside first and checks it is the one judged stale, so two starters cannot both take
 * it: one that finds a live lock moved aside puts it back.
 */
export function tryPidLock(path: string): PidLockResult {
  if (heldHere.has(path)) return { holder: process.pid };
  for (let attempt = 0; attempt < 5; attempt += 1) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, String(process.pid));
      closeSync(fd);
      heldHere.add(path);
      return {
        release: () => {
          heldHere.delete(path);
          rmSync(path, { force: true });
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const pid = readPid(path);
    if (liveHolder(pid)) return { holder: pid };
    const aside = `${path}.stale-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      renameSync(path, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // someone else moved it: look again
      throw err;
    }
    const moved = readPid(aside);
    if (liveHolder(moved)) {
      // Another starter took the stale lock between our read and our rename: put its lock back.
      try {
        linkSync(aside, path);
      } finally {
        rmSync(aside, { force: true });
      }
      return { holder: moved };
    }
    rmSync(aside, { force: true });
  }
  throw new Error(`cannot take the lock ${path}`);
}
