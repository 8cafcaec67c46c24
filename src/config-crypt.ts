import { HsmError, openPkcs11KeyStore, type KeyStore } from '../hsm/index.js';
import { ConfigError, envSchema, loadConfig, type Config } from './config.js';

/** Prefix of a configuration value sealed by `strongroom encrypt-secret`. */
export const CRYPT_PREFIX = 'CRYPT:';

/** Associated data of every sealed configuration value: it opens under no other context. */
export const CRYPT_CONTEXT = 'strongroom:config';

/**
 * Variables that may be given as `CRYPT:…`. The PIN and the token settings cannot: they are
 * what opens the token that decrypts the others.
 */
export const CRYPT_VARIABLES = ['DATABASE_URL', 'ADMIN_TOKEN', 'TLS_PFX_PASSPHRASE'] as const;

const NOT_SEALABLE = ['PKCS11_PIN', 'PKCS11_PIN_FILE', 'PKCS11_MODULE', 'PKCS11_TOKEN_LABEL'];

type Env = Record<string, string | undefined>;

/** Opens the configured token; the caller closes what it returns. */
export type KeyStoreOpener = (pkcs11: Config['pkcs11']) => Promise<KeyStore>;

const openOneSession: KeyStoreOpener = (pkcs11) =>
  openPkcs11KeyStore({ modulePath: pkcs11.modulePath, tokenLabel: pkcs11.tokenLabel, pin: pkcs11.pin.reveal(), sessions: 1 });

/** `CRYPT:` + base64url of a sealed blob. */
export function formatCrypt(sealed: Buffer): string {
  return `${CRYPT_PREFIX}${sealed.toString('base64url')}`;
}

/** True when some variable is given as `CRYPT:…` (only then is the token opened before the config). */
export function hasCryptValues(env: Env): boolean {
  return Object.values(env).some((v) => typeof v === 'string' && v.startsWith(CRYPT_PREFIX));
}

/**
 * Replace every `CRYPT:…` value of `env` by its plaintext, opened by the token's secrets key.
 * Plain values pass unchanged and, without any CRYPT value, the token is not touched. A value
 * that does not open (altered, or sealed by another token) is a ConfigError naming the variable,
 * never its value. The token settings themselves come from `env` (they cannot be sealed).
 */
export async function resolveCryptValues(env: Env, open: KeyStoreOpener = openOneSession): Promise<Env> {
  if (!hasCryptValues(env)) return env;
  const problems: string[] = [];
  const sealed = new Map<string, Buffer>();
  for (const [name, value] of Object.entries(env)) {
    if (typeof value !== 'string' || !value.startsWith(CRYPT_PREFIX)) continue;
    if (!(CRYPT_VARIABLES as readonly string[]).includes(name)) {
      if (NOT_SEALABLE.includes(name)) {
        problems.push(`${name}: cannot be a CRYPT: value (it is needed to open the token that decrypts the others)`);
      } else if (name in envSchema.shape) {
        problems.push(`${name}: CRYPT: values are accepted only for ${CRYPT_VARIABLES.join(', ')}`);
      }
      continue;
    }
    const body = value.slice(CRYPT_PREFIX.length);
    if (!/^[A-Za-z0-9_-]+$/.test(body)) {
      problems.push(`${name}: the CRYPT: value is not base64url (copy the whole output of strongroom encrypt-secret)`);
      continue;
    }
    sealed.set(name, Buffer.from(body, 'base64url'));
  }
  if (problems.length > 0) throw new ConfigError(problems);
  if (sealed.size === 0) return env;

  // Only the token settings: the rest may still be sealed, and is validated after opening.
  const pkcs11 = loadConfig({
    PKCS11_MODULE: env.PKCS11_MODULE,
    PKCS11_TOKEN_LABEL: env.PKCS11_TOKEN_LABEL,
    PKCS11_PIN: env.PKCS11_PIN,
    PKCS11_PIN_FILE: env.PKCS11_PIN_FILE,
  }).pkcs11;
  const keyStore = await open(pkcs11);
  const resolved: Env = { ...env };
  try {
    for (const [name, blob] of sealed) {
      try {
        resolved[name] = (await keyStore.openSecret(blob, CRYPT_CONTEXT)).toString('utf8');
      } catch (err) {
        if (!(err instanceof HsmError) || (err.code !== 'HSM_ERR_SECRET_INVALID' && err.code !== 'HSM_ERR_KEY_NOT_FOUND')) throw err;
        problems.push(
          `${name}: the CRYPT: value does not decrypt with token "${keyStore.token.label}" ` +
            '(altered, truncated, or sealed by another token)',
        );
      }
    }
  } finally {
    await keyStore.close();
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return resolved;
}
