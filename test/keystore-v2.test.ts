// KeyStore v2 contract over a real SoftHSM token: every key spec × usage × operation, each result
// checked by independent peers (Node's crypto, the openssl CLI) and the key objects read back
// with pkcs11js directly. Keys are generated in the token at test time.
import { createHash, generateKeyPairSync, randomBytes, randomUUID, X509Certificate } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AsnConvert } from '@peculiar/asn1-schema';
import { Certificate } from '@peculiar/asn1-x509';
import pkcs11js from 'pkcs11js';
import t from 'tap';
import {
  HsmError,
  KEY_SPECS,
  openPkcs11KeyStore,
  openPkcs11KeyStoreV2,
  type DecryptScheme,
  type DigestHash,
  type KeyInfo,
  type KeySpec,
  type KeyStoreV2,
  type SignScheme,
} from '../hsm/index.js';
import {
  ckrThrown,
  nodeEncryptV2,
  nodeVerify,
  opensslDgstVerify,
  opensslEncryptV2,
  opensslPkeyutlVerify,
  readBools,
  spkiKey,
  tokenObjects,
} from './helpers/keystore-v2-util.js';
import { withTokenSession } from './helpers/keystore-util.js';
import { createTestToken, type TestToken } from './helpers/token.js';

const HASHES: readonly DigestHash[] = ['sha256', 'sha384', 'sha512'];
const H_LEN: Record<DigestHash, number> = { sha256: 32, sha384: 48, sha512: 64 };
const RSA_SPECS = KEY_SPECS.filter((s) => s.startsWith('rsa'));
const EC_SPECS = KEY_SPECS.filter((s) => s.startsWith('ec'));
const ONE_FAILURE = { name: 'HsmError', code: 'HSM_ERR_DECRYPT', message: 'decryption refused', ckr: undefined, cause: undefined };

const dir = mkdtempSync(join(tmpdir(), 'strongroom-ks2-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

let token: TestToken;
let ks: KeyStoreV2;
/** alias → key info, for the keys generated in `before`. */
const keys = new Map<string, KeyInfo>();

const alias = (spec: KeySpec, kind: 'raw' | 'padded' | 'sign') => `${spec}.${kind}`;

async function rejection(p: Promise<unknown>): Promise<HsmError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof HsmError) return err;
    throw err;
  }
  throw new Error('expected a rejection');
}

function visible(err: HsmError) {
  return { name: err.name, code: err.code, message: err.message, ckr: err.ckr, cause: err.cause };
}

t.before(async () => {
  token = createTestToken();
  ks = await openPkcs11KeyStoreV2({ modulePath: token.modulePath, tokenLabel: token.label, pin: token.pin, sessions: 4 });
  const requests = [
    ...RSA_SPECS.flatMap((spec) => [
      // Default schemes (OAEP SHA-1 and SHA-256): raw RSA + our decoder on SoftHSM.
      { spec, usage: 'decrypt' as const, alias: alias(spec, 'raw') },
      // The LKM's schemes, both run by the token.
      { spec, usage: 'decrypt' as const, alias: alias(spec, 'padded'), decryptSchemes: ['oaep-sha1', 'pkcs1'] as DecryptScheme[] },
      { spec, usage: 'sign' as const, alias: alias(spec, 'sign') },
    ]),
    ...EC_SPECS.map((spec) => ({ spec, usage: 'sign' as const, alias: alias(spec, 'sign') })),
  ];
  const made = await Promise.all(requests.map((r) => ks.generate(r)));
  for (const info of made) keys.set(info.ref.alias, info);
});

t.teardown(() => ks?.close());

