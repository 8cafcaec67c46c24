// argon2id PIN and password hashing (src/auth/pin-hash.ts): PHC round trip, wrong PIN, the encoded
// parameters and needsRehash, the pepper, the unknown-account path costing as much as a real
// verify, and the cap on concurrent hashes.
import { randomBytes } from 'node:crypto';
import argon2 from 'argon2';
import t from 'tap';
import { DEFAULT_PIN_HASH_PARAMETERS, PinHasher, PinHashFormatError, pinHashParameters } from '../src/auth/pin-hash.js';

t.setTimeout(120_000);

const hasher = new PinHasher();

async function elapsed(fn: () => Promise<unknown>): Promise<number> {
  const start = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - start) / 1e6;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

t.test('round trip: the right PIN verifies, a wrong one does not', async (t) => {
  const encoded = await hasher.hash('482916');
  t.equal(await hasher.verify(encoded, '482916'), true);
  for (const wrong of ['482917', '48291', '4829160', '', ' 482916', '482916 ', '４８２９１６']) {
    t.equal(await hasher.verify(encoded, wrong), false, `wrong: ${JSON.stringify(wrong)}`);
  }
  const unicode = await hasher.hash('pässwörd ✓ long enough');
  t.equal(await hasher.verify(unicode, 'pässwörd ✓ long enough'), true, 'UTF-8 passwords');
  t.equal(await hasher.verify(unicode, 'passwörd ✓ long enough'), false);
  t.equal(await argon2.verify(encoded, '482916'), true, 'the package itself verifies the stored string (no private format)');
});

t.test('a PHC string of argon2id with the documented parameters and a fresh salt each time', async (t) => {
  t.same(DEFAULT_PIN_HASH_PARAMETERS, { memoryCost: 19_456, timeCost: 2, parallelism: 1 }, 'the documented defaults');
  const one = await hasher.hash('1234');
  const two = await hasher.hash('1234');
  t.match(one, /^\$argon2id\$v=19\$[mtp=0-9,]+\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/, '16-byte salt, 32-byte hash');
  t.same(pinHashParameters(one), DEFAULT_PIN_HASH_PARAMETERS);
  t.not(one, two, 'same PIN, different salt, different string');
  t.not(one.split('$')[4], two.split('$')[4]);
  const strong = new PinHasher({ parameters: { memoryCost: 32_768, timeCost: 3, parallelism: 2 } });
  const s = await strong.hash('1234');
  t.same(pinHashParameters(s), { memoryCost: 32_768, timeCost: 3, parallelism: 2 });
  t.same(strong.parameters, { memoryCost: 32_768, timeCost: 3, parallelism: 2 });
  t.equal(await hasher.verify(s, '1234'), true, 'a hash verifies under the parameters it carries, whatever the current ones');
});

t.test('needsRehash when the current parameters differ from the stored ones', async (t) => {
  const old = await hasher.hash('1234');
  t.equal(hasher.needsRehash(old), false);
  t.equal(new PinHasher({ parameters: { memoryCost: 65_536 } }).needsRehash(old), true, 'more memory');
  t.equal(new PinHasher({ parameters: { timeCost: 3 } }).needsRehash(old), true, 'more passes');
  t.equal(new PinHasher({ parameters: { parallelism: 2 } }).needsRehash(old), true, 'more lanes');
});

t.test('a stored string that is not argon2id is a format error, not a wrong PIN', async (t) => {
  const argon2i = await argon2.hash('1234', { type: argon2.argon2i, memoryCost: 8192, timeCost: 1 });
  const good = await hasher.hash('1234');
  for (const bad of ['', 'plain', argon2i, good.replace('v=19', 'v=16'), good.replace(/\$[^$]+$/, '$'), `${good}$x`, good.replace('t=2', 't=2,t=3')]) {
    await t.rejects(hasher.verify(bad, '1234'), PinHashFormatError, JSON.stringify(bad.slice(0, 40)));
    t.throws(() => hasher.needsRehash(bad), PinHashFormatError);
  }
});

t.test('a pepper outside the database: a hash made with it does not verify without it', async (t) => {
  const pepper = randomBytes(32);
  const peppered = new PinHasher({ pepper });
  const encoded = await peppered.hash('1234');
  t.equal(await peppered.verify(encoded, '1234'), true);
  t.equal(await hasher.verify(encoded, '1234'), false, 'without the pepper');
  t.equal(await new PinHasher({ pepper: randomBytes(32) }).verify(encoded, '1234'), false, 'another pepper');
  t.throws(() => new PinHasher({ pepper: randomBytes(8) }), /pepper/);
});

t.test('input bounds and parameter bounds', async (t) => {
  await t.rejects(hasher.hash(''), TypeError);
  await t.rejects(hasher.hash('x'.repeat(1025)), TypeError, 'over-long secrets are refused before hashing');
  const encoded = await hasher.hash('x'.repeat(1024));
  t.equal(await hasher.verify(encoded, 'x'.repeat(1024)), true, '1024 bytes is the limit');
  t.equal(await hasher.verify(encoded, 'x'.repeat(1025)), false, 'an over-long attempt is false');
  t.throws(() => new PinHasher({ parameters: { memoryCost: 4096 } }), /memoryCost/);
  t.throws(() => new PinHasher({ parameters: { timeCost: 0 } }), /timeCost/);
  t.throws(() => new PinHasher({ parameters: { parallelism: 0 } }), /parallelism/);
  t.throws(() => new PinHasher({ maxConcurrent: 0 }), /maxConcurrent/);
});

t.test('an unknown account costs a full verify (no shortcut that tells names apart)', async (t) => {
  const encoded = await hasher.hash('1234');
  t.equal(await hasher.verify(undefined, '1234'), false, 'unknown account: false');
  t.equal(await hasher.verify(undefined, ''), false);
  const known: number[] = [];
  const unknown: number[] = [];
  for (let i = 0; i < 5; i++) {
    known.push(await elapsed(() => hasher.verify(encoded, '9999')));
    unknown.push(await elapsed(() => hasher.verify(undefined, '9999')));
  }
  const ratio = median(unknown) / median(known);
  t.comment(`median verify: known ${median(known).toFixed(1)} ms, unknown ${median(unknown).toFixed(1)} ms`);
  t.ok(ratio > 0.5 && ratio < 2, `the unknown path runs argon2 like the known one (ratio ${ratio.toFixed(2)})`);
  t.ok(median(unknown) > 3, 'and is not a shortcut');
});

t.test('maxConcurrent queues hashes instead of running them all at once', async (t) => {
  const serial = new PinHasher({ maxConcurrent: 1 });
  const encoded = await serial.hash('1234');
  const one = median([
    await elapsed(() => serial.verify(encoded, '1234')),
    await elapsed(() => serial.verify(encoded, '1234')),
    await elapsed(() => serial.verify(encoded, '1234')),
  ]);
  const four = await elapsed(() => Promise.all([1, 2, 3, 4].map(() => serial.verify(encoded, '1234'))));
  t.comment(`one verify ${one.toFixed(1)} ms; four at once with maxConcurrent 1: ${four.toFixed(1)} ms`);
  t.ok(four > 2.5 * one, 'four verifies take about four times one: they ran one after another');
  const results = await Promise.all([serial.verify(encoded, '1234'), serial.verify(encoded, 'nope'), serial.verify(encoded, '1234')]);
  t.same(results, [true, false, true], 'each queued call gets its own answer');
});
