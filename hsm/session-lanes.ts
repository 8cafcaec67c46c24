import { HsmError } from './errors.js';

/** The lane every caller that names none runs in; it reserves nothing. */
export const DEFAULT_LANE = 'default';

interface Waiter {
  readonly lane: string;
  readonly start: () => void;
}

/**
 * Admission in front of the session pool, per lane (one lane per face): a lane may start an
 * operation only while the free sessions outnumber the reservations other lanes are not using.
 * A burst on one face therefore queues in its own lane and never takes the sessions another
 * face has reserved, while an idle face's share is not wasted beyond its reservation.
 */
export class SessionLanes {
  readonly #total: number;
  readonly #reserved: ReadonlyMap<string, number>;
  readonly #inUse = new Map<string, number>();
  readonly #waiting: Waiter[] = [];
  #running = 0;

  /** `reserved`: sessions kept for each named lane; together fewer than `total`, so the default lane always gets one. */
  constructor(total: number, reserved: Readonly<Record<string, number>> = {}) {
    if (!Number.isInteger(total) || total < 1) throw new RangeError('session count must be a positive integer');
    const entries = Object.entries(reserved);
    for (const [lane, n] of entries) {
      if (lane === DEFAULT_LANE || !Number.isInteger(n) || n < 1) {
        throw new HsmError('HSM_ERR_INPUT', `lane "${lane}" must be a named lane reserving a positive whole number of sessions`);
      }
    }
    const sum = entries.reduce((s, [, n]) => s + n, 0);
    if (sum >= total) throw new HsmError('HSM_ERR_INPUT', `lanes reserve ${sum} of ${total} sessions; at least one must stay unreserved`);
    this.#total = total;
    this.#reserved = new Map([[DEFAULT_LANE, 0], ...entries]);
  }

  /** Lanes an operation may name. */
  get lanes(): string[] {
    return [...this.#reserved.keys()];
  }

  /** Operations currently admitted in `lane`. */
  inUse(lane: string): number {
    return this.#inUse.get(lane) ?? 0;
  }

  /** Run `fn` once `lane` may use a session; the slot is released when it settles. */
  async run<T>(lane: string, fn: () => Promise<T>): Promise<T> {
    if (!this.#reserved.has(lane)) throw new HsmError('HSM_ERR_INPUT', `unknown session lane "${lane}" (lanes: ${this.lanes.join(', ')})`);
    // Queue, then admit whoever may start now: earlier arrivals first, but a lane with a free
    // reservation does not wait behind a lane that is at its limit.
    const admitted = new Promise<void>((start) => this.#waiting.push({ lane, start }));
    this.#drain();
    await admitted;
    try {
      return await fn();
    } finally {
      this.#running -= 1;
      this.#inUse.set(lane, this.inUse(lane) - 1);
      this.#drain();
    }
  }

  #admissible(lane: string): boolean {
    let heldForOthers = 0;
    for (const [other, reserved] of this.#reserved) {
      if (other !== lane) heldForOthers += Math.max(0, reserved - this.inUse(other));
    }
    return this.#total - this.#running - heldForOthers >= 1;
  }

  #admit(lane: string): void {
    this.#running += 1;
    this.#inUse.set(lane, this.inUse(lane) + 1);
  }

  /** Start waiters in arrival order, skipping (not blocking on) lanes that must still wait. */
  #drain(): void {
    for (let i = 0; i < this.#waiting.length && this.#running < this.#total; ) {
      const waiter = this.#waiting[i] as Waiter;
      if (this.#admissible(waiter.lane)) {
        this.#waiting.splice(i, 1);
        this.#admit(waiter.lane);
        waiter.start();
      } else {
        i += 1;
      }
    }
  }
}
