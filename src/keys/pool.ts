import type { Database } from '../db/database.js';
import { KeypairRepository } from '../db/keypairs.js';
import type { KeyStore } from '../../hsm/index.js';
import { reconcileGenerating } from './generator.js';
import type { KeyGenerator } from './generator.js';

export interface KeyPoolOptions {
  db: Database;
  keyStore: KeyStore;
  generator: KeyGenerator;
  /** Keys to keep ready; 0 disables the refiller. */
  size: number;
  /**
   * After each generation, rest this many times as long as it took: generation is CPU-heavy,
   * and resting 6× keeps the refiller to a seventh of one core, so decrypts keep the rest
   * (measured by `npm run bench`: refilling costs decrypt throughput under 15%).
   */
  restFactor?: number;
  /** How often a full pool is re-counted (other instances take keys too). */
  checkIntervalMs?: number;
  log: {
    warn(obj: object, msg: string): void;
    debug(obj: object, msg: string): void;
  };
}

/**
 * Keeps `size` pool keys generated ahead in the token, one generation at a time, in the
 * background. The pool lives in the database (state `pool`), so it survives restarts and is
 * shared by every instance on the database; handing a key out is `KeypairRepository.takeFromPool`.
 * Several instances may each top the pool up at once: it then overfills by a few keys, which
 * is harmless.
 */
export class KeyPool {
  readonly #o: Required<Omit<KeyPoolOptions, 'log'>> & Pick<KeyPoolOptions, 'log'>;
  #running: Promise<void> | undefined;
  #stopped = false;
  #wake: (() => void) | undefined;
  #timer: NodeJS.Timeout | undefined;
  #resting = false;

  constructor(options: KeyPoolOptions) {
    this.#o = { restFactor: 6, checkIntervalMs: 5_000, ...options };
  }

  /** Start refilling (no-op when the size is 0). */
  start(): void {
    if (this.#o.size <= 0 || this.#running) return;
    this.#running = this.#loop();
  }

  /** A key was taken: refill now instead of at the next check (a rest after a generation still runs out). */
  poke(): void {
    if (!this.#resting) this.#wake?.();
  }

  /** Stop refilling; resolves once the generation in flight (if any) is recorded. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#wake?.();
    await this.#running;
  }

  async #loop(): Promise<void> {
    const repo = new KeypairRepository(this.#o.db);
    let failures = 0;
    while (!this.#stopped) {
      let rest = this.#o.checkIntervalMs;
      this.#resting = false;
      try {
        // Intents left by a generation that failed here or a peer that died.
        await reconcileGenerating(this.#o.db, this.#o.keyStore, { skip: this.#o.generator.inFlight });
        if ((await repo.countPool()) < this.#o.size) {
          const started = performance.now();
          const key = await this.#o.generator.generate({ state: 'pool' });
          const took = performance.now() - started;
          this.#o.log.debug({ keypairId: key.id, ms: Math.round(took) }, 'pool key generated');
          rest = took * this.#o.restFactor;
          this.#resting = true;
        }
        failures = 0;
      } catch (err) {
        failures += 1;
        rest = Math.min(60_000, 1_000 * 2 ** Math.min(failures, 6));
        this.#o.log.warn({ err, retryInMs: rest }, 'key pool refill failed; retrying');
      }
      await this.#sleep(rest);
    }
  }

  #sleep(ms: number): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(this.#timer);
        this.#wake = undefined;
        resolve();
      };
      this.#wake = done;
      this.#timer = setTimeout(done, ms);
      this.#timer.unref();
    });
  }
}
