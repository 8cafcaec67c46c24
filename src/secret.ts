import { inspect } from 'node:util';

/**
 * A secret value (PIN, token, passphrase, URL with a password). It prints as `[redacted]` in
 * logs, JSON and `util.inspect`; only `reveal()` gives the value, at the one place that needs it.
 */
export class Secret {
  readonly #value: string;

  constructor(value: string) {
    this.#value = value;
  }

  reveal(): string {
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
