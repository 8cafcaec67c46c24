// `strongroom keys import-legacy`, the BUILT CLI as a real process: the example service's keypair
// table in a real MariaDB (and exported from SQLite as JSON and CSV), filled with keys made by the
// openssl CLI at run time; the service then decrypts, under the original ids and dates, what those
// public keys encrypted (OAEP-SHA1 and PKCS#1 v1.5). Corrupt rows are reported by id, re-runs
// change nothing, and no key material, PIN or password reaches any output.
import { execFileSync } from 'node:child_process';
import { constants, createPublicKey, publicEncrypt, randomBytes, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import t from 'tap';
import { createTestDatabase } from './helpers/database.js';
import { withTokenSession } from './helpers/keystore-util.js';
import { startHarness } from './helpers/harness.js';
import { hawkFetch, type ClientCredential } from './helpers/hawk-client.js';
import { runCli, secretCheckedCli, type CliRun } from './helpers/cli-run.js';
import { createLegacyMysql, makeLegacyKey, type LegacyKey } from './helpers/ops-util.js';
import { baseEnv, tempDir, tokenEnv, writeSecretFile } from './helpers/process-util.js';
import { createTestToken } from './helpers/token.js';

const token = createTestToken();
const work = tempDir(t, 'legacy');
const pinFile = writeSecretFile(work, 'pin', `${token.pin}\n`);
const db = await createTestDatabase(t);
const env = { ...baseEnv(), ...tokenEnv(token, pinFile), DATABASE_URL: db.url, KEY_POOL_SIZE: '0' };

// Five keys, generated in parallel: three for MariaDB, one for the JSON export, one for CSV.
const keys = await Promise.all([0, 1, 2, 3, 4].map(() => makeLegacyKey(work)));
const [k1, k2, k3, kJson, kCsv] = keys as [LegacyKey, LegacyKey, LegacyKey, LegacyKey, LegacyKey];
const SECRETS = [token.pin, token.soPin, ...keys.flatMap((k) => [k.privateKey, k.privateKey.slice(100, 160)])];
/** The built CLI; every run is checked for key material and PINs in its output. */
const cli = secretCheckedCli(SECRETS, env);

interface Summary {
  imported: number;
  skipped: number;
  failed: number;
  results: { id: string; status: string; reason?: string }[];
}

const mysqlDb = await createLegacyMysql(t);
const dates = {
  [k1.id]: { stored: '2017-03-01 12:34:56.789000', ms: Date.UTC(2017, 2, 1, 12, 34, 56, 789) },
  [k2.id]: { stored: '2018-11-30 23:59:59.000000', ms: Date.UTC(2018, 10, 30, 23, 59, 59) },
  [k3.id]: { stored: '2021-06-15 08:00:00.123456', ms: Date.UTC(2021, 5, 15, 8, 0, 0, 123) },
};
for (const k of [k1, k2, k3]) {
  await mysqlDb.connection.query('INSERT INTO keypair (id, date_created, private_key, public_key) VALUES (?, ?, ?, ?)', [
    k.id,
    dates[k.id]?.stored,
    k.privateKey,
    k.publicKey,
  ]);
}
const badBase64Id = randomUUID();
const mismatchId = randomUUID();
await mysqlDb.connection.query('INSERT INTO keypair VALUES (?, ?, ?, ?), (?, ?, ?, ?)', [
  badBase64Id, '2019-01-01 00:00:00', `${k1.privateKey.slice(0, 200)}*not base64*`, k1.publicKey,
  // A real private key stored next to another key's public key.
  mismatchId, '2019-01-02 00:00:00', k2.privateKey, k3.publicKey,
]);

async function snapshot(): Promise<unknown> {
  const { rows } = await db.db.query('SELECT id, public_key, modulus_bits, date_created, owner FROM keypair ORDER BY id');
  const ids = withTokenSession(token, (p11, session) => {
    p11.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }]);
    try {
      return p11
        .C_FindObjects(session, 1000)
        .map((h) => (p11.C_GetAttributeValue(session, h, [{ type: pkcs11js.CKA_ID }])[0]?.value as Buffer).toString('hex'))
        .sort();
    } finally {
      p11.C_FindObjectsFinal(session);
    }
  });
  return { rows, ids };
}