t.test('the capability probe reports what SoftHSM 2.6.1 does itself', async (t) => {
  t.equal(ks.capabilities.oaepSha256, false, 'OAEP-SHA256 is refused by the token');
  t.match(ks.capabilities.notes.join('; '), /OAEP-SHA256: CKR_ARGUMENTS_BAD/);
  t.equal(ks.capabilities.allowedMechanismsEnforced, true, 'CKA_ALLOWED_MECHANISMS is enforced');
  t.same(
    [ks.capabilities.rsaX509, ks.capabilities.rsaPss, ks.capabilities.ecdsa, ks.capabilities.ecKeyGeneration],
    [true, true, true, true],
  );
});

t.test('generated keys describe themselves: spec, usage and where each decryption scheme runs', async (t) => {
  for (const spec of RSA_SPECS) {
    t.same(keys.get(alias(spec, 'raw'))?.decryptSchemes, { 'oaep-sha1': 'raw-rsa+decoder', 'oaep-sha256': 'raw-rsa+decoder' }, `${spec} raw`);
    t.same(keys.get(alias(spec, 'padded'))?.decryptSchemes, { 'oaep-sha1': 'token', pkcs1: 'token' }, `${spec} padded`);
    t.same(keys.get(alias(spec, 'sign'))?.decryptSchemes, {}, `${spec} sign`);
  }
  for (const info of keys.values()) {
    t.equal(info.ref.id.length, 16, `${info.ref.alias}: 16-byte CKA_ID`);
    t.equal(info.form, 'key-pair');
    t.equal(info.spec, info.ref.alias.split('.')[0]);
  }
  // What a second instance (nothing cached) reads from the token is the same.
  const other = await openPkcs11KeyStoreV2({ modulePath: token.modulePath, tokenLabel: token.label, pin: token.pin, sessions: 1 });
  try {
    const listed = await other.list({ form: 'key-pair' });
    t.same(
      listed.map((i) => [i.ref.alias, i.ref.id.toString('hex'), i.spec, i.usage, i.decryptSchemes]),
      [...keys.values()]
        .sort((a, b) => (a.ref.alias < b.ref.alias ? -1 : 1))
        .map((i) => [i.ref.alias, i.ref.id.toString('hex'), i.spec, i.usage, i.decryptSchemes]),
    );
  } finally {
    await other.close();
  }
});

