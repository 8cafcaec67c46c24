import { createPublicKey } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import type { RsaPublicKey } from '../../../hsm/index.js';
import { createTransportKey, exportKek, findTransportKey, importKek, publicKeyFingerprint, spkiDer, TRANSPORT_KEY_BITS } from '../../../hsm/kek.js';
import { openTokenSession } from '../../../hsm/token-admin.js';
import { CommandFailed, UsageError, type Command } from '../command.js';
import { confirm, printJson, readSecret, say, type CliIo } from '../io.js';
import { tokenTarget } from './token.js';

const WRAPPED_FORMAT = 'strongroom-wrapped-kek';

interface WrappedKekFile {
  format: typeof WRAPPED_FORMAT;
  version: 1;
  kekId: string;
  source: { label: string; serial: string };
  transportKeyFingerprint: string;
  mechanism: 'CKM_RSA_PKCS_OAEP/SHA-1';
  wrappedKek: string;
}

function stringOption(values: Record<string, unknown>, name: string): string {
  const v = values[name];
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${name} FILE is required`);
  return v;
}

/** Write `data` to `path` (0600) through a temporary name; an existing file needs confirmation. */
export async function writeOutput(io: CliIo, path: string, data: string | Buffer): Promise<void> {
  if (existsSync(path) && !(await confirm(io, `${path} exists; overwrite it?`))) throw new CommandFailed('not overwritten');
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, data, { mode: 0o600 });
  renameSync(tmp, path);
}

function readInput(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new CommandFailed(`cannot read the ${what} ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
}

function rsaFromPem(pem: Buffer): RsaPublicKey {
  let jwk: { kty?: string; n?: string; e?: string };
  try {
    jwk = createPublicKey(pem).export({ format: 'jwk' });
  } catch {
    throw new CommandFailed('the transport key file is not a PEM public key');
  }
  if (jwk.kty !== 'RSA' || !jwk.n || !jwk.e) throw new CommandFailed('the transport key is not an RSA key');
  const key = { modulus: Buffer.from(jwk.n, 'base64url'), publicExponent: Buffer.from(jwk.e, 'base64url') };
  if (key.modulus.length * 8 < TRANSPORT_KEY_BITS) throw new CommandFailed(`the transport key must have at least ${TRANSPORT_KEY_BITS} bits`);
  return key;
}

const transportKey: Command = {
  words: ['kek', 'transport-key'],
  synopsis: '--out FILE',
  summary: 'on a NEW token: make an RSA-3072 transport key pair (private half never leaves the token) and write its public key (PEM) to FILE',
  options: { out: { type: 'string' } },
  async run({ positionals, values, io }) {
    if (positionals.length > 0) throw new UsageError('kek transport-key takes no positional arguments');
    const out = stringOption(values, 'out');
    const { modulePath, label } = tokenTarget(io);
    const pin = await readSecret(io, 'PKCS11_PIN', 'user PIN');
    const ts = openTokenSession(modulePath, label);
    let publicKey: RsaPublicKey;
    let replaced: boolean;
    try {
      ts.login('user', pin);
      ({ publicKey, replaced } = createTransportKey(ts));
    } finally {
      ts.close();
    }
    const pem = createPublicKey({ key: spkiDer(publicKey), format: 'der', type: 'spki' }).export({ format: 'pem', type: 'spki' });
    await writeOutput(io, out, pem);
    const fingerprint = publicKeyFingerprint(publicKey);
    if (io.json) printJson(io, { token: label, file: out, fingerprint, replaced });
    else {
      if (replaced) say(io, 'an earlier transport key of this token was replaced');
      io.stdout.write(`transport key of token "${label}" written to ${out}\nSHA-256 fingerprint: ${fingerprint}\n`);
      say(io, 'Give the file to the old token\'s SO and compare this fingerprint with theirs over another channel.');
    }
  },
};

