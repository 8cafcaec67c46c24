// TOTP (src/auth/totp.ts) on the real Postgres and on PGlite: the RFC 6238 Appendix B vectors
// (one seed per hash, ../shared/vectors/totp.md), one use per time step also across a second
// instance and under a race, ±1 step of drift accepted and ±2 refused, and Python's standard
// library (hmac, urllib) as an independent peer for codes and for the otpauth:// URI.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { newTotpSecret, PgTotpStepStorage, totpUri, TotpVerifier, type TotpAlgorithm } from '../src/auth/totp.js';
import { eachBackend, ManualClock } from './helpers/auth-backends.js';
import { vectorsDir } from './helpers/paths.js';

t.setTimeout(120_000);

// ---- the RFC 6238 vectors, read from the shared file ----
const ALGORITHMS: TotpAlgorithm[] = ['SHA1', 'SHA256', 'SHA512'];
const md = readFileSync(join(vectorsDir(), 'totp.md'), 'utf8');
const seeds = new Map<TotpAlgorithm, string>();
for (const m of md.matchAll(/^- (SHA1|SHA256|SHA512) +\(\d+ B\):.*base32 `([A-Z2-7]+)`/gm)) seeds.set(m[1] as TotpAlgorithm, m[2] as string);
interface Vector {
  time: number;
  step: number;
  digits: number;
  codes: Record<TotpAlgorithm, string>;
}
const vectors: Vector[] = [];
for (const m of md.matchAll(/^\| (\d+) \| [0-9-]+ [0-9:]+ \| ([0-9A-F]{16}) \| (\d{8}) \| (\d{8}) \| (\d{8}) \|$/gm)) {
  vectors.push({ time: Number(m[1]), step: parseInt(m[2] as string, 16), digits: 8, codes: { SHA1: m[3] as string, SHA256: m[4] as string, SHA512: m[5] as string } });
}
for (const m of md.matchAll(/^\| (\d+) \| (\d{6}) \| (\d{6}) \| (\d{6}) \|$/gm)) {
  const time = Number(m[1]);
  vectors.push({ time, step: Math.floor(time / 30), digits: 6, codes: { SHA1: m[2] as string, SHA256: m[3] as string, SHA512: m[4] as string } });
}