t.test('key objects carry the usage template, read back from the token', async (t) => {
  const CKM = pkcs11js;
  const expectedAllowed: Record<string, number[]> = {
    raw: [CKM.CKM_RSA_X_509],
    padded: [CKM.CKM_RSA_PKCS_OAEP, CKM.CKM_RSA_PKCS],
    sign: [CKM.CKM_RSA_PKCS, CKM.CKM_RSA_PKCS_PSS],
  };
  for (const info of keys.values()) {
    const kind = info.ref.alias.split('.')[1] as string;
    const decrypt = info.usage === 'decrypt';
    tokenObjects(token, info.ref.id, (p11, session, objects) => {
      const priv = objects.get(pkcs11js.CKO_PRIVATE_KEY);
      const pub = objects.get(pkcs11js.CKO_PUBLIC_KEY);
      if (priv === undefined || pub === undefined) {
        t.fail(`${info.ref.alias}: both halves in the token`);
        return;
      }
      t.same(
        readBools(p11, session, priv, [
          'CKA_TOKEN', 'CKA_PRIVATE', 'CKA_SENSITIVE', 'CKA_ALWAYS_SENSITIVE', 'CKA_EXTRACTABLE', 'CKA_WRAP_WITH_TRUSTED',
          'CKA_DECRYPT', 'CKA_SIGN', 'CKA_SIGN_RECOVER', 'CKA_UNWRAP', 'CKA_DERIVE', 'CKA_MODIFIABLE', 'CKA_COPYABLE',
        ]),
        {
          CKA_TOKEN: true, CKA_PRIVATE: true, CKA_SENSITIVE: true, CKA_ALWAYS_SENSITIVE: true, CKA_EXTRACTABLE: true,
          CKA_WRAP_WITH_TRUSTED: true, CKA_DECRYPT: decrypt, CKA_SIGN: !decrypt, CKA_SIGN_RECOVER: false, CKA_UNWRAP: false,
          CKA_DERIVE: false, CKA_MODIFIABLE: false, CKA_COPYABLE: false,
        },
        `${info.ref.alias}: private key attributes`,
      );
      t.same(
        readBools(p11, session, pub, ['CKA_PRIVATE', 'CKA_ENCRYPT', 'CKA_VERIFY', 'CKA_WRAP', 'CKA_MODIFIABLE']),
        { CKA_PRIVATE: false, CKA_ENCRYPT: decrypt, CKA_VERIFY: !decrypt, CKA_WRAP: false, CKA_MODIFIABLE: false },
        `${info.ref.alias}: public key attributes`,
      );
      const [allowed] = p11.C_GetAttributeValue(session, priv, [{ type: pkcs11js.CKA_ALLOWED_MECHANISMS }]);
      const packed = allowed?.value as Buffer;
      const mechanisms = Array.from({ length: packed.length / 8 }, (_, i) => Number(packed.readBigUInt64LE(i * 8)));
      // SoftHSM keeps the list as a set (ascending).
      const want = info.spec.startsWith('ec') ? [CKM.CKM_ECDSA] : (expectedAllowed[kind] ?? []);
      t.same(mechanisms.sort((a, b) => a - b), [...want].sort((a, b) => a - b), `${info.ref.alias}: allowed mechanisms`);
      t.equal(
        ckrThrown(() => p11.C_GetAttributeValue(session, priv, [{ type: info.spec.startsWith('ec') ? pkcs11js.CKA_VALUE : pkcs11js.CKA_PRIVATE_EXPONENT }])),
        'CKR_ATTRIBUTE_SENSITIVE',
        `${info.ref.alias}: the private value is not readable`,
      );
      // The usage cannot be switched afterwards, nor copied into a key with another one.
      const flip = decrypt ? pkcs11js.CKA_SIGN : pkcs11js.CKA_DECRYPT;
      t.not(ckrThrown(() => p11.C_SetAttributeValue(session, priv, [{ type: flip, value: true }])), 'no error', `${info.ref.alias}: usage frozen`);
      t.not(ckrThrown(() => p11.C_CopyObject(session, priv, [{ type: flip, value: true }])), 'no error', `${info.ref.alias}: not copyable`);
    });
  }
});

t.test('public keys as SPKI and JWK match the token\'s own numbers', async (t) => {
  for (const info of keys.values()) {
    const { spki, jwk } = await ks.publicKey(info.ref);
    const { use, ...bare } = jwk;
    t.same(spkiKey(spki).export({ format: 'jwk' }), bare, `${info.ref.alias}: SPKI and JWK agree`);
    t.equal(use, info.usage === 'sign' ? 'sig' : 'enc');
    tokenObjects(token, info.ref.id, (p11, session, objects) => {
      const pub = objects.get(pkcs11js.CKO_PUBLIC_KEY) as pkcs11js.Handle;
      if (info.spec.startsWith('rsa')) {
        const [n] = p11.C_GetAttributeValue(session, pub, [{ type: pkcs11js.CKA_MODULUS }]);
        t.equal(Buffer.from(jwk.n ?? '', 'base64url').toString('hex'), (n?.value as Buffer).toString('hex'), `${info.ref.alias}: modulus`);
        t.equal(Buffer.from(jwk.n ?? '', 'base64url').length * 8, Number(info.spec.slice(4)), `${info.ref.alias}: size`);
      } else {
        const [point] = p11.C_GetAttributeValue(session, pub, [{ type: pkcs11js.CKA_EC_POINT }]);
        const raw = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x ?? '', 'base64url'), Buffer.from(jwk.y ?? '', 'base64url')]);
        t.equal((point?.value as Buffer).subarray(2).toString('hex'), raw.toString('hex'), `${info.ref.alias}: EC point`);
        t.equal(jwk.crv, info.spec === 'ec-p256' ? 'P-256' : 'P-384');
      }
    });
  }
});