const exportCmd: Command = {
  words: ['kek', 'export'],
  synopsis: '--to FILE --out WRAPPED',
  summary: 'on the OLD token, as SO: approve the transport key in FILE (fingerprint shown, confirmation asked) and write the backup KEK wrapped under it (RSA-OAEP) to WRAPPED',
  options: { to: { type: 'string' }, out: { type: 'string' } },
  async run({ positionals, values, io }) {
    if (positionals.length > 0) throw new UsageError('kek export takes no positional arguments');
    const to = stringOption(values, 'to');
    const out = stringOption(values, 'out');
    const { modulePath, label } = tokenTarget(io);
    const transport = rsaFromPem(readInput(to, 'transport key'));
    const fingerprint = publicKeyFingerprint(transport);
    io.stderr.write(`transport key ${to}\nSHA-256 fingerprint: ${fingerprint}\n`);
    if (!(await confirm(io, `Approve this key as trusted to receive the backup KEK of token "${label}"?`))) {
      throw new CommandFailed('not approved: nothing was exported');
    }
    const soPin = await readSecret(io, 'PKCS11_SO_PIN', 'SO PIN');
    const ts = openTokenSession(modulePath, label);
    let result: { wrapped: Buffer; kekId: string };
    try {
      ts.login('so', soPin);
      result = exportKek(ts, transport);
    } finally {
      ts.close();
    }
    const file: WrappedKekFile = {
      format: WRAPPED_FORMAT,
      version: 1,
      kekId: result.kekId,
      source: { label: ts.label, serial: ts.serial },
      transportKeyFingerprint: fingerprint,
      mechanism: 'CKM_RSA_PKCS_OAEP/SHA-1',
      wrappedKek: result.wrapped.toString('base64'),
    };
    await writeOutput(io, out, `${JSON.stringify(file, null, 2)}\n`);
    if (io.json) printJson(io, { token: label, kekId: result.kekId, file: out, transportKeyFingerprint: fingerprint });
    else io.stdout.write(`backup KEK ${result.kekId} of token "${label}" wrapped for ${fingerprint}\nwritten to ${out}\n`);
  },
};

function parseWrapped(bytes: Buffer): WrappedKekFile {
  let file: WrappedKekFile;
  try {
    file = JSON.parse(bytes.toString('utf8')) as WrappedKekFile;
  } catch {
    throw new CommandFailed('the wrapped KEK file does not parse');
  }
  if (
    file?.format !== WRAPPED_FORMAT ||
    file.version !== 1 ||
    typeof file.kekId !== 'string' ||
    typeof file.wrappedKek !== 'string' ||
    typeof file.transportKeyFingerprint !== 'string'
  ) {
    throw new CommandFailed('not a strongroom wrapped KEK file');
  }
  return file;
}

const importCmd: Command = {
  words: ['kek', 'import'],
  synopsis: '--in WRAPPED',
  summary: 'on the NEW token (SO PIN and user PIN): unwrap the backup KEK from WRAPPED with the transport key, store it, destroy the transport key',
  options: { in: { type: 'string' } },
  async run({ positionals, values, io }) {
    if (positionals.length > 0) throw new UsageError('kek import takes no positional arguments');
    const input = stringOption(values, 'in');
    const file = parseWrapped(readInput(input, 'wrapped KEK file'));
    const { modulePath, label } = tokenTarget(io);
    const soPin = await readSecret(io, 'PKCS11_SO_PIN', 'SO PIN');
    const pin = await readSecret(io, 'PKCS11_PIN', 'user PIN');
    const ts = openTokenSession(modulePath, label);
    let result: { kekId: string; already: boolean };
    try {
      const transport = findTransportKey(ts);
      if (transport !== undefined && publicKeyFingerprint(transport) !== file.transportKeyFingerprint) {
        throw new CommandFailed(`the file was wrapped for transport key ${file.transportKeyFingerprint}, not for this token's (${publicKeyFingerprint(transport)})`);
      }
      result = importKek(ts, soPin, pin, Buffer.from(file.wrappedKek, 'base64'), file.kekId);
    } finally {
      ts.close();
    }
    if (io.json) printJson(io, { token: label, kekId: result.kekId, alreadyPresent: result.already });
    else if (result.already) io.stdout.write(`token "${label}" already holds backup KEK ${result.kekId}; nothing to do\n`);
    else io.stdout.write(`backup KEK ${result.kekId} imported into token "${label}"; its transport key was destroyed\n`);
  },
};

export const kekCommands: Command[] = [transportKey, exportCmd, importCmd];
