// Known-answer vectors through KeyStore v2 on a real SoftHSM token: Wycheproof OAEP-SHA256 and
// OAEP-SHA1 decryption (raw-RSA keys, our decoder), deterministic RSA PKCS#1 v1.5 signatures
// reproduced byte for byte, and the verification vectors as the shape our DigestInfo and PSS
// parameters must have. Vector keys are public test data, imported at test time.
import { constants, createHash, createPrivateKey, createPublicKey, publicDecrypt } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { HsmError, openPkcs11KeyStoreV2, type DigestHash, type KeyStoreV2, type RsaPrivateKeyComponents, type SignScheme } from '../hsm/index.js';
import { digestInfo } from '../hsm/signature.js';
import { nodeVerify, opensslPkeyutlVerify } from './helpers/keystore-v2-util.js';
import { vectorsDir } from './helpers/paths.js';
import { createTestToken } from './helpers/token.js';

const hex = (s: string) => Buffer.from(s, 'hex');
const read = <T>(name: string): T => JSON.parse(readFileSync(join(vectorsDir(), 'wycheproof', name), 'utf8')) as T;
const shaOf = (s: string) => s.toLowerCase().replace('-', '') as DigestHash | 'sha1';

interface Case {
  tcId: number;
  comment: string;
  msg: string;
  ct?: string;
  sig?: string;
  label?: string;
  result: 'valid' | 'invalid' | 'acceptable';
}
interface Group {
  keySize: number;
  sha: string;
  privateKey?: Record<keyof RsaPrivateKeyComponents, string>;
  publicKeyDer?: string;
  privateKeyPkcs8?: string;
  tests: Case[];
}