t.test('decryption: OAEP-SHA1 and OAEP-SHA256 (raw RSA + decoder), OAEP-SHA1 and PKCS#1 v1.5 (token), from Node and OpenSSL', async (t) => {
  for (const spec of RSA_SPECS) {
    const k = Number(spec.slice(4)) / 8;
    for (const [kind, schemes] of [
      ['raw', ['oaep-sha1', 'oaep-sha256']],
      ['padded', ['oaep-sha1', 'pkcs1']],
    ] as const) {
      const info = keys.get(alias(spec, kind)) as KeyInfo;
      const { spki } = await ks.publicKey(info.ref);
      for (const scheme of schemes) {
        const overhead = scheme === 'pkcs1' ? 11 : scheme === 'oaep-sha1' ? 42 : 66;
        for (const length of [0, 32, k - overhead]) {
          const message = randomBytes(length);
          for (const [peer, encrypt] of [
            ['node', () => nodeEncryptV2(spki, scheme, message)],
            ['openssl', () => opensslEncryptV2(dir, spki, scheme, message)],
          ] as const) {
            const plaintext = await ks.decrypt({ alias: info.ref.alias }, scheme, encrypt());
            t.equal(plaintext.toString('hex'), message.toString('hex'), `${spec} ${kind} ${scheme} ${length} bytes from ${peer}`);
          }
        }
        // A ciphertext for another key, and a damaged one: the one failure, nothing more.
        const foreign = nodeEncryptV2((await ks.publicKey(keys.get(alias(spec, 'sign'))?.ref as KeyInfo['ref'])).spki, scheme, randomBytes(16));
        t.same(visible(await rejection(ks.decrypt(info.ref, scheme, foreign))), ONE_FAILURE, `${spec} ${kind} ${scheme}: another key's ciphertext`);
        const damaged = nodeEncryptV2(spki, scheme, randomBytes(16));
        damaged[k - 1] = (damaged[k - 1] as number) ^ 1;
        t.same(visible(await rejection(ks.decrypt(info.ref, scheme, damaged))), ONE_FAILURE, `${spec} ${kind} ${scheme}: a damaged ciphertext`);
        const short = await rejection(ks.decrypt(info.ref, scheme, damaged.subarray(1)));
        t.equal(short.code, 'HSM_ERR_INPUT', `${spec} ${kind} ${scheme}: wrong length refused before the token`);
      }
    }
  }
});

function schemesFor(spec: KeySpec, hash: DigestHash): SignScheme[] {
  if (spec.startsWith('ec')) return [{ scheme: 'ecdsa', hash }];
  return [
    { scheme: 'rsa-pkcs1', hash },
    { scheme: 'rsa-pss', hash, mgf1Hash: hash, saltLength: H_LEN[hash] },
  ];
}

