// Independent peers for the KeyStore v2 tests: Node's crypto and the openssl CLI, each given the
// public key as the store exports it, plus pkcs11js to read attributes straight from the token.
import { execFileSync, spawnSync } from 'node:child_process';
import { constants, createPublicKey, publicEncrypt, verify, type KeyObject } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import type * as P11 from 'pkcs11js';
import type { DecryptScheme, SignScheme } from '../../hsm/index.js';
import { withTokenSession } from './keystore-util.js';
import type { TestToken } from './token.js';

export function spkiKey(spki: Buffer): KeyObject {
  return createPublicKey({ key: spki, format: 'der', type: 'spki' });
}

let fileCounter = 0;
function tmpFile(dir: string, name: string, content: Buffer | string): string {
  fileCounter += 1;
  const path = join(dir, `${fileCounter}-${name}`);
  writeFileSync(path, content);
  return path;
}

function pem(dir: string, spki: Buffer): string {
  return tmpFile(dir, 'pub.pem', spkiKey(spki).export({ format: 'pem', type: 'spki' }) as string);
}

/** Node's encryption under `scheme` (PKCS#1 v1.5 encryption is still allowed in Node; only decryption is not). */
export function nodeEncryptV2(spki: Buffer, scheme: DecryptScheme, plaintext: Buffer): Buffer {
  const key = spkiKey(spki);
  if (scheme === 'pkcs1') return publicEncrypt({ key, padding: constants.RSA_PKCS1_PADDING }, plaintext);
  return publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: scheme === 'oaep-sha256' ? 'sha256' : 'sha1' }, plaintext);
}

/** `openssl pkeyutl -encrypt` under `scheme`, MGF1 hash set explicitly to the OAEP hash. */
export function opensslEncryptV2(dir: string, spki: Buffer, scheme: DecryptScheme, plaintext: Buffer): Buffer {
  const md = scheme === 'oaep-sha256' ? 'sha256' : 'sha1';
  const opts =
    scheme === 'pkcs1'
      ? ['-pkeyopt', 'rsa_padding_mode:pkcs1']
      : ['-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', `rsa_oaep_md:${md}`, '-pkeyopt', `rsa_mgf1_md:${md}`];
  return execFileSync('openssl', ['pkeyutl', '-encrypt', '-pubin', '-inkey', pem(dir, spki), ...opts], { input: plaintext });
}

/** Node verify options for a scheme: what a verifier of our signatures would pass. */
export function nodeVerifyKey(spki: Buffer, scheme: SignScheme) {
  const key = spkiKey(spki);
  if (scheme.scheme === 'rsa-pss') {
    return { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: scheme.saltLength, mgf1Hash: scheme.mgf1Hash };
  }
  if (scheme.scheme === 'rsa-pkcs1') return { key, padding: constants.RSA_PKCS1_PADDING };
  return { key, dsaEncoding: 'der' as const };
}

/** Node's verification of `signature` over `data` (Node hashes it). */
export function nodeVerify(spki: Buffer, scheme: SignScheme, data: Buffer, signature: Buffer): boolean {
  return verify(scheme.hash, data, nodeVerifyKey(spki, scheme), signature);
}

function pssOpts(flag: string, scheme: SignScheme): string[] {
  if (scheme.scheme !== 'rsa-pss') return [];
  return [flag, 'rsa_padding_mode:pss', flag, `rsa_pss_saltlen:${scheme.saltLength}`, flag, `rsa_mgf1_md:${scheme.mgf1Hash}`];
}

/** `openssl dgst -verify` over the data (OpenSSL hashes it). True when it prints "Verified OK". */
export function opensslDgstVerify(dir: string, spki: Buffer, scheme: SignScheme, data: Buffer, signature: Buffer): boolean {
  const r = spawnSync('openssl', [
    'dgst',
    `-${scheme.hash}`,
    ...pssOpts('-sigopt', scheme),
    '-verify',
    pem(dir, spki),
    '-signature',
    tmpFile(dir, 'sig.bin', signature),
    tmpFile(dir, 'data.bin', data),
  ]);
  return r.status === 0 && r.stdout.toString().includes('Verified OK');
}

/** `openssl pkeyutl -verify` over the digest itself, as a caller holding only the hash would. */
export function opensslPkeyutlVerify(dir: string, spki: Buffer, scheme: SignScheme, digest: Buffer, signature: Buffer): boolean {
  const r = spawnSync('openssl', [
    'pkeyutl',
    '-verify',
    '-pubin',
    '-inkey',
    pem(dir, spki),
    '-in',
    tmpFile(dir, 'digest.bin', digest),
    '-sigfile',
    tmpFile(dir, 'sig.bin', signature),
    '-pkeyopt',
    `digest:${scheme.hash}`,
    ...pssOpts('-pkeyopt', scheme),
  ]);
  return r.status === 0 && r.stdout.toString().includes('Signature Verified Successfully');
}

/** Objects of any class carrying CKA_ID `id`, read with pkcs11js directly. */
export function tokenObjects<T>(token: TestToken, id: Buffer, fn: (p11: P11.PKCS11, session: P11.Handle, handles: Map<number, P11.Handle>) => T): T {
  return withTokenSession(token, (p11, session) => {
    p11.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_ID, value: id }]);
    const found = p11.C_FindObjects(session, 100);
    p11.C_FindObjectsFinal(session);
    const byClass = new Map<number, P11.Handle>();
    for (const h of found) {
      const [cls] = p11.C_GetAttributeValue(session, h, [{ type: pkcs11js.CKA_CLASS }]);
      byClass.set(Number((cls?.value as Buffer).readBigUInt64LE(0)), h);
    }
    return fn(p11, session, byClass);
  });
}

/** Boolean attributes of one object, by pkcs11js constant name. */
export function readBools(p11: P11.PKCS11, session: P11.Handle, handle: P11.Handle, names: readonly string[]): Record<string, boolean> {
  const out: Record<string, boolean> = {};
  for (const name of names) {
    const type = (pkcs11js as unknown as Record<string, number>)[name] as number;
    const [a] = p11.C_GetAttributeValue(session, handle, [{ type }]);
    out[name] = ((a?.value as Buffer | undefined)?.[0] ?? 0) !== 0;
  }
  return out;
}

/** The CKR name of what `fn` threw, or 'no error'. */
export function ckrThrown(fn: () => void): string {
  try {
    fn();
    return 'no error';
  } catch (err) {
    // pkcs11js reports return values it has no name for (CKR_ACTION_PROHIBITED, 0x1B) as a plain
    // Error with a message like "CKR_VENDOR_DEFINED:27".
    if (!(err instanceof pkcs11js.Pkcs11Error)) {
      if (err instanceof Error && err.message.startsWith('CKR_')) return err.message;
      throw err;
    }
    const name = Object.entries(pkcs11js).find(([k, v]) => k.startsWith('CKR_') && v === err.code)?.[0];
    return name ?? `CKR_0x${err.code.toString(16)}`;
  }
}
