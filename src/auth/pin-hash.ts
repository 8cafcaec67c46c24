import { randomBytes } from 'node:crypto';
import argon2 from 'argon2';

/** argon2id cost parameters (RFC 9106 §3.1), as encoded in the PHC string. */
export interface PinHashParameters {
  /** Memory in KiB (`m`). */
  memoryCost: number;
  /** Passes over the memory (`t`). */
  timeCost: number;
  /** Lanes (`p`). */
  parallelism: number;
}

/**
 * Defaults: OWASP's Password Storage Cheat Sheet baseline for argon2id, m = 19 MiB, t = 2, p = 1.
 * Every console login and every signing authorisation pays it once: about 20 ms of one core
 * idle, 40 ms on a loaded 2-core machine (measured here); 64 MiB/t=3 took 120-190 ms.
 */
export const DEFAULT_PIN_HASH_PARAMETERS: Readonly<PinHashParameters> = Object.freeze({
  memoryCost: 19_456,
  timeCost: 2,
  parallelism: 1,
});

/** Longest secret accepted, in UTF-8 bytes: longer input is refused before any hashing work. */
export const MAX_SECRET_BYTES = 1024;

export interface PinHasherOptions {
  parameters?: Partial<PinHashParameters>;
  /**
   * Optional pepper (argon2's secret input K, RFC 9106 §3.1), kept outside the database (e.g.
   * sealed by the token): without it a stolen table cannot be searched at all, which matters
   * for short numeric PINs that no KDF cost alone protects.
   */
  pepper?: Buffer;
  /**
   * Hashes running at once (default 2). argon2 runs on libuv's thread pool, which pkcs11js shares
   * for every token operation, and takes `memoryCost` each: the cap keeps a burst of logins from
   * taking every pool thread or unbounded memory.
   */
  maxConcurrent?: number;
}

/** A stored hash that is not an argon2id PHC string: a data error, never a wrong PIN. */
export class PinHashFormatError extends Error {
  constructor() {
    super('the stored secret hash is not an argon2id PHC string');
    this.name = 'PinHashFormatError';
  }
}

const B64 = /^[A-Za-z0-9+/]+$/;

/** The parameters encoded in a stored argon2id PHC string (`m`, `t`, `p` in any order). */
export function pinHashParameters(encoded: string): PinHashParameters {
  const fields = typeof encoded === 'string' ? encoded.split('$') : [];
  const [empty, id, version, list, salt, digest] = fields;
  if (fields.length !== 6 || empty !== '' || id !== 'argon2id' || version !== 'v=19' || !B64.test(salt ?? '') || !B64.test(digest ?? '')) {
    throw new PinHashFormatError();
  }
  const values = new Map<string, number>();
  for (const pair of (list ?? '').split(',')) {
    const m = /^([mtp])=(\d{1,10})$/.exec(pair);
    if (!m || values.has(m[1] as string)) throw new PinHashFormatError();
    values.set(m[1] as string, Number(m[2]));
  }
  const memoryCost = values.get('m');
  const timeCost = values.get('t');
  const parallelism = values.get('p');
  if (memoryCost === undefined || timeCost === undefined || parallelism === undefined) throw new PinHashFormatError();
  return { memoryCost, timeCost, parallelism };
}

/**
 * Memory-hard hashing of operator passwords and signing PINs: argon2id through the `argon2`
 * package (its prebuilt binary for linux-x64 ships inside the npm package), stored as the PHC
 * string `$argon2id$v=19$m=…,t=…,p=…$salt$hash` with a 16-byte random salt and a 32-byte output.
 */
export class PinHasher {
  readonly #params: PinHashParameters;
  readonly #pepper: Buffer | undefined;
  readonly #max: number;
  #running = 0;
  readonly #waiting: Array<() => void> = [];
  #dummy: Promise<string> | undefined;

  constructor(options: PinHasherOptions = {}) {
    const params = { ...DEFAULT_PIN_HASH_PARAMETERS, ...options.parameters };
    // RFC 9106 / the reference implementation's bounds, with a floor below which the hash is not memory-hard.
    if (!Number.isSafeInteger(params.memoryCost) || params.memoryCost < 8_192 || params.memoryCost > 4_194_304) {
      throw new Error('pin-hash: memoryCost must be 8192..4194304 KiB');
    }
    if (!Number.isSafeInteger(params.timeCost) || params.timeCost < 1 || params.timeCost > 100) {
      throw new Error('pin-hash: timeCost must be 1..100');
    }
    if (!Number.isSafeInteger(params.parallelism) || params.parallelism < 1 || params.parallelism > 16) {
      throw new Error('pin-hash: parallelism must be 1..16');
    }
    const max = options.maxConcurrent ?? 2;
    if (!Number.isSafeInteger(max) || max < 1) throw new Error('pin-hash: maxConcurrent must be a positive integer');
    if (options.pepper !== undefined && options.pepper.length < 16) throw new Error('pin-hash: a pepper must be at least 16 bytes');
    this.#params = params;
    this.#pepper = options.pepper;
    this.#max = max;
  }

  /** The parameters new hashes are made with. */
  get parameters(): Readonly<PinHashParameters> {
    return { ...this.#params };
  }

  /** Hash a secret for storage; throws a TypeError for an empty or over-long one. */
  async hash(secret: string): Promise<string> {
    if (typeof secret !== 'string' || secret.length === 0 || Buffer.byteLength(secret, 'utf8') > MAX_SECRET_BYTES) {
      throw new TypeError(`a secret must be 1..${MAX_SECRET_BYTES} bytes`);
    }
    return this.#limit(() => argon2.hash(secret, { type: argon2.argon2id, ...this.#params, ...this.#secret() }));
  }

  /**
   * True when `secret` matches `encoded`. Pass `undefined` for an unknown account: a dummy hash
   * made with the current parameters is verified instead, so the answer takes as long as for a
   * known one and an attacker cannot learn which names exist. argon2 compares the digests with
   * `crypto.timingSafeEqual`.
   */
  async verify(encoded: string | undefined, secret: string): Promise<boolean> {
    const usable = typeof secret === 'string' && Buffer.byteLength(secret, 'utf8') <= MAX_SECRET_BYTES;
    if (encoded !== undefined) pinHashParameters(encoded);
    const target = encoded ?? (await this.#dummyHash());
    const ok = await this.#limit(() => argon2.verify(target, usable ? secret : '', this.#secret()));
    return ok && usable && encoded !== undefined;
  }

  /** True when `encoded` was made with other parameters than the current ones: hash again after a successful verify. */
  needsRehash(encoded: string): boolean {
    const p = pinHashParameters(encoded);
    return (
      p.memoryCost !== this.#params.memoryCost ||
      p.timeCost !== this.#params.timeCost ||
      p.parallelism !== this.#params.parallelism
    );
  }

  #secret(): { secret: Buffer } | Record<string, never> {
    return this.#pepper ? { secret: this.#pepper } : {};
  }

  #dummyHash(): Promise<string> {
    this.#dummy ??= this.hash(randomBytes(16).toString('hex'));
    return this.#dummy;
  }

  async #limit<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#running >= this.#max) await new Promise<void>((resolve) => this.#waiting.push(resolve));
    else this.#running += 1;
    try {
      return await fn();
    } finally {
      // Hand the slot straight to the next waiter, or free it.
      const next = this.#waiting.shift();
      if (next) next();
      else this.#running -= 1;
    }
  }
}