t.test('signing a caller\'s digest: RSA PKCS#1 v1.5, RSA-PSS and ECDSA (DER), verified by Node and OpenSSL', async (t) => {
  for (const spec of KEY_SPECS) {
    const info = keys.get(alias(spec, 'sign')) as KeyInfo;
    const { spki } = await ks.publicKey(info.ref);
    for (const hash of HASHES) {
      for (const scheme of schemesFor(spec, hash)) {
        const data = randomBytes(100);
        const digest = createHash(hash).update(data).digest();
        const signature = await ks.sign({ alias: info.ref.alias }, scheme, digest);
        const what = `${spec} ${scheme.scheme} ${hash}`;
        t.ok(nodeVerify(spki, scheme, data, signature), `${what}: Node verifies`);
        t.ok(opensslDgstVerify(dir, spki, scheme, data, signature), `${what}: openssl dgst -verify`);
        t.ok(opensslPkeyutlVerify(dir, spki, scheme, digest, signature), `${what}: openssl pkeyutl -verify`);
        if (scheme.scheme === 'ecdsa') {
          t.equal(signature[0], 0x30, `${what}: DER SEQUENCE{r,s}`);
        } else {
          t.equal(signature.length, Number(spec.slice(4)) / 8, `${what}: k bytes`);
        }
        const again = await ks.sign(info.ref, scheme, digest);
        t.equal(again.equals(signature), scheme.scheme === 'rsa-pkcs1', `${what}: ${scheme.scheme === 'rsa-pkcs1' ? 'deterministic' : 'randomised'}`);
        // The peers can fail: a signature over other data is refused by both.
        const other = createHash(hash).update(randomBytes(8)).digest();
        t.notOk(nodeVerify(spki, scheme, Buffer.from('other'), signature), `${what}: Node refuses other data`);
        t.notOk(opensslPkeyutlVerify(dir, spki, scheme, other, signature), `${what}: openssl refuses another digest`);
      }
    }
    const wrongLength = await rejection(ks.sign(info.ref, schemesFor(spec, 'sha256')[0] as SignScheme, Buffer.alloc(31)));
    t.equal(wrongLength.code, 'HSM_ERR_INPUT', `${spec}: a digest of the wrong length is refused before the token`);
  }
});

t.test('a decrypt key never signs and a sign key never decrypts: the token refuses', async (t) => {
  for (const spec of RSA_SPECS) {
    const k = Number(spec.slice(4)) / 8;
    const digest = createHash('sha256').update('x').digest();
    for (const kind of ['raw', 'padded'] as const) {
      const info = keys.get(alias(spec, kind)) as KeyInfo;
      for (const scheme of schemesFor(spec, 'sha256')) {
        const err = await rejection(ks.sign(info.ref, scheme, digest));
        t.equal(err.code, 'HSM_ERR_KEY_USAGE', `${spec} ${kind} cannot ${scheme.scheme}`);
        t.ok(['CKR_KEY_FUNCTION_NOT_PERMITTED', 'CKR_MECHANISM_INVALID'].includes(err.ckr ?? ''), `${spec} ${kind} ${scheme.scheme}: the token's refusal (${err.ckr})`);
      }
    }
    const signKey = keys.get(alias(spec, 'sign')) as KeyInfo;
    for (const scheme of ['oaep-sha1', 'oaep-sha256', 'pkcs1'] as const) {
      const err = await rejection(ks.decrypt(signKey.ref, scheme, Buffer.alloc(k, 1)));
      t.equal(err.code, 'HSM_ERR_KEY_USAGE', `${spec} sign key cannot decrypt ${scheme}`);
      t.ok(err.ckr?.startsWith('CKR_'), `${spec} sign ${scheme}: the token's refusal (${err.ckr})`);
    }
    // The raw key is limited to CKM_RSA_X_509: PKCS#1 v1.5 decryption is the token's refusal too.
    const raw = await rejection(ks.decrypt(keys.get(alias(spec, 'raw'))?.ref as KeyInfo['ref'], 'pkcs1', Buffer.alloc(k, 1)));
    t.same([raw.code, raw.ckr], ['HSM_ERR_KEY_USAGE', 'CKR_MECHANISM_INVALID'], `${spec} raw key refuses PKCS#1 v1.5`);
    // The padded key cannot get OAEP-SHA256 from SoftHSM 2.6.1.
    const padded = await rejection(ks.decrypt(keys.get(alias(spec, 'padded'))?.ref as KeyInfo['ref'], 'oaep-sha256', Buffer.alloc(k, 1)));
    t.same([padded.code, padded.ckr], ['HSM_ERR_KEY_USAGE', 'CKR_ARGUMENTS_BAD'], `${spec} padded key: no OAEP-SHA256 in this token`);
  }
  for (const spec of EC_SPECS) {
    const info = keys.get(alias(spec, 'sign')) as KeyInfo;
    const err = await rejection(ks.sign(info.ref, { scheme: 'rsa-pkcs1', hash: 'sha256' }, Buffer.alloc(32)));
    t.equal(err.code, 'HSM_ERR_KEY_USAGE', `${spec}: an RSA scheme is refused (${err.ckr})`);
    t.equal((await rejection(ks.generate({ spec, usage: 'decrypt', alias: `${spec}.decrypt` }))).code, 'HSM_ERR_INPUT', `${spec}: no EC decrypt keys`);
  }
  // The same refusals straight from the token, without the store in between.
  const rawKey = keys.get(alias('rsa-2048', 'raw')) as KeyInfo;
  const signKey = keys.get(alias('rsa-2048', 'sign')) as KeyInfo;
  tokenObjects(token, rawKey.ref.id, (p11, session, objects) => {
    const priv = objects.get(pkcs11js.CKO_PRIVATE_KEY) as pkcs11js.Handle;
    t.equal(ckrThrown(() => p11.C_SignInit(session, { mechanism: pkcs11js.CKM_RSA_X_509 }, priv)), 'CKR_KEY_FUNCTION_NOT_PERMITTED', 'raw decrypt key: C_SignInit refused');
    t.equal(ckrThrown(() => p11.C_DecryptInit(session, { mechanism: pkcs11js.CKM_RSA_PKCS }, priv)), 'CKR_MECHANISM_INVALID', 'raw decrypt key: only CKM_RSA_X_509');
  });
  tokenObjects(token, signKey.ref.id, (p11, session, objects) => {
    const priv = objects.get(pkcs11js.CKO_PRIVATE_KEY) as pkcs11js.Handle;
    t.not(ckrThrown(() => p11.C_DecryptInit(session, { mechanism: pkcs11js.CKM_RSA_PKCS }, priv)), 'no error', 'sign key: C_DecryptInit refused');
    t.not(ckrThrown(() => p11.C_DecryptInit(session, { mechanism: pkcs11js.CKM_RSA_X_509 }, priv)), 'no error', 'sign key: raw RSA refused');
  });
});

