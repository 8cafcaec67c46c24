// Independent peers for test/keystore.test.ts: Node's crypto, the openssl CLI, pkcs11-tool and
// pkcs11js itself (to look inside the token without going through the KeyStore).
import { execFileSync } from 'node:child_process';
import { constants, createPublicKey, generateKeyPairSync, publicEncrypt, type KeyObject } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import type * as P11 from 'pkcs11js';
import type { RsaPrivateKeyComponents, RsaPublicKey } from '../../hsm/index.js';
import type { TestToken } from './token.js';

export function nodePublicKey(pub: RsaPublicKey): KeyObject {
  return createPublicKey({
    key: { kty: 'RSA', n: pub.modulus.toString('base64url'), e: pub.publicExponent.toString('base64url') },
    format: 'jwk',
  });
}

export function nodeEncrypt(pub: RsaPublicKey, padding: 'oaep-sha1' | 'pkcs1', plaintext: Buffer): Buffer {
  const key = nodePublicKey(pub);
  return padding === 'pkcs1'
    ? publicEncrypt({ key, padding: constants.RSA_PKCS1_PADDING }, plaintext)
    : publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, plaintext);
}

/** Raw RSA (m^e mod n) of a full-length encoded message: lets a test build deliberately bad padding. */
export function rawRsaEncrypt(pub: RsaPublicKey, encodedMessage: Buffer): Buffer {
  return publicEncrypt({ key: nodePublicKey(pub), padding: constants.RSA_NO_PADDING }, encodedMessage);
}

/** `openssl pkeyutl -encrypt` with the public key written as PEM under `dir`. */
export function opensslEncrypt(dir: string, pub: RsaPublicKey, padding: 'oaep-sha1' | 'pkcs1', plaintext: Buffer): Buffer {
  const pem = join(dir, `pub-${pub.modulus.subarray(0, 8).toString('hex')}.pem`);
  writeFileSync(pem, nodePublicKey(pub).export({ format: 'pem', type: 'spki' }));
  const opts =
    padding === 'pkcs1'
      ? ['-pkeyopt', 'rsa_padding_mode:pkcs1']
      : ['-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', 'rsa_oaep_md:sha1'];
  return execFileSync('openssl', ['pkeyutl', '-encrypt', '-pubin', '-inkey', pem, ...opts], { input: plaintext });
}

/** A software RSA key (generated now, never stored) as the KeyStore's import components. */
export function nodeRsaComponents(modulusLength: number): RsaPrivateKeyComponents {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength });
  const jwk = privateKey.export({ format: 'jwk' });
  const b = (v: string | undefined): Buffer => {
    if (v === undefined) throw new Error('JWK component missing');
    return Buffer.from(v, 'base64url');
  };
  return {
    modulus: b(jwk.n),
    publicExponent: b(jwk.e),
    privateExponent: b(jwk.d),
    prime1: b(jwk.p),
    prime2: b(jwk.q),
    exponent1: b(jwk.dp),
    exponent2: b(jwk.dq),
    coefficient: b(jwk.qi),
  };
}

export function toBigInt(b: Buffer): bigint {
  return b.length === 0 ? 0n : BigInt(`0x${b.toString('hex')}`);
}

export function fromBigInt(x: bigint): Buffer {
  const hex = x.toString(16);
  return Buffer.from(hex.length % 2 === 0 ? hex : `0${hex}`, 'hex');
}

/**
 * Run `fn` on a logged-in session of `token` opened with pkcs11js directly (not the KeyStore).
 * Safe while key stores are open in this process: Cryptoki state is per process, so an
 * already-initialised library and an already-logged-in token are accepted and left as they are.
 */
export function withTokenSession<T>(token: TestToken, fn: (p11: P11.PKCS11, session: P11.Handle) => T): T {
  const p11 = new pkcs11js.PKCS11();
  p11.load(token.modulePath);
  let initialisedHere = false;
  try {
    try {
      p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
      initialisedHere = true;
    } catch (err) {
      if (!(err instanceof pkcs11js.Pkcs11Error) || err.code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw err;
    }
    const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === token.label);
    if (slot === undefined) throw new Error(`token ${token.label} not found`);
    const session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try {
      try {
        p11.C_Login(session, pkcs11js.CKU_USER, token.pin);
      } catch (err) {
        if (!(err instanceof pkcs11js.Pkcs11Error) || err.code !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw err;
      }
      return fn(p11, session);
    } finally {
      p11.C_CloseSession(session);
    }
  } finally {
    if (initialisedHere) p11.C_Finalize();
    p11.close();
  }
}

function find(p11: P11.PKCS11, session: P11.Handle, template: P11.Template): P11.Handle[] {
  p11.C_FindObjectsInit(session, template);
  try {
    return p11.C_FindObjects(session, 10_000);
  } finally {
    p11.C_FindObjectsFinal(session);
  }
}

/** Count the token objects matching `template`. */
export function countTokenObjects(token: TestToken, template: P11.Template): number {
  return withTokenSession(token, (p11, session) => find(p11, session, template).length);
}

/**
 * Try to read the private exponent of `keyId` in clear. Returns the bytes if the token hands
 * them out, else the name of the refusal (e.g. CKR_ATTRIBUTE_SENSITIVE).
 */
export function readPrivateExponent(token: TestToken, keyId: string): Buffer | string {
  return withTokenSession(token, (p11, session) => {
    const [handle] = find(p11, session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
      { type: pkcs11js.CKA_ID, value: Buffer.from(keyId.replace(/-/g, ''), 'hex') },
    ]);
    if (handle === undefined) return 'no such key';
    try {
      const [attr] = p11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_PRIVATE_EXPONENT }]);
      return (attr?.value as Buffer | undefined) ?? 'empty';
    } catch (err) {
      if (!(err instanceof pkcs11js.Pkcs11Error)) throw err;
      const name = Object.entries(pkcs11js).find(([k, v]) => k.startsWith('CKR_') && v === err.code)?.[0];
      return name ?? `CKR_0x${err.code.toString(16)}`;
    }
  });
}

/** Objects carrying a keypair's CKA_ID (the UUID's 16 bytes), of any class. */
export function countKeyObjects(token: TestToken, keyId: string): number {
  return countTokenObjects(token, [{ type: pkcs11js.CKA_ID, value: Buffer.from(keyId.replace(/-/g, ''), 'hex') }]);
}

export function countSecretsKeys(token: TestToken): number {
  return countTokenObjects(token, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_LABEL, value: 'strongroom-secrets' },
  ]);
}

/** Run pkcs11-tool logged in to `token`, with the token's own SOFTHSM2_CONF. */
export function pkcs11Tool(token: TestToken, args: string[]): Buffer {
  return execFileSync(
    'pkcs11-tool',
    ['--module', token.modulePath, '--token-label', token.label, '--login', '--pin', token.pin, ...args],
    { env: { ...process.env, SOFTHSM2_CONF: token.conf }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
}

export interface ListedObject {
  /** The heading line, e.g. "Private Key Object; RSA". */
  kind: string;
  fields: Record<string, string>;
}

/** Parse `pkcs11-tool --list-objects` output into one entry per object. */
export function parseObjectList(text: string): ListedObject[] {
  const objects: ListedObject[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    if (!/^\s/.test(line)) {
      objects.push({ kind: line.trim(), fields: {} });
      continue;
    }
    const m = /^\s+([^:]+):\s*(.*)$/.exec(line);
    const current = objects[objects.length - 1];
    if (m && current) current.fields[(m[1] ?? '').trim()] = (m[2] ?? '').trim();
  }
  return objects;
}