t.test('MariaDB: good rows import, corrupt rows are reported by id, exit 1', async (t) => {
  const r = await cli(t, ['keys', 'import-legacy', '--from', mysqlDb.url, '--json']);
  t.equal(r.code, 1, `a failed row makes the exit code 1: ${r.stderr}`);
  const s = JSON.parse(r.stdout) as Summary;
  t.equal(s.imported, 3);
  t.equal(s.failed, 2);
  t.equal(s.skipped, 0);
  const failed = s.results.filter((x) => x.status === 'failed');
  t.same(failed.map((x) => x.id).sort(), [badBase64Id, mismatchId].sort(), 'the corrupt rows, by id');
  t.match(failed.find((x) => x.id === badBase64Id)?.reason, /private_key is not base64/);
  t.match(failed.find((x) => x.id === mismatchId)?.reason, /does not match public_key/);
  t.same(
    s.results.filter((x) => x.status === 'imported').map((x) => x.id).sort(),
    [k1.id, k2.id, k3.id].sort(),
  );
});

t.test('a password in --from is refused without echoing it; a wrong one is not printed either', async (t) => {
  const password = `pw-${randomBytes(6).toString('hex')}`;
  const refused = await runCli(t, ['keys', 'import-legacy', '--from', `mysql://root:${password}@127.0.0.1:3306/${mysqlDb.name}`], env);
  t.equal(refused.code, 2);
  t.match(refused.stderr, /LEGACY_MYSQL_PASSWORD/);
  t.notOk(refused.stderr.includes(password) || refused.stdout.includes(password), 'the password is not echoed');

  const wrong = await runCli(t, ['keys', 'import-legacy', '--from', `mysql://nosuchuser@127.0.0.1:3306/${mysqlDb.name}`], {
    ...env,
    LEGACY_MYSQL_PASSWORD: password,
  });
  t.equal(wrong.code, 1);
  t.match(wrong.stderr, /cannot read the keypair table from mysql:\/\/nosuchuser@127\.0\.0\.1:3306\/.* \(ER_/);
  t.notOk(wrong.stderr.includes(password) || wrong.stdout.includes(password), 'the password is not in the error');
});

t.test('SQLite exports: JSON (epoch ms) and CSV (DATETIME text) import too', async (t) => {
  const made: Array<[string, LegacyKey, string]> = [
    ['json', kJson, '1546300800123'],
    ['csv', kCsv, "'2020-02-29 10:11:12.500'"],
  ];
  for (const [format, key, date] of made) {
    const sqlite = join(work, `${format}.db`);
    execFileSync('sqlite3', [sqlite,
      'CREATE TABLE keypair (id varchar(255) PRIMARY KEY, date_created timestamp, private_key varchar(100000), public_key varchar(100000));' +
      `INSERT INTO keypair VALUES ('${key.id}', ${date}, '${key.privateKey}', '${key.publicKey}');`]);
    // The export command documented in the README.
    const exported = execFileSync('sqlite3', [`-${format}`, ...(format === 'csv' ? ['-header'] : []), sqlite,
      'SELECT id, private_key, public_key, date_created FROM keypair']);
    const file = writeSecretFile(work, `export.${format}`, exported.toString());
    const r = await cli(t, ['keys', 'import-legacy', '--file', file]);
    t.equal(r.code, 0, `${format}: ${r.stderr}`);
    t.equal(r.stdout, 'imported 1, skipped 0, failed 0\n', `${format}: the summary line`);
    t.match(r.stderr, /importing 1 keypair from .* into token/);
  }
});

t.test('the service decrypts with every imported key, under its original id and date', async (t) => {
  const h = await startHarness(t, { token, databaseUrl: db.url });
  const credential: ClientCredential = await h.register('legacy-check');
  const expected = new Map<string, number>([
    [k1.id, dates[k1.id]!.ms],
    [k2.id, dates[k2.id]!.ms],
    [k3.id, dates[k3.id]!.ms],
    [kJson.id, 1546300800123],
    [kCsv.id, Date.UTC(2020, 1, 29, 10, 11, 12, 500)],
  ]);
  for (const key of [k1, k2, k3, kJson, kCsv]) {
    const got = await hawkFetch({ method: 'GET', url: `${h.base}/keypair/${key.id}`, credential });
    t.equal(got.status, 200, got.text);
    t.same(got.json, { id: key.id, publicKey: key.publicKey, dateCreated: expected.get(key.id) }, 'id, public key and date kept');
    const pub = createPublicKey({ key: Buffer.from(key.publicKey, 'base64'), format: 'der', type: 'pkcs1' });
    for (const padding of ['oaep', 'pkcs1'] as const) {
      const secret = randomBytes(32);
      const body = publicEncrypt(
        padding === 'oaep' ? { key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' } : { key: pub, padding: constants.RSA_PKCS1_PADDING },
        secret,
      ).toString('base64');
      const res = await hawkFetch({
        method: 'POST',
        url: `${h.base}/decrypt${padding === 'pkcs1' ? '?decryptType=pkcs1' : ''}`,
        credential,
        json: { keypairId: key.id, body },
      });
      t.equal(res.status, 200, `${key.id} ${padding}: ${res.text}`);
      t.equal((res.json as { body: string }).body, secret.toString('base64'), `${padding}: the plaintext`);
    }
  }
  for (const id of [badBase64Id, mismatchId]) {
    const res = await hawkFetch({ method: 'GET', url: `${h.base}/keypair/${id}`, credential });
    t.equal(res.status, 404, 'a corrupt row was not imported');
    t.equal(res.headers.get('strongroom-error-code'), 'KEY_ERR_KEYPAIR_NOT_FOUND');
  }
});

t.test('a second run imports nothing and changes nothing', async (t) => {
  const before = await snapshot();
  const r = await cli(t, ['keys', 'import-legacy', '--from', mysqlDb.url, '--json']);
  t.equal(r.code, 1, 'the corrupt rows still fail');
  const s = JSON.parse(r.stdout) as Summary;
  t.same([s.imported, s.skipped, s.failed], [0, 3, 2]);
  t.same(await snapshot(), before, 'database rows and token keys unchanged');

  await mysqlDb.connection.query('DELETE FROM keypair WHERE id IN (?, ?)', [badBase64Id, mismatchId]);
  const clean = await cli(t, ['keys', 'import-legacy', '--from', mysqlDb.url]);
  t.equal(clean.code, 0, clean.stderr);
  t.equal(clean.stdout, 'imported 0, skipped 3, failed 0\n');
  t.match(clean.stderr, /import: 3\/3/, 'progress on stderr');
  for (const format of ['json', 'csv']) {
    const again = await cli(t, ['keys', 'import-legacy', '--file', join(work, `export.${format}`)]);
    t.equal(again.code, 0);
    t.equal(again.stdout, 'imported 0, skipped 1, failed 0\n', `${format}: skipped`);
  }
  t.same(await snapshot(), before, 'still unchanged');
});

t.test('usage errors exit 2', async (t) => {
  for (const args of [
    ['keys', 'import-legacy'],
    ['keys', 'import-legacy', '--from', mysqlDb.url, '--file', 'x.json'],
    ['keys', 'import-legacy', '--from', 'postgres://x@y/z'],
  ]) {
    const r = await cli(t, args);
    t.equal(r.code, 2, args.join(' '));
    t.match(r.stderr, /usage: strongroom/);
  }
  const missing = await cli(t, ['keys', 'import-legacy', '--file', join(work, 'nope.json')]);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /cannot read .*nope\.json \(ENOENT\)/);
});