t.test('a partner\'s public keys and certificates are public data, listed by usage and alias', async (t) => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ format: 'der', type: 'spki' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey.export({ format: 'der', type: 'spki' });
  const certPath = join(dir, 'partner.der');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'partner.key'),
    '-subj', '/CN=partner.example/O=Partner', '-days', '2', '-outform', 'DER', '-out', certPath,
  ], { stdio: 'pipe' });
  const certDer = readFileSync(certPath);

  const encryptTo = await ks.importPublicKey('partner.rsa', 'decrypt', rsa);
  const verifyWith = await ks.importPublicKey('partner.ec', 'sign', ec);
  const cert = await ks.importCertificate('partner.cert', 'sign', certDer);
  t.same([encryptTo.form, encryptTo.spec, encryptTo.usage], ['public-key', 'rsa-2048', 'decrypt']);
  t.same([verifyWith.form, verifyWith.spec, verifyWith.usage], ['public-key', 'ec-p384', 'sign']);
  t.same([cert.form, cert.spec, cert.usage], ['certificate', 'ec-p256', 'sign']);

  t.same((await ks.publicKey({ alias: 'partner.rsa' })).spki, rsa, 'RSA SPKI comes back byte for byte');
  t.same((await ks.publicKey({ alias: 'partner.ec' })).spki, ec, 'EC SPKI comes back byte for byte');
  t.same((await ks.publicKey({ alias: 'partner.cert' })).spki, new X509Certificate(certDer).publicKey.export({ format: 'der', type: 'spki' }), 'the certificate\'s key');
  t.same(await ks.certificate({ alias: 'partner.cert' }), certDer, 'the certificate comes back byte for byte');
  t.equal(await ks.certificate({ alias: 'partner.ec' }), undefined, 'a bare key has no certificate');

  tokenObjects(token, cert.ref.id, (p11, session, objects) => {
    const c = objects.get(pkcs11js.CKO_CERTIFICATE) as pkcs11js.Handle;
    const pub = objects.get(pkcs11js.CKO_PUBLIC_KEY) as pkcs11js.Handle;
    t.same(readBools(p11, session, c, ['CKA_PRIVATE', 'CKA_TOKEN', 'CKA_MODIFIABLE']), { CKA_PRIVATE: false, CKA_TOKEN: true, CKA_MODIFIABLE: false });
    t.same(readBools(p11, session, pub, ['CKA_PRIVATE', 'CKA_VERIFY', 'CKA_ENCRYPT']), { CKA_PRIVATE: false, CKA_VERIFY: true, CKA_ENCRYPT: false });
    const parsed = AsnConvert.parse(certDer, Certificate);
    const [subject, issuer] = p11.C_GetAttributeValue(session, c, [{ type: pkcs11js.CKA_SUBJECT }, { type: pkcs11js.CKA_ISSUER }]);
    t.same(subject?.value, Buffer.from(AsnConvert.serialize(parsed.tbsCertificate.subject)), 'CKA_SUBJECT is the DER subject');
    t.same(issuer?.value, Buffer.from(AsnConvert.serialize(parsed.tbsCertificate.issuer)), 'CKA_ISSUER is the DER issuer');
    t.equal(objects.has(pkcs11js.CKO_PRIVATE_KEY), false, 'no private key under a partner\'s id');
  });

  for (const a of ['partner.rsa', 'partner.ec', 'partner.cert']) {
    t.equal((await rejection(ks.sign({ alias: a }, { scheme: 'ecdsa', hash: 'sha256' }, Buffer.alloc(32)))).code, 'HSM_ERR_KEY_USAGE', `${a} cannot sign`);
    t.equal((await rejection(ks.decrypt({ alias: a }, 'oaep-sha1', Buffer.alloc(256)))).code, 'HSM_ERR_KEY_USAGE', `${a} cannot decrypt`);
  }
  t.equal((await rejection(ks.importPublicKey('partner.rsa', 'sign', ec))).code, 'HSM_ERR_KEY_EXISTS', 'an alias names one key');
  t.equal((await rejection(ks.generate({ spec: 'ec-p256', usage: 'sign', alias: 'rsa-2048.raw' }))).code, 'HSM_ERR_KEY_EXISTS', 'also against generated keys');
  t.equal((await rejection(ks.importPublicKey('bad alias', 'sign', ec))).code, 'HSM_ERR_INPUT', 'aliases are checked');
  t.equal((await rejection(ks.importPublicKey('partner.junk', 'sign', Buffer.from('3000', 'hex')))).code, 'HSM_ERR_INPUT', 'not an SPKI');
  const small = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'der', type: 'spki' });
  t.equal((await rejection(ks.importPublicKey('partner.small', 'sign', small))).code, 'HSM_ERR_INPUT', 'RSA-1024 is not a v2 spec');
  t.equal((await rejection(ks.importPublicKey('partner.ecenc', 'decrypt', ec))).code, 'HSM_ERR_INPUT', 'an EC key cannot be an encryption key');
  t.equal((await rejection(ks.importCertificate('partner.notcert', 'sign', rsa))).code, 'HSM_ERR_INPUT', 'not a certificate');

  const sign = await ks.list({ usage: 'sign' });
  t.same(sign.map((i) => i.ref.alias), ['ec-p256.sign', 'ec-p384.sign', 'partner.cert', 'partner.ec', 'rsa-2048.sign', 'rsa-3072.sign', 'rsa-4096.sign']);
  const decrypt = await ks.list({ usage: 'decrypt' });
  t.same(decrypt.map((i) => i.ref.alias), ['partner.rsa', ...RSA_SPECS.flatMap((s) => [alias(s, 'padded'), alias(s, 'raw')])]);
  t.same((await ks.list({ form: 'certificate' })).map((i) => i.ref.alias), ['partner.cert']);
  t.same((await ks.list({ alias: 'partner.ec' })).map((i) => [i.ref.alias, i.form]), [['partner.ec', 'public-key']]);
  t.same(await ks.list({ alias: 'nobody' }), []);
  t.same((await ks.describe({ id: cert.ref.id })).ref.alias, 'partner.cert', 'found by CKA_ID too');
});

