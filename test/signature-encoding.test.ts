// ECDSA r‖s → DER SEQUENCE{r,s} (hsm/signature.ts) against Node: Node signs in IEEE P1363 form
// (r‖s), we convert, Node verifies the DER form. Plus the edge cases random signatures rarely hit.
import { generateKeyPairSync, randomBytes, sign, verify } from 'node:crypto';
import t from 'tap';
import { ecdsaRawToDer } from '../hsm/signature.js';

t.test('Node verifies our DER of its own P1363 signatures', async (t) => {
  for (const [curve, n, hash] of [
    ['P-256', 32, 'sha256'],
    ['P-384', 48, 'sha384'],
  ] as const) {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: curve });
    let ok = 0;
    let highBit = 0;
    const runs = 300;
    for (let i = 0; i < runs; i += 1) {
      const data = randomBytes(32);
      const raw = sign(hash, data, { key: privateKey, dsaEncoding: 'ieee-p1363' });
      if (((raw[0] ?? 0) & 0x80) !== 0) highBit += 1;
      if (verify(hash, data, { key: publicKey, dsaEncoding: 'der' }, ecdsaRawToDer(raw, n))) ok += 1;
    }
    t.equal(ok, runs, `${curve}: ${runs} of ${runs} verify`);
    t.ok(highBit > 0, `${curve}: ${highBit} had r with the top bit set (needs the 0x00 prefix)`);
  }
});

t.test('minimal INTEGERs: leading zeros dropped, 0x00 added before a set top bit, zero kept', async (t) => {
  const n = 32;
  const r = Buffer.concat([Buffer.alloc(2), Buffer.from([0x01]), Buffer.alloc(n - 3, 0x11)]);
  const s = Buffer.concat([Buffer.from([0x80]), Buffer.alloc(n - 1)]);
  t.equal(
    ecdsaRawToDer(Buffer.concat([r, s]), n).toString('hex'),
    `3043021e01${'11'.repeat(29)}022100${'80'}${'00'.repeat(31)}`,
  );
  t.equal(ecdsaRawToDer(Buffer.alloc(2 * n), n).toString('hex'), '3006020100020100');
  t.throws(() => ecdsaRawToDer(Buffer.alloc(2 * n - 1), n), /expected 64/);
});
