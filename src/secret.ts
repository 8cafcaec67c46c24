import { inspect } from 'node:util';

/**
 * A secret value (PIN, token, passphrase, URL with a password, a TLS private key). It prints as
 * `[redacted]` in logs, JSON and `util.inspect`; only `reveal()` gives the value, at the one
 * place that needs it.
 */
export class Secret<T extends string | Buffer = string> {
  readonly #value: T;

  constructor(value: T) {
    this.#value = value;
  }

  reveal(): T {
    return this.#value;
  }

  toString(): string {
    return '[redacted]';
  }

  toJSON(): string {
    return '[redacted]';
  }

  [inspect.custom](): string {
    return 'Secret([redacted])';
  }
}
