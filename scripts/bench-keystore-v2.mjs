// KeyStore v2 throughput on a fresh SoftHSM token, in this process (no HTTP, no database):
// decryption by scheme and engine (OAEP-SHA1 in the token, OAEP-SHA1/SHA256 as raw RSA in the
// token + our constant-time decoder, PKCS#1 v1.5 in the token) and signing per key spec.
// Four sessions, four operations in flight; alternating rounds, median reported, with the
// process CPU per operation (SoftHSM runs in this process, so that includes the RSA itself).
//
//   npm run build && node scripts/bench-keystore-v2.mjs [--seconds 3] [--rounds 3]
import { execFileSync } from 'node:child_process';
import { constants, createHash, createPublicKey, generateKeyPairSync, privateDecrypt, publicEncrypt, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? fallback : Number(process.argv[i + 1]);
};
const seconds = arg('seconds', 3);
const rounds = arg('rounds', 3);
const SESSIONS = 4;

const root = resolve(new URL('..', import.meta.url).pathname);
const { openPkcs11KeyStoreV2, findSoftHsmModule, oaepDecode } = await import(pathToFileURL(join(root, 'dist/hsm/index.js')).href);

const work = mkdtempSync(join(tmpdir(), 'strongroom-bench-ks2-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));
mkdirSync(join(work, 'tokens'));
writeFileSync(join(work, 'softhsm.conf'), `directories.tokendir = ${join(work, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
process.env.SOFTHSM2_CONF = join(work, 'softhsm.conf');
const pin = randomBytes(8).toString('hex');
execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'bench-ks2', '--so-pin', randomBytes(8).toString('hex'), '--pin', pin], { stdio: 'pipe' });
const ks = await openPkcs11KeyStoreV2({ modulePath: findSoftHsmModule(), tokenLabel: 'bench-ks2', pin, sessions: SESSIONS });

/** Run `op` with SESSIONS operations in flight for `seconds`; ops/s and CPU ms per op. */
async function measure(op) {
  const end = Date.now() + seconds * 1000;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  let done = 0;
  await Promise.all(
    Array.from({ length: SESSIONS }, async () => {
      while (Date.now() < end) {
        await op();
        done += 1;
      }
    }),
  );
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  return { opsPerSecond: done / elapsed, cpuMsPerOp: (cpu.user + cpu.system) / 1000 / done };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const raw = await ks.generate({ spec: 'rsa-3072', usage: 'decrypt', alias: 'raw' });
const padded = await ks.generate({ spec: 'rsa-3072', usage: 'decrypt', alias: 'padded', decryptSchemes: ['oaep-sha1', 'pkcs1'] });
const cases = [];
for (const [info, scheme] of [
  [padded, 'oaep-sha1'],
  [raw, 'oaep-sha1'],
  [raw, 'oaep-sha256'],
  [padded, 'pkcs1'],
]) {
  const key = createPublicKey({ key: (await ks.publicKey(info.ref)).spki, format: 'der', type: 'spki' });
  const ct =
    scheme === 'pkcs1'
      ? publicEncrypt({ key, padding: constants.RSA_PKCS1_PADDING }, randomBytes(32))
      : publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: scheme === 'oaep-sha256' ? 'sha256' : 'sha1' }, randomBytes(32));
  cases.push({ what: `decrypt rsa-3072 ${scheme}`, engine: info.decryptSchemes[scheme], op: () => ks.decrypt(info.ref, scheme, ct) });
}
const digest = createHash('sha256').update('bench').digest();
for (const spec of ['rsa-2048', 'rsa-3072', 'rsa-4096', 'ec-p256', 'ec-p384']) {
  const info = await ks.generate({ spec, usage: 'sign', alias: `sign-${spec}` });
  const schemes = spec.startsWith('ec')
    ? [{ scheme: 'ecdsa', hash: 'sha256' }]
    : [{ scheme: 'rsa-pkcs1', hash: 'sha256' }, { scheme: 'rsa-pss', hash: 'sha256', mgf1Hash: 'sha256', saltLength: 32 }];
  for (const scheme of schemes) cases.push({ what: `sign ${spec} ${scheme.scheme} sha256`, engine: 'token', op: () => ks.sign(info.ref, scheme, digest) });
}

for (const c of cases) await measure(c.op); // warm-up, and every code path compiled
const results = cases.map(() => []);
for (let r = 0; r < rounds; r += 1) {
  for (const [i, c] of cases.entries()) results[i].push(await measure(c.op));
}
await ks.close();

// The decoder alone, on one core: what the software OAEP step adds to each decryption.
const soft = generateKeyPairSync('rsa', { modulusLength: 3072 });
const decoderCost = {};
for (const hash of ['sha1', 'sha256']) {
  const em = privateDecrypt(
    { key: soft.privateKey, padding: constants.RSA_NO_PADDING },
    publicEncrypt({ key: soft.publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash }, randomBytes(32)),
  );
  const n = 20_000;
  for (let i = 0; i < 2_000; i += 1) oaepDecode(em, hash);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i += 1) oaepDecode(em, hash);
  decoderCost[hash] = Number(process.hrtime.bigint() - t0) / 1e3 / n;
}

console.log(`KeyStore v2 on SoftHSM, ${SESSIONS} sessions, ${SESSIONS} in flight, median of ${rounds} × ${seconds} s rounds`);
console.log('| operation | runs in | ops/s | CPU per op |');
console.log('|---|---|---|---|');
for (const [i, c] of cases.entries()) {
  const rs = results[i];
  console.log(`| ${c.what} | ${c.engine} | ${Math.round(median(rs.map((x) => x.opsPerSecond)))} | ${median(rs.map((x) => x.cpuMsPerOp)).toFixed(2)} ms |`);
}
console.log(`OAEP decoder alone (3072-bit EM, one core): sha1 ${decoderCost.sha1.toFixed(1)} µs, sha256 ${decoderCost.sha256.toFixed(1)} µs per decode`);
