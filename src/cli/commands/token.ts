import { findSoftHsmModule, openPkcs11KeyStore } from '../../../hsm/index.js';
import { initToken, listSlots, type SlotDescription } from '../../../hsm/token-admin.js';
import { CommandFailed, UsageError, type Command } from '../command.js';
import { printJson, printTable, readSecret, say, type CliIo } from '../io.js';

/** The module and token label a token command works on, from the same variables as the service. */
export function tokenTarget(io: CliIo): { modulePath: string; label: string } {
  const modulePath = io.env.PKCS11_MODULE || findSoftHsmModule();
  if (!modulePath) throw new CommandFailed('PKCS11_MODULE is not set and no SoftHSM2 library was found');
  const label = io.env.PKCS11_TOKEN_LABEL || 'strongroom';
  return { modulePath, label };
}

const yesNo = (v: boolean | null | undefined): string => (v === null || v === undefined ? '?' : v ? 'yes' : 'no');

const list: Command = {
  words: ['token', 'list'],
  synopsis: '',
  summary: 'slots and tokens (label, serial, flags, free/used) and whether each token offers what strongroom needs; no login',
  async run({ positionals, io }) {
    if (positionals.length > 0) throw new UsageError('token list takes no arguments');
    const { modulePath } = tokenTarget(io);
    const slots: SlotDescription[] = listSlots(modulePath);
    if (io.json) {
      printJson(io, { module: modulePath, slots });
      return;
    }
    const c = (s: SlotDescription) => s.capabilities;
    printTable(
      io,
      ['SLOT', 'STATE', 'LABEL', 'SERIAL', 'RSA-3072', 'OAEP-SHA1', 'PKCS1', 'AES-KWP', 'OAEP-SHA256', 'FLAGS'],
      slots.map((s) => [
        s.slot,
        s.state,
        s.label,
        s.serial,
        yesNo(c(s)?.rsa3072Generate),
        yesNo(c(s)?.oaepSha1),
        yesNo(c(s)?.pkcs1),
        yesNo(c(s)?.aesKeyWrapPad),
        yesNo(c(s)?.oaepSha256),
        s.flags.join(','),
      ]),
    );
    say(io, '? = not testable before the token is initialised. OAEP hashes are probed by encrypting in the token.');
  },
};

const init: Command = {
  words: ['token', 'init'],
  synopsis: '--label L [--without-kek]',
  summary: 'initialise a free slot (SO PIN, user PIN from PKCS11_SO_PIN/PKCS11_PIN, their _FILE forms or prompts) and create its backup KEK (unless --without-kek: a token that will receive one with kek import) and secrets key; refuses a token holding keys',
  options: { label: { type: 'string' }, 'without-kek': { type: 'boolean' } },
  async run({ positionals, values, io }) {
    if (positionals.length > 0) throw new UsageError('token init takes no positional arguments');
    const label = values.label;
    if (typeof label !== 'string' || label === '') throw new UsageError('token init needs --label L');
    if (Buffer.byteLength(label, 'utf8') > 32) throw new UsageError('a PKCS#11 token label has at most 32 bytes');
    const { modulePath } = tokenTarget(io);
    const soPin = await readSecret(io, 'PKCS11_SO_PIN', 'SO PIN');
    const userPin = await readSecret(io, 'PKCS11_PIN', 'user PIN');
    if (soPin === userPin) throw new UsageError('the SO PIN and the user PIN must differ');
    const result = initToken({ modulePath, label, soPin, userPin, createKek: values['without-kek'] !== true });
    // The secrets key comes from the key store itself, as on a service's first start.
    const keyStore = await openPkcs11KeyStore({ modulePath, tokenLabel: label, pin: userPin, sessions: 1 });
    try {
      await keyStore.ensureServiceKeys();
    } finally {
      await keyStore.close();
    }
    const out = {
      label: result.label,
      serial: result.serial,
      initialised: result.initialised,
      kekId: result.kekId ?? null,
      serviceKeys: [...(result.kekId ? ['strongroom-backup-kek', 'strongroom-backup-kek-unwrap'] : []), 'strongroom-secrets'],
    };
    if (io.json) printJson(io, out);
    else {
      io.stdout.write(
        `token "${out.label}" (serial ${out.serial}) ${out.initialised ? 'initialised' : 'already initialised and empty: adopted'}; ` +
          `${out.kekId ? `backup KEK ${out.kekId} and secrets key created` : 'secrets key created; no backup KEK (receive one with kek transport-key and kek import)'}\n`,
      );
    }
  },
};

export const tokenCommands: Command[] = [list, init];