/** The sig_gen groups carry only n, e, d in clear: take the CRT components from the PKCS#8 form. */
function pkcs8Components(der: string): RsaPrivateKeyComponents {
  const jwk = createPrivateKey({ key: hex(der), format: 'der', type: 'pkcs8' }).export({ format: 'jwk' });
  const b = (v: string | undefined) => Buffer.from(v ?? '', 'base64url');
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

function components(raw: Record<keyof RsaPrivateKeyComponents, string>): RsaPrivateKeyComponents {
  const u = (h: string) => {
    const b = hex(h);
    let i = 0;
    while (i < b.length - 1 && b[i] === 0) i += 1;
    return b.subarray(i);
  };
  return {
    modulus: u(raw.modulus),
    publicExponent: u(raw.publicExponent),
    privateExponent: u(raw.privateExponent),
    prime1: u(raw.prime1),
    prime2: u(raw.prime2),
    exponent1: u(raw.exponent1),
    exponent2: u(raw.exponent2),
    coefficient: u(raw.coefficient),
  };
}

function visible(err: unknown): string {
  if (!(err instanceof HsmError)) return `not an HsmError: ${String(err)}`;
  return JSON.stringify({ code: err.code, message: err.message, ckr: err.ckr ?? null, cause: err.cause === undefined ? null : 'present' });
}

const dir = mkdtempSync(join(tmpdir(), 'strongroom-ks2v-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
let ks: KeyStoreV2;

t.before(async () => {
  const token = createTestToken();
  ks = await openPkcs11KeyStoreV2({ modulePath: token.modulePath, tokenLabel: token.label, pin: token.pin, sessions: 4 });
});
t.teardown(() => ks?.close());

const oneFailure = visible(new HsmError('HSM_ERR_DECRYPT', 'decryption refused'));

for (const [name, scheme] of [
  ['rsa_oaep_3072_sha256_mgf1sha256_test.json', 'oaep-sha256'],
  ['rsa_oaep_2048_sha1_mgf1sha1_test.json', 'oaep-sha1'],
] as const) {
  t.test(`Wycheproof ${name} through the token (CKM_RSA_X_509-only key + decoder)`, async (t) => {
    const data = read<{ testGroups: Group[] }>(name);
    const failures = new Set<string>();
    const counts = { plaintext: 0, refused: 0, length: 0 };
    for (const [g, group] of data.testGroups.entries()) {
      const info = await ks.importRsaKeyPair({ usage: 'decrypt', alias: `${scheme}.vector.${g}` }, components(group.privateKey as Group['privateKey'] & object));
      t.equal(info.decryptSchemes[scheme], 'raw-rsa+decoder', 'this token cannot do it: raw RSA and our decoder');
      const k = group.keySize / 8;
      for (const tc of group.tests) {
        const ct = hex(tc.ct ?? '');
        const what = `tc ${tc.tcId} (${tc.comment || tc.result})`;
        let outcome: Buffer | HsmError;
        try {
          outcome = await ks.decrypt(info.ref, scheme, ct);
        } catch (err) {
          outcome = err as HsmError;
        }
        if (tc.result !== 'invalid' && (tc.label ?? '') === '') {
          t.equal(Buffer.isBuffer(outcome) ? outcome.toString('hex') : visible(outcome), tc.msg, `${what}: plaintext`);
          counts.plaintext += 1;
        } else if (ct.length !== k) {
          // Public information (the modulus length): refused before the token, RFC 8017 §7.1.2 step 1b.
          t.equal(outcome instanceof HsmError && outcome.code, 'HSM_ERR_INPUT', `${what}: wrong length`);
          counts.length += 1;
        } else {
          // Invalid padding, c ≥ n, and valid ciphertexts made with a label (the store's label is empty).
          t.notOk(Buffer.isBuffer(outcome), `${what}: refused`);
          failures.add(visible(outcome));
          counts.refused += 1;
        }
      }
    }
    t.same([...failures], [oneFailure], 'every refusal is the same error: code, message, no CKR name, no cause');
    t.ok(counts.plaintext >= 10 && counts.refused >= 20 && counts.length >= 4, `cases: ${JSON.stringify(counts)}`);
  });
}

t.test('Wycheproof rsa_pkcs1_3072_sig_gen: the token reproduces every deterministic signature byte for byte', async (t) => {
  const data = read<{ testGroups: Group[] }>('rsa_pkcs1_3072_sig_gen_test.json');
  const imported = new Map<string, { alias: string }>();
  let signed = 0;
  for (const group of data.testGroups) {
    const key = pkcs8Components(group.privateKeyPkcs8 ?? '');
    const modulus = key.modulus.toString('hex');
    let ref = imported.get(modulus);
    if (ref === undefined) {
      ref = { alias: `sig-gen.${imported.size}` };
      await ks.importRsaKeyPair({ usage: 'sign', alias: ref.alias }, key);
      imported.set(modulus, ref);
    }
    const hash = shaOf(group.sha) as DigestHash;
    for (const tc of group.tests) {
      const digest = createHash(hash).update(hex(tc.msg)).digest();
      const signature = await ks.sign(ref, { scheme: 'rsa-pkcs1', hash }, digest);
      t.equal(signature.toString('hex'), tc.sig, `${group.sha} tc ${tc.tcId}`);
      signed += 1;
    }
  }
  t.ok(signed >= 26 && imported.size >= 2, `${signed} signatures with ${imported.size} keys`);
});

t.test('Wycheproof rsa_signature_3072_sha256: only the valid signatures open to our DigestInfo encoding', async (t) => {
  const data = read<{ testGroups: Group[] }>('rsa_signature_3072_sha256_test.json');
  let valid = 0;
  let other = 0;
  for (const group of data.testGroups) {
    const key = createPublicKey({ key: hex(group.publicKeyDer ?? ''), format: 'der', type: 'spki' });
    const k = group.keySize / 8;
    for (const tc of group.tests) {
      // EMSA-PKCS1-v1_5 (RFC 8017 §9.2): 00 01 FF…FF 00 ‖ DigestInfo, with our DigestInfo.
      const info = digestInfo('sha256', createHash('sha256').update(hex(tc.msg)).digest());
      const expected = Buffer.concat([Buffer.from([0, 1]), Buffer.alloc(k - info.length - 3, 0xff), Buffer.from([0]), info]);
      let opened: Buffer | undefined;
      try {
        opened = hex(tc.sig ?? '').length === k ? publicDecrypt({ key, padding: constants.RSA_NO_PADDING }, hex(tc.sig ?? '')) : undefined;
      } catch {
        opened = undefined;
      }
      const same = opened !== undefined && opened.equals(expected);
      t.equal(same, tc.result === 'valid', `tc ${tc.tcId} (${tc.comment || tc.result}) ${tc.result}`);
      if (tc.result === 'valid') valid += 1;
      else other += 1;
    }
  }
  t.ok(valid >= 7 && other >= 250, `${valid} valid, ${other} invalid or acceptable`);
});

t.test('Wycheproof rsa_pss_3072_sha256_mgf1_32: our PS256 parameters verify the vectors, and the token signs to them', async (t) => {
  const data = read<{ testGroups: Group[] }>('rsa_pss_3072_sha256_mgf1_32_test.json');
  const scheme: SignScheme = { scheme: 'rsa-pss', hash: 'sha256', mgf1Hash: 'sha256', saltLength: 32 };
  const signer = await ks.generate({ spec: 'rsa-3072', usage: 'sign', alias: 'pss-signer' });
  const { spki } = await ks.publicKey(signer.ref);
  let checked = 0;
  for (const group of data.testGroups) {
    const vectorKey = hex(group.publicKeyDer ?? '');
    for (const tc of group.tests) {
      const msg = hex(tc.msg);
      t.equal(nodeVerify(vectorKey, scheme, msg, hex(tc.sig ?? '')), tc.result === 'valid', `tc ${tc.tcId} ${tc.result} under our parameters`);
      const ours = await ks.sign(signer.ref, scheme, createHash('sha256').update(msg).digest());
      t.ok(nodeVerify(spki, scheme, msg, ours), `tc ${tc.tcId}: the token's PS256 over the same message verifies`);
      checked += 1;
    }
  }
  // OpenSSL as a second peer, on one message (each call spawns a process).
  const digest = createHash('sha256').update('pss').digest();
  t.ok(opensslPkeyutlVerify(dir, spki, scheme, digest, await ks.sign(signer.ref, scheme, digest)), 'openssl pkeyutl verifies PS256');
  t.ok(checked >= 100, `${checked} vectors`);
});
