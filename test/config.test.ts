// loadConfig(env) as a pure function: defaults, secret files, every cross-field rule, all problems
// reported at once, a frozen result and secrets that never print. TLS material is made by the
// openssl CLI at run time.
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { inspect } from 'node:util';
import t from 'tap';
import { findSoftHsmModule } from '../hsm/index.js';
import { ConfigError, loadConfig, type Config } from '../src/config.js';
import { makeCertificate, makePfx, tempDir, writeSecretFile } from './helpers/process-util.js';

const dir = tempDir(t, 'config');
const ec = makeCertificate(dir, 'ec', 'ec');
const ec2 = makeCertificate(dir, 'ec2', 'ec');
const rsa = makeCertificate(dir, 'rsa', 'rsa');
const PFX_PASS = 'pfx-pass-Zq81';
const pfxPath = makePfx(dir, 'ec', ec, PFX_PASS);
const missing = join(dir, 'does-not-exist');
const aDirectory = join(dir, 'a-directory');
mkdirSync(aDirectory);

const MIN = { PKCS11_PIN: '1234' };
const ADMIN = 'a'.repeat(32);

/** The problems of a rejected env; none when it is accepted. */
function problemsOf(env: Record<string, string | undefined>): readonly string[] {
  try {
    loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

type Asserts = Pick<typeof t, 'equal' | 'match'>;

/** Exactly one problem, matching `pattern`. */
function rejects(tt: Asserts, env: Record<string, string | undefined>, pattern: RegExp, name: string) {
  const problems = problemsOf(env);
  tt.equal(problems.length, 1, `${name}: one problem (${problems.join(' | ')})`);
  tt.match(problems[0] ?? '', pattern, name);
}


t.test('defaults: only a PIN is required', async (t) => {
  const c = loadConfig(MIN);
  t.equal(c.server.port, 8080);
  t.equal(c.server.host, '127.0.0.1');
  t.equal(c.server.publicUrl, undefined);
  t.equal(c.server.bodyLimit, 16384);
  t.equal(c.server.trustProxy, false);
  t.equal(c.pkcs11.tokenLabel, 'strongroom');
  t.equal(c.pkcs11.sessions, 4);
  t.equal(c.pkcs11.pin.reveal(), '1234');
  t.equal(c.logLevel, 'info');
  t.equal(c.tls, undefined);
  t.equal(c.adminToken, undefined);
  t.equal(c.dataDir, resolve('var/data'));
  t.same(c.database, { kind: 'embedded', dataDir: resolve('var/data', 'db') }, 'embedded database under DATA_DIR/db');
});

t.test('the SoftHSM module is found automatically when PKCS11_MODULE is unset', async (t) => {
  const found = findSoftHsmModule();
  t.type(found, 'string', 'SoftHSM2 is installed on this machine');
  t.equal(loadConfig(MIN).pkcs11.modulePath, found);
  t.equal(loadConfig({ ...MIN, PKCS11_MODULE: found }).pkcs11.modulePath, found, 'an explicit module is kept');
  rejects(t, { ...MIN, PKCS11_MODULE: missing }, /^PKCS11_MODULE: cannot read/, 'a module path that does not exist');
});

t.test('DATA_DIR places the embedded database; DATABASE_URL replaces it', async (t) => {
  const embedded = loadConfig({ ...MIN, DATA_DIR: dir });
  t.same(embedded.database, { kind: 'embedded', dataDir: join(dir, 'db') });
  t.equal(embedded.dataDir, dir);

  const url = 'postgres://strongroom:pw@db.internal:5432/strongroom';
  const pg = loadConfig({ ...MIN, DATABASE_URL: url, DATABASE_POOL_SIZE: '7' });
  t.equal(pg.database.kind, 'postgres');
  if (pg.database.kind === 'postgres') {
    t.equal(pg.database.url.reveal(), url);
    t.equal(pg.database.poolSize, 7);
  }
  rejects(t, { ...MIN, DATABASE_URL: 'mysql://root@localhost/x' }, /^DATABASE_URL: /, 'a non-Postgres URL');
});

t.test('explicit values are parsed and typed', async (t) => {
  const c = loadConfig({
    ...MIN,
    PORT: '9443',
    HOST: '0.0.0.0',
    PKCS11_TOKEN_LABEL: 'prod-lkm',
    PKCS11_SESSIONS: '8',
    LOG_LEVEL: 'warn',
    BODY_LIMIT: '32768',
    TRUST_PROXY: '10.0.0.0/8, 192.168.0.1',
  });
  t.equal(c.server.port, 9443);
  t.equal(c.server.host, '0.0.0.0');
  t.equal(c.pkcs11.tokenLabel, 'prod-lkm');
  t.equal(c.pkcs11.sessions, 8);
  t.equal(c.logLevel, 'warn');
  t.equal(c.server.bodyLimit, 32768);
  t.same(c.server.trustProxy, ['10.0.0.0/8', '192.168.0.1']);
});

t.test('empty-string variables count as unset', async (t) => {
  const pinFile = writeSecretFile(dir, 'pin-empty-test', '5678\n');
  const c = loadConfig({
    PORT: '',
    HOST: '',
    DATABASE_URL: '',
    DATA_DIR: '',
    PKCS11_MODULE: '',
    PKCS11_TOKEN_LABEL: '',
    PKCS11_PIN: '',
    PKCS11_PIN_FILE: pinFile,
    PKCS11_SESSIONS: '',
    ADMIN_TOKEN: '',
    ADMIN_TOKEN_FILE: '',
    PUBLIC_URL: '',
    TLS_CERT: '',
    TLS_KEY: '',
    TLS_PFX: '',
    TLS_PFX_PASSPHRASE: '',
    LOG_LEVEL: '',
    BODY_LIMIT: '',
  });
  t.equal(c.server.port, 8080);
  t.equal(c.server.host, '127.0.0.1');
  t.equal(c.database.kind, 'embedded');
  t.equal(c.pkcs11.modulePath, findSoftHsmModule());
  t.equal(c.pkcs11.tokenLabel, 'strongroom');
  t.equal(c.pkcs11.pin.reveal(), '5678', 'an empty PKCS11_PIN does not conflict with PKCS11_PIN_FILE');
  t.equal(c.adminToken, undefined);
  t.equal(c.server.publicUrl, undefined);
  t.equal(c.tls, undefined);
  t.equal(c.logLevel, 'info');
  t.equal(c.server.bodyLimit, 16384);
  const problems = problemsOf({ PKCS11_PIN: '', PKCS11_PIN_FILE: '' });
  t.same(problems.length, 1);
  t.match(problems[0], /PKCS11_PIN or PKCS11_PIN_FILE is required/, 'empty PIN variables are missing, not set');
});

t.test('PKCS11_PIN_FILE: the file holds the PIN, one trailing newline removed', async (t) => {
  const read = (content: string) =>
    loadConfig({ PKCS11_PIN_FILE: writeSecretFile(dir, 'pin', content) }).pkcs11.pin.reveal();
  t.equal(read('pin-from-file\n'), 'pin-from-file', 'echo-style newline');
  t.equal(read('pin-from-file\r\n'), 'pin-from-file', 'CRLF');
  t.equal(read('pin-from-file'), 'pin-from-file', 'no newline');
  t.equal(read('pin-from-file\n\n'), 'pin-from-file\n', 'only one newline is removed');
  t.equal(read(' spaced pin '), ' spaced pin ', 'spaces are part of the PIN');
  rejects(t, { PKCS11_PIN_FILE: writeSecretFile(dir, 'pin-empty', '\n') }, /^PKCS11_PIN_FILE: .* is empty/, 'an empty PIN file');
});

t.test('ADMIN_TOKEN_FILE: the file holds the admin token, one trailing newline removed', async (t) => {
  const token = 'T0ken-'.padEnd(40, 'x');
  const c = loadConfig({ ...MIN, ADMIN_TOKEN_FILE: writeSecretFile(dir, 'admin', `${token}\n`) });
  t.equal(c.adminToken?.reveal(), token);
  const direct = loadConfig({ ...MIN, ADMIN_TOKEN: token });
  t.equal(direct.adminToken?.reveal(), token);
  rejects(t, { ...MIN, ADMIN_TOKEN_FILE: writeSecretFile(dir, 'admin-short', 'short\n') }, /^ADMIN_TOKEN_FILE: .*32/, 'a short token in the file');
  rejects(t, { ...MIN, ADMIN_TOKEN_FILE: writeSecretFile(dir, 'admin-empty', '') }, /^ADMIN_TOKEN_FILE: .* is empty/, 'an empty token file');
  rejects(
    t,
    { ...MIN, ADMIN_TOKEN: token, ADMIN_TOKEN_FILE: writeSecretFile(dir, 'admin2', token) },
    /ADMIN_TOKEN and ADMIN_TOKEN_FILE are both set/,
    'both the token and its file',
  );
});

t.test('the PIN comes from exactly one of PKCS11_PIN and PKCS11_PIN_FILE', async (t) => {
  const pinFile = writeSecretFile(dir, 'pin-both', '9999\n');
  rejects(t, { PKCS11_PIN: '1234', PKCS11_PIN_FILE: pinFile }, /PKCS11_PIN and PKCS11_PIN_FILE are both set/, 'both');
  rejects(t, {}, /PKCS11_PIN or PKCS11_PIN_FILE is required/, 'neither');
});

t.test('unreadable files are problems naming their variable', async (t) => {
  rejects(t, { PKCS11_PIN_FILE: missing }, /^PKCS11_PIN_FILE: cannot read .*ENOENT/, 'missing PIN file');
  rejects(t, { PKCS11_PIN_FILE: aDirectory }, /^PKCS11_PIN_FILE: cannot read .*EISDIR/, 'PIN file is a directory');
  rejects(t, { ...MIN, ADMIN_TOKEN_FILE: missing }, /^ADMIN_TOKEN_FILE: cannot read/, 'missing admin token file');
  rejects(t, { ...MIN, TLS_CERT: missing, TLS_KEY: ec.keyPath }, /^TLS_CERT: cannot read/, 'missing certificate');
  rejects(t, { ...MIN, TLS_CERT: ec.certPath, TLS_KEY: missing }, /^TLS_KEY: cannot read/, 'missing key');
  rejects(t, { ...MIN, TLS_PFX: missing, TLS_PFX_PASSPHRASE: PFX_PASS }, /^TLS_PFX: cannot read/, 'missing PKCS#12 file');
});

t.test('ADMIN_TOKEN must be at least 32 characters', async (t) => {
  rejects(t, { ...MIN, ADMIN_TOKEN: 'a'.repeat(31) }, /^ADMIN_TOKEN: .*32/, '31 characters');
  t.equal(loadConfig({ ...MIN, ADMIN_TOKEN: ADMIN }).adminToken?.reveal(), ADMIN, '32 characters are enough');
});

t.test('PUBLIC_URL gives the host and port clients sign', async (t) => {
  t.same(loadConfig({ ...MIN, PUBLIC_URL: 'https://LKM.Example.COM' }).server.publicUrl, {
    url: 'https://lkm.example.com',
    host: 'lkm.example.com',
    port: 443,
  }, 'https defaults to 443, host lowercased');
  t.same(loadConfig({ ...MIN, PUBLIC_URL: 'https://lkm.example.com:8443/some/path' }).server.publicUrl, {
    url: 'https://lkm.example.com:8443',
    host: 'lkm.example.com',
    port: 8443,
  }, 'an explicit port is kept');
  t.same(loadConfig({ ...MIN, PUBLIC_URL: 'http://Proxy.Local' }).server.publicUrl, {
    url: 'http://proxy.local',
    host: 'proxy.local',
    port: 80,
  }, 'http defaults to 80');
  rejects(t, { ...MIN, PUBLIC_URL: 'ftp://lkm.example.com' }, /^PUBLIC_URL: .*http/, 'an ftp URL');
  rejects(t, { ...MIN, PUBLIC_URL: 'lkm.example.com' }, /^PUBLIC_URL: /, 'not a URL');
});

t.test('TLS: PEM files or one PKCS#12 file', async (t) => {
  const pem = loadConfig({ ...MIN, TLS_CERT: ec.certPath, TLS_KEY: ec.keyPath });
  t.equal(pem.tls?.kind, 'pem');
  if (pem.tls?.kind === 'pem') {
    t.ok(pem.tls.cert.equals(ec.cert), 'the certificate file');
    t.ok(pem.tls.key.reveal().equals(ec.key), 'the key file');
  }
  const rsaPem = loadConfig({ ...MIN, TLS_CERT: rsa.certPath, TLS_KEY: rsa.keyPath });
  t.equal(rsaPem.tls?.kind, 'pem', 'an RSA pair too');

  const pfx = loadConfig({ ...MIN, TLS_PFX: pfxPath, TLS_PFX_PASSPHRASE: PFX_PASS });
  t.equal(pfx.tls?.kind, 'pfx');
  if (pfx.tls?.kind === 'pfx') t.equal(pfx.tls.passphrase?.reveal(), PFX_PASS);
});

t.test('TLS: every inconsistent combination is a problem', async (t) => {
  rejects(t, { ...MIN, TLS_CERT: ec.certPath }, /^TLS_CERT is set without TLS_KEY/, 'certificate without key');
  rejects(t, { ...MIN, TLS_KEY: ec.keyPath }, /^TLS_KEY is set without TLS_CERT/, 'key without certificate');
  rejects(
    t,
    { ...MIN, TLS_CERT: ec.certPath, TLS_KEY: ec.keyPath, TLS_PFX: pfxPath, TLS_PFX_PASSPHRASE: PFX_PASS },
    /TLS_CERT\/TLS_KEY and TLS_PFX are both set/,
    'PEM and PKCS#12 together',
  );
  rejects(t, { ...MIN, TLS_PFX_PASSPHRASE: PFX_PASS }, /^TLS_PFX_PASSPHRASE is set without TLS_PFX/, 'passphrase without PKCS#12');
  rejects(t, { ...MIN, TLS_CERT: ec.certPath, TLS_KEY: ec2.keyPath }, /^TLS_CERT\/TLS_KEY: .*matching private key/, 'a P-256 key of another certificate');
  rejects(t, { ...MIN, TLS_CERT: ec.certPath, TLS_KEY: rsa.keyPath }, /^TLS_CERT\/TLS_KEY: .*matching private key/, 'an RSA key for a P-256 certificate');
  rejects(t, { ...MIN, TLS_CERT: rsa.certPath, TLS_KEY: ec.keyPath }, /^TLS_CERT\/TLS_KEY: .*matching private key/, 'a P-256 key for an RSA certificate');
  rejects(t, { ...MIN, TLS_CERT: ec.keyPath, TLS_KEY: ec.keyPath }, /^TLS_CERT\/TLS_KEY: /, 'a key where the certificate belongs');

  const wrong = 'not-the-pfx-pass';
  const problems = problemsOf({ ...MIN, TLS_PFX: pfxPath, TLS_PFX_PASSPHRASE: wrong });
  t.equal(problems.length, 1);
  t.match(problems[0], /^TLS_PFX: cannot open .*TLS_PFX_PASSPHRASE/, 'wrong passphrase');
  t.notMatch(problems.join('\n'), wrong, 'the passphrase is not echoed');
  rejects(t, { ...MIN, TLS_PFX: pfxPath }, /^TLS_PFX: cannot open/, 'a protected PKCS#12 without a passphrase');
  rejects(t, { ...MIN, TLS_PFX: ec.certPath, TLS_PFX_PASSPHRASE: PFX_PASS }, /^TLS_PFX: cannot open/, 'a PEM file as PKCS#12');
});

t.test('every problem is reported at once', async (t) => {
  const pinFile = writeSecretFile(dir, 'pin-many', '1111\n');
  const env = {
    PORT: 'abc',
    LOG_LEVEL: 'loud',
    BODY_LIMIT: '10',
    PKCS11_SESSIONS: '0',
    PKCS11_TOKEN_LABEL: 'x'.repeat(33),
    DATABASE_URL: 'mysql://root@localhost/x',
    PUBLIC_URL: 'ftp://lkm.example.com',
    PKCS11_PIN: '1234',
    PKCS11_PIN_FILE: pinFile,
    ADMIN_TOKEN: 'too-short',
    PKCS11_MODULE: missing,
    TLS_CERT: ec.certPath,
    TLS_PFX_PASSPHRASE: PFX_PASS,
  };
  const expected: Array<[string, RegExp]> = [
    ['PORT', /^PORT: /],
    ['LOG_LEVEL', /^LOG_LEVEL: /],
    ['BODY_LIMIT', /^BODY_LIMIT: /],
    ['PKCS11_SESSIONS', /^PKCS11_SESSIONS: /],
    ['PKCS11_TOKEN_LABEL', /^PKCS11_TOKEN_LABEL: .*32/],
    ['DATABASE_URL', /^DATABASE_URL: /],
    ['PUBLIC_URL', /^PUBLIC_URL: /],
    ['PIN twice', /PKCS11_PIN and PKCS11_PIN_FILE are both set/],
    ['ADMIN_TOKEN', /^ADMIN_TOKEN: .*32/],
    ['PKCS11_MODULE', /^PKCS11_MODULE: cannot read/],
    ['TLS_CERT alone', /^TLS_CERT is set without TLS_KEY/],
    ['TLS_PFX_PASSPHRASE alone', /^TLS_PFX_PASSPHRASE is set without TLS_PFX/],
  ];
  let error: unknown;
  try {
    loadConfig(env);
  } catch (err) {
    error = err;
  }
  t.ok(error instanceof ConfigError, 'a ConfigError');
  const err = error as ConfigError;
  t.equal(err.name, 'ConfigError');
  t.equal(err.problems.length, expected.length, `one problem per mistake:\n${err.problems.join('\n')}`);
  for (const [name, pattern] of expected) {
    const hits = err.problems.filter((p) => pattern.test(p));
    t.equal(hits.length, 1, `${name} is reported once`);
  }
  for (const problem of err.problems) t.ok(err.message.includes(problem), `the message lists: ${problem}`);
  t.notMatch(err.message, 'too-short', 'the admin token is not echoed');
  t.notMatch(err.message, '1111', 'the PIN file content is not echoed');
});

t.test('the configuration is deeply frozen', async (t) => {
  const c = loadConfig({
    ...MIN,
    PUBLIC_URL: 'https://lkm.example.com',
    TLS_CERT: ec.certPath,
    TLS_KEY: ec.keyPath,
    DATABASE_URL: 'postgres://u@h/db',
    TRUST_PROXY: '10.0.0.1,10.0.0.2',
  });
  const objects: Array<[string, unknown]> = [
    ['config', c],
    ['server', c.server],
    ['server.publicUrl', c.server.publicUrl],
    ['server.trustProxy', c.server.trustProxy],
    ['tls', c.tls],
    ['database', c.database],
    ['pkcs11', c.pkcs11],
  ];
  for (const [name, value] of objects) t.ok(Object.isFrozen(value), `${name} is frozen`);
  const mutable = c as unknown as { server: { port: number }; pkcs11: { tokenLabel: string }; logLevel: string };
  t.throws(() => {
    mutable.server.port = 1;
  }, TypeError);
  t.throws(() => {
    mutable.pkcs11.tokenLabel = 'other';
  }, TypeError);
  t.throws(() => {
    mutable.logLevel = 'trace';
  }, TypeError);
  t.throws(() => {
    (c.server.trustProxy as string[]).push('0.0.0.0/0');
  }, TypeError);
  t.equal(c.server.port, 8080, 'unchanged');
});

t.test('secrets print as [redacted] in JSON and util.inspect', async (t) => {
  const secrets = {
    pin: 'pin-SECRET-4242',
    admin: 'admin-SECRET-'.padEnd(40, 'z'),
    dbPassword: 'db-SECRET-pw',
    pfxPass: PFX_PASS,
  };
  const dbUrl = `postgres://strongroom:${secrets.dbPassword}@db.internal/strongroom`;
  const c: Config = loadConfig({
    PKCS11_PIN: secrets.pin,
    ADMIN_TOKEN: secrets.admin,
    DATABASE_URL: dbUrl,
    TLS_PFX: pfxPath,
    TLS_PFX_PASSPHRASE: secrets.pfxPass,
  });
  const json = JSON.stringify(c);
  const shown = inspect(c, { depth: Infinity });
  for (const [name, text] of [['JSON.stringify', json], ['util.inspect', shown]] as const) {
    for (const [what, value] of Object.entries(secrets)) t.notOk(text.includes(value), `${name}: no ${what}`);
    t.notOk(text.includes('db.internal'), `${name}: no part of DATABASE_URL`);
    t.equal(
      text.match(/\[redacted\]/g)?.length,
      5,
      `${name}: PIN, admin token, DATABASE_URL, the PKCS#12 file and its passphrase are [redacted]`,
    );
  }
  t.equal(`${c.pkcs11.pin}`, '[redacted]', 'string conversion');
  t.equal(c.pkcs11.pin.reveal(), secrets.pin, 'reveal() is the one way to the value');
});

t.test('the TLS private key does not print either', async (t) => {
  const c = loadConfig({ ...MIN, TLS_CERT: rsa.certPath, TLS_KEY: rsa.keyPath });
  // A Buffer serialises as {"type":"Buffer","data":[...bytes]}: look for a run of the key's bytes.
  const run = (text: string) => text.includes(JSON.stringify([...rsa.key.subarray(200, 260)]).slice(1, -1));
  const body = rsa.key.toString('utf8').split('\n')[5] ?? '';
  const json = JSON.stringify(c);
  t.notOk(run(json) || json.includes(body), 'JSON.stringify does not carry the key bytes');
  const shown = inspect(c, { depth: Infinity, maxArrayLength: Infinity });
  t.notOk(shown.includes(body) || shown.includes(rsa.key.subarray(200, 230).toString('hex')), 'util.inspect does not carry the key');
});
