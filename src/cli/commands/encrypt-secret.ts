import type { Readable } from 'node:stream';
import { CRYPT_CONTEXT, formatCrypt } from '../../config-crypt.js';
import { CommandFailed, UsageError, type Command } from '../command.js';
import { withContext } from '../context.js';
import { printJson, readSecret } from '../io.js';

const MAX_SECRET_BYTES = 4096;

/** Everything piped in, without one trailing newline (as `echo` or a file ends). */
async function readPiped(stdin: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stdin) {
    const b = Buffer.isBuffer(chunk) ? chunk : Buffer.from(String(chunk));
    size += b.length;
    if (size > MAX_SECRET_BYTES) throw new UsageError(`the secret is longer than ${MAX_SECRET_BYTES} bytes`);
    chunks.push(b);
  }
  const all = Buffer.concat(chunks);
  chunks.forEach((c) => c.fill(0));
  let end = all.length;
  if (all[end - 1] === 0x0a) end -= 1;
  if (all[end - 1] === 0x0d) end -= 1;
  return all.subarray(0, end);
}

const encryptSecret: Command = {
  words: ['encrypt-secret'],
  synopsis: '',
  summary: 'read a secret from standard input (or a prompt) and print CRYPT:… for DATABASE_URL, ADMIN_TOKEN or TLS_PFX_PASSPHRASE',
  async run({ positionals, io }) {
    if (positionals.length > 0) {
      // Do not echo it: the argument is probably the very secret.
      throw new UsageError('encrypt-secret takes no arguments: the secret is read from standard input or a prompt, never from the command line');
    }
    let secret: Buffer;
    if (io.stdin.isTTY) {
      const noEnv = { ...io, env: {} };
      const first = await readSecret(noEnv, 'SECRET', 'Secret to encrypt');
      const again = await readSecret(noEnv, 'SECRET', 'Again');
      if (first !== again) throw new CommandFailed('the two entries differ; nothing encrypted');
      secret = Buffer.from(first, 'utf8');
    } else {
      secret = await readPiped(io.stdin);
    }
    if (secret.length === 0) throw new UsageError('no secret on standard input (pipe it in, or run on a terminal to be prompted)');
    try {
      const value = await withContext(io.env, async ({ keyStore }) => {
        const sealed = await keyStore.sealSecret(secret, CRYPT_CONTEXT);
        // Prove it opens before anyone puts it in a configuration.
        const check = await keyStore.openSecret(sealed, CRYPT_CONTEXT);
        const ok = check.equals(secret);
        check.fill(0);
        if (!ok) throw new CommandFailed('the token did not return the secret it sealed');
        return formatCrypt(sealed);
      });
      if (io.json) printJson(io, { value });
      else io.stdout.write(`${value}\n`);
    } finally {
      secret.fill(0);
    }
  },
};

export const encryptSecretCommands: Command[] = [encryptSecret];