// ---- the independent peer: RFC 6238 in Python's standard library ----
const PEER = `
import sys, json, hmac, hashlib, base64, struct, urllib.parse
def totp(key, t, digits, period, algo):
    h = hmac.new(key, struct.pack('>Q', t // period), getattr(hashlib, algo.lower())).digest()
    o = h[-1] & 15
    return str((struct.unpack('>I', h[o:o + 4])[0] & 0x7fffffff) % 10 ** digits).zfill(digits)
def b32(s):
    return base64.b32decode(s + '=' * (-len(s) % 8))
out = []
for r in json.load(sys.stdin):
    if 'uri' in r:
        u = urllib.parse.urlsplit(r['uri'])
        q = {k: v[0] for k, v in urllib.parse.parse_qs(u.query, strict_parsing=True).items()}
        out.append({'scheme': u.scheme, 'type': u.netloc, 'label': urllib.parse.unquote(u.path[1:]), 'query': q,
                    'secretBytes': len(b32(q['secret'])),
                    'code': totp(b32(q['secret']), r['time'], int(q['digits']), int(q['period']), q['algorithm'])})
    else:
        out.append(totp(b32(r['secret']), r['time'], r['digits'], r['period'], r['algorithm']))
print(json.dumps(out))
`;
function peer<T>(requests: object[]): T[] {
  const run = spawnSync('python3', ['-c', PEER], { input: JSON.stringify(requests), encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`python3 peer failed: ${run.stderr || run.error?.message}`);
  return JSON.parse(run.stdout) as T[];
}
const peerCode = (secret: string, time: number, digits = 6, period = 30, algorithm: TotpAlgorithm = 'SHA1') =>
  peer<string>([{ secret, time, digits, period, algorithm }])[0] as string;

t.test('the vector file holds every table row and one seed per hash', async (t) => {
  t.equal(seeds.size, 3);
  t.equal(Buffer.from(seeds.get('SHA256') ?? '', 'utf8').length, 52, 'the SHA-256 seed is the 32-byte one');
  t.equal(vectors.length, 12, '6 rows of 8 digits, 6 of 6 digits');
  for (const v of vectors) {
    for (const a of ALGORITHMS) {
      t.equal(peerCode(seeds.get(a) as string, v.time, v.digits, 30, a), v.codes[a], `the peer agrees: ${a} t=${v.time} ${v.digits} digits`);
    }
  }
});

t.test('secrets and otpauth:// URIs', async (t) => {
  const one = newTotpSecret();
  t.match(one, /^[A-Z2-7]{32}$/, '160 bits in base32 without padding');
  t.not(newTotpSecret(), one);
  const uri = totpUri({ secret: one, issuer: 'Acme Signing', account: 'jdoe@acme', algorithm: 'SHA256', digits: 8, period: 60 });
  const time = 1_900_000_000;
  const [parsed] = peer<{ scheme: string; type: string; label: string; query: Record<string, string>; secretBytes: number; code: string }>([
    { uri, time },
  ]);
  t.same(parsed && { ...parsed, code: undefined }, {
    scheme: 'otpauth',
    type: 'totp',
    label: 'Acme Signing:jdoe@acme',
    query: { secret: one, issuer: 'Acme Signing', algorithm: 'SHA256', digits: '8', period: '60' },
    secretBytes: 20,
    code: undefined,
  }, 'an independent URI parser reads issuer, account and parameters');
  t.equal(parsed?.code, peerCode(one, time, 8, 60, 'SHA256'), 'and computes the same code from it');
  t.match(totpUri({ secret: one, issuer: 'strongroom', account: 'alice' }), /algorithm=SHA1&digits=6&period=30$/, 'defaults');
  t.throws(() => totpUri({ secret: one, issuer: 'a:b', account: 'alice' }), TypeError, 'a colon in the issuer');
  t.throws(() => totpUri({ secret: one, issuer: 'x', account: '' }), TypeError);
  t.throws(() => totpUri({ secret: one, issuer: 'x', account: 'y', digits: 9 }), TypeError);
});

await eachBackend(t, async (t, b) => {
  const clock = new ManualClock();
  const make = (db = b.db, realm = 'signing') => new TotpVerifier({ storage: new PgTotpStepStorage(db), realm, clock: clock.read });
  const a = make();
  const other = make(b.second);

  await t.test('RFC 6238 Appendix B: every vector verifies, at its own step', async (t) => {
    for (const v of vectors) {
      clock.now = v.time * 1000;
      for (const algorithm of ALGORITHMS) {
        const subject = `vector-${algorithm}-${v.time}-${v.digits}`;
        const secret = seeds.get(algorithm) as string;
        const code = v.codes[algorithm];
        const wrong = code.slice(0, -1) + String((Number(code.at(-1)) + 1) % 10);
        t.same(await a.verify(subject, secret, wrong, { algorithm, digits: v.digits }), { ok: false, reason: 'invalid' }, `${subject}: last digit off`);
        t.same(await a.verify(subject, secret, code, { algorithm, digits: v.digits }), { ok: true, step: v.step }, `${subject}: ${code}`);
      }
    }
  });

  await t.test('a code is accepted once per step, at every instance', async (t) => {
    const secret = newTotpSecret();
    clock.now = 1_800_000_015_000; // 15 s into step 60,000,000
    const step = 60_000_000;
    const code = peerCode(secret, clock.now / 1000);
    t.same(await a.verify('reuse', secret, code), { ok: true, step });
    t.same(await a.verify('reuse', secret, code), { ok: false, reason: 'reused' }, 'again at the same instance');
    t.same(await other.verify('reuse', secret, code), { ok: false, reason: 'reused' }, 'again at a second instance');
    clock.advance(10_000);
    t.same(await other.verify('reuse', secret, code), { ok: false, reason: 'reused' }, 'later in the same step');
    t.same(await a.verify('reuse', secret, peerCode(secret, clock.now / 1000 - 30)), { ok: false, reason: 'reused' }, 'an older step after a newer one');
    clock.advance(30_000);
    t.same(await other.verify('reuse', secret, peerCode(secret, clock.now / 1000)), { ok: true, step: step + 1 }, 'the next step works once');
    t.same(await a.verify('reuse', secret, code), { ok: false, reason: 'reused' }, 'the first code is still refused (now inside the window)');
    const otherRealm = make(b.db, 'console');
    t.same(await otherRealm.verify('reuse', secret, peerCode(secret, clock.now / 1000)), { ok: true, step: step + 1 }, 'subjects are per realm');
    t.equal(await a.forget('reuse'), true);
    t.equal(await a.forget('reuse'), false);
  });

  await t.test('±1 step of drift is accepted, ±2 refused; a future step spends the current one', async (t) => {
    const secret = newTotpSecret();
    clock.now = 1_700_000_010_000;
    const now = clock.now / 1000;
    const T = Math.floor(now / 30);
    t.same(await a.verify('drift-2', secret, peerCode(secret, now - 60)), { ok: false, reason: 'invalid' }, 'T-2');
    t.same(await a.verify('drift-2', secret, peerCode(secret, now + 60)), { ok: false, reason: 'invalid' }, 'T+2');
    t.same(await a.verify('drift-1', secret, peerCode(secret, now - 30)), { ok: true, step: T - 1 }, 'T-1');
    t.same(await a.verify('drift+1', secret, peerCode(secret, now + 30)), { ok: true, step: T + 1 }, 'T+1');
    t.same(await other.verify('drift+1', secret, peerCode(secret, now)), { ok: false, reason: 'reused' }, 'T after T+1: reused');
    t.same(await a.verify('drift-1', secret, peerCode(secret, now)), { ok: true, step: T }, 'T after T-1: newer, accepted');
  });

  await t.test('two instances racing with one code: exactly one wins', async (t) => {
    const secret = newTotpSecret();
    clock.now = 1_750_000_000_000;
    const code = peerCode(secret, clock.now / 1000);
    for (let i = 0; i < 10; i++) {
      const results = await Promise.all([a.verify(`race-${i}`, secret, code), other.verify(`race-${i}`, secret, code)]);
      t.same(results.map((r) => r.ok).sort(), [false, true], `race ${i}: one accepted, one refused`);
    }
  });

  await t.test('configurable algorithm, digits and period, checked against the peer', async (t) => {
    clock.now = 1_765_432_109_000;
    for (const [algorithm, digits, period] of [['SHA256', 8, 60], ['SHA512', 7, 45], ['SHA1', 6, 15]] as const) {
      const secret = newTotpSecret();
      const code = peerCode(secret, clock.now / 1000, digits, period, algorithm);
      const expected = Math.floor(clock.now / 1000 / period);
      t.same(await a.verify(`params-${algorithm}`, secret, code, { algorithm, digits, period }), { ok: true, step: expected }, `${algorithm}/${digits}/${period}`);
      const thirtySecondCode = peerCode(secret, clock.now / 1000, digits, 30, algorithm);
      if (thirtySecondCode !== code) {
        t.same(await a.verify(`params-${algorithm}-p`, secret, thirtySecondCode, { algorithm, digits, period }), { ok: false, reason: 'invalid' }, 'a 30 s code does not pass for another period');
      }
    }
  });

  await t.test('malformed codes and bad secrets', async (t) => {
    const secret = newTotpSecret();
    for (const code of ['', '12345', '1234567', '12345a', ' 12345', '１２３４５６', '12345\u0660', 123456, null, ['123456']]) {
      t.same(await a.verify('malformed', secret, code), { ok: false, reason: 'malformed' }, JSON.stringify(code));
    }
    await t.rejects(a.verify('s', 'GEZDGNBVGY3TQOJQ', '123456'), TypeError, 'a 10-byte secret is below RFC 4226 R6');
    await t.rejects(a.verify('s', 'not base32!', '123456'), TypeError);
    await t.rejects(a.verify('s', secret, '123456', { digits: 5 }), TypeError);
    await t.rejects(a.verify('s', secret, '123456', { period: 5 }), TypeError);
    await t.rejects(a.verify('', secret, '123456'), TypeError, 'a subject is required');
    t.throws(() => make(b.db, 'Bad'), /realm/);
  });
});