t.test('destroy removes every object under the id; the alias is free again', async (t) => {
  const info = await ks.generate({ spec: 'ec-p256', usage: 'sign', alias: 'short-lived' });
  const cert = (await ks.list({ alias: 'partner.cert' }))[0] as KeyInfo;
  t.equal(await ks.destroy({ alias: 'short-lived' }), true);
  t.equal(await ks.destroy({ id: cert.ref.id }), true);
  t.equal(await ks.destroy({ alias: 'short-lived' }), false, 'nothing left to destroy');
  t.equal(tokenObjects(token, info.ref.id, (_p, _s, objects) => objects.size), 0, 'no object left with its id');
  t.equal(tokenObjects(token, cert.ref.id, (_p, _s, objects) => objects.size), 0, 'certificate and key gone');
  t.equal((await rejection(ks.sign({ alias: 'short-lived' }, { scheme: 'ecdsa', hash: 'sha256' }, Buffer.alloc(32)))).code, 'HSM_ERR_KEY_NOT_FOUND');
  const again = await ks.generate({ spec: 'ec-p256', usage: 'sign', alias: 'short-lived' });
  t.not(again.ref.id.toString('hex'), info.ref.id.toString('hex'), 'a new key gets a new id');
});

t.test('a key made by the v1 store (UUID id and label) reads as a decrypt key with the token\'s padding', async (t) => {
  const v1 = await openPkcs11KeyStore({ modulePath: token.modulePath, tokenLabel: token.label, pin: token.pin, sessions: 1 });
  const keyId = randomUUID();
  try {
    await v1.generateRsaKeyPair(keyId, 2048);
  } finally {
    await v1.close();
  }
  const info = await ks.describe({ alias: keyId });
  t.same([info.spec, info.usage, info.form, info.decryptSchemes], ['rsa-2048', 'decrypt', 'key-pair', { 'oaep-sha1': 'token', pkcs1: 'token' }]);
  t.equal(info.ref.id.toString('hex'), keyId.replace(/-/g, ''), 'CKA_ID is the UUID\'s bytes');
  const { spki } = await ks.publicKey({ alias: keyId });
  for (const scheme of ['oaep-sha1', 'pkcs1'] as const) {
    const message = randomBytes(24);
    t.same(await ks.decrypt({ alias: keyId }, scheme, nodeEncryptV2(spki, scheme, message)), message, `v1 key decrypts ${scheme} through v2`);
  }
  t.equal((await rejection(ks.sign({ alias: keyId }, { scheme: 'rsa-pkcs1', hash: 'sha256' }, Buffer.alloc(32)))).ckr, 'CKR_KEY_FUNCTION_NOT_PERMITTED', 'and still cannot sign');
});

t.test('other applications\' data objects (no CKA_ID) are neither listed nor in the way', async (t) => {
  withTokenSession(token, (p11, session) => {
    p11.C_CreateObject(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: false },
      { type: pkcs11js.CKA_LABEL, value: 'other-app' },
      { type: pkcs11js.CKA_APPLICATION, value: 'someone else' },
      { type: pkcs11js.CKA_VALUE, value: Buffer.from('data') },
    ]);
  });
  const all = await ks.list();
  t.ok(all.length >= 11 && !all.some((i) => i.ref.alias === 'other-app'), `${all.length} keys listed, the data object not`);
  t.equal((await rejection(ks.describe({ alias: 'other-app' }))).code, 'HSM_ERR_KEY_NOT_FOUND');
});
