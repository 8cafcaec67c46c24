// The software EME-OAEP decoder (hsm/oaep.ts) on its own: Wycheproof's OAEP-SHA256 and OAEP-SHA1
// vectors, with the raw RSA step done by Node (RSA_NO_PADDING, as CKM_RSA_X_509 does it in the
// token); Node's own OAEP encryption as a peer; random encoded messages. The same vectors go
// through the token in test/keystore-v2-vectors.test.ts.
import { constants, createPrivateKey, generateKeyPairSync, privateDecrypt, publicEncrypt, randomBytes, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import t from 'tap';
import { HsmError, oaepDecode, type OaepHash } from '../hsm/index.js';
import { vectorsDir } from './helpers/paths.js';

interface Case {
  tcId: number;
  comment: string;
  msg: string;
  ct: string;
  label: string;
  result: 'valid' | 'invalid' | 'acceptable';
}
interface Group {
  keySize: number;
  privateKeyPem: string;
  tests: Case[];
}

const FILES: Array<{ name: string; hash: OaepHash }> = [
  { name: 'rsa_oaep_3072_sha256_mgf1sha256_test.json', hash: 'sha256' },
  { name: 'rsa_oaep_2048_sha1_mgf1sha1_test.json', hash: 'sha1' },
];

const hex = (s: string) => Buffer.from(s, 'hex');

/** Everything a caller can see of an error; the one failure must look the same every time. */
function shape(err: unknown): string {
  if (!(err instanceof HsmError)) return `not an HsmError: ${String(err)}`;
  return JSON.stringify({
    name: err.name,
    code: err.code,
    message: err.message,
    ckr: err.ckr ?? null,
    cause: err.cause === undefined ? null : 'present',
    keys: Object.keys(err).sort(),
  });
}

function attempt(fn: () => Buffer): { ok: Buffer } | { error: string } {
  try {
    return { ok: fn() };
  } catch (err) {
    return { error: shape(err) };
  }
}

/** Raw RSA (c^d mod n), k bytes, or undefined when c is not a k-byte value below n (the token refuses those). */
function rawDecrypt(key: KeyObject, k: number, ct: Buffer): Buffer | undefined {
  if (ct.length !== k) return undefined;
  try {
    return privateDecrypt({ key, padding: constants.RSA_NO_PADDING }, ct);
  } catch {
    return undefined;
  }
}

const failures = new Set<string>();

for (const file of FILES) {
  t.test(`Wycheproof ${file.name}`, async (t) => {
    const data = JSON.parse(readFileSync(join(vectorsDir(), 'wycheproof', file.name), 'utf8')) as { testGroups: Group[] };
    let invalidDecoded = 0;
    let validDecoded = 0;
    let notRaw = 0;
    for (const group of data.testGroups) {
      const key = createPrivateKey(group.privateKeyPem);
      const k = group.keySize / 8;
      for (const tc of group.tests) {
        const em = rawDecrypt(key, k, hex(tc.ct));
        if (em === undefined) {
          // Wrong length or c ≥ n: refused before or by the raw RSA step (keystore-v2-vectors covers it).
          t.equal(tc.result, 'invalid', `tc ${tc.tcId} (${tc.comment}) cannot be computed and must be invalid`);
          notRaw += 1;
          continue;
        }
        t.equal(em.length, k, `tc ${tc.tcId}: raw RSA output keeps its leading zeros`);
        const got = attempt(() => oaepDecode(em, file.hash, hex(tc.label)));
        if (tc.result === 'invalid') {
          t.ok('error' in got, `tc ${tc.tcId} (${tc.comment}) is refused`);
          if ('error' in got) failures.add(got.error);
          invalidDecoded += 1;
        } else {
          t.same('ok' in got ? got.ok.toString('hex') : got, tc.msg, `tc ${tc.tcId} (${tc.comment}) decodes to its message`);
          validDecoded += 1;
          if (tc.label !== '') {
            // The store always decodes with the empty label: a labelled ciphertext must fail there, the same way.
            const unlabelled = attempt(() => oaepDecode(em, file.hash));
            t.ok('error' in unlabelled, `tc ${tc.tcId}: without its label it is refused`);
            if ('error' in unlabelled) failures.add(unlabelled.error);
          }
        }
      }
    }
    // Guard against a vector file that silently lost its cases.
    t.ok(invalidDecoded >= 13, `${invalidDecoded} invalid encodings reached the decoder`);
    t.ok(validDecoded >= 17, `${validDecoded} valid cases decoded`);
    t.ok(notRaw >= 5, `${notRaw} cases refused before decoding`);
  });
}

t.test('every refusal above is the one indistinguishable failure', async (t) => {
  t.same([...failures], [shape(new HsmError('HSM_ERR_DECRYPT', 'decryption refused'))]);
});

t.test('round trips with Node OAEP encryption, labels and message lengths up to the maximum', async (t) => {
  for (const [bits, hash] of [
    [2048, 'sha1'],
    [2048, 'sha256'],
    [3072, 'sha256'],
  ] as const) {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: bits });
    const k = bits / 8;
    const hLen = hash === 'sha1' ? 20 : 32;
    for (const length of [0, 1, 32, k - 2 * hLen - 2]) {
      const message = randomBytes(length);
      const label = randomBytes(length % 7);
      const ct = publicEncrypt({ key: publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash, oaepLabel: label }, message);
      const em = privateDecrypt({ key: privateKey, padding: constants.RSA_NO_PADDING }, ct);
      t.same(oaepDecode(em, hash, label), message, `${bits}/${hash}: ${length}-byte message`);
      t.same(attempt(() => oaepDecode(em, hash === 'sha1' ? 'sha256' : 'sha1', label)), { error: shape(new HsmError('HSM_ERR_DECRYPT', 'decryption refused')) }, `${bits}/${hash}: the other hash is refused`);
    }
  }
});

t.test('random encoded messages either decode or fail the one way', async (t) => {
  const oneFailure = shape(new HsmError('HSM_ERR_DECRYPT', 'decryption refused'));
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 256, maxLength: 256 }), fc.constantFrom<OaepHash>('sha1', 'sha256'), (bytes, hash) => {
      const got = attempt(() => oaepDecode(Buffer.from(bytes), hash));
      // A random 256-byte value is a valid encoding with probability below 2^-160.
      return 'error' in got && got.error === oneFailure;
    }),
    { numRuns: 2000 },
  );
  t.pass('2000 random encodings refused identically');
});

t.test('a modulus too short for the hash is an input error, not a decryption failure', async (t) => {
  const err = (() => {
    try {
      oaepDecode(Buffer.alloc(65), 'sha256');
      return undefined;
    } catch (e) {
      return e;
    }
  })();
  t.ok(err instanceof HsmError && err.code === 'HSM_ERR_INPUT', 'HSM_ERR_INPUT for 65 bytes with SHA-256 (needs 66)');
});
