// The BUILT service as a real process: configuration errors, the embedded database (lock,
// persistence, graceful SIGTERM), token start-up failures, and HTTPS with PEM and PKCS#12.
import { constants, createPublicKey, publicEncrypt, randomBytes } from 'node:crypto';
import t from 'tap';
import { ConfigError, loadConfig } from '../src/config.js';
import { createTestDatabase } from './helpers/database.js';
import { hawkFetch, hawkHeader, send, type ClientCredential } from './helpers/hawk-client.js';
import { SERVER_JS } from './helpers/paths.js';
import {
  baseEnv,
  freePort,
  httpsRequest,
  makeCertificate,
  makePfx,
  spawnNode,
  startService,
  tempDir,
  tokenEnv,
  waitExit,
  writeSecretFile,
} from './helpers/process-util.js';
import { createTestToken } from './helpers/token.js';

const PREFIX = '/key-management/v1';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

// SoftHSM scans the token directory at C_Initialize: create every token before anything opens one.
const token = createTestToken();
const wrongPinToken = createTestToken();
const tlsToken = createTestToken();
const work = tempDir(t, 'server-process');
const pinFile = writeSecretFile(work, 'pin', `${token.pin}\n`);
const wrongPinFile = writeSecretFile(work, 'pin-wrong', `${wrongPinToken.pin}x\n`);
const tlsPinFile = writeSecretFile(work, 'pin-tls', `${tlsToken.pin}\n`);
const adminToken = randomBytes(32).toString('base64url');

/** Every secret handed to a process in this file: none may ever appear in its output. */
const SECRETS = [token.pin, token.soPin, wrongPinToken.pin, `${wrongPinToken.pin}x`, tlsToken.pin, adminToken];

function noSecrets(tt: Pick<typeof t, 'notOk'>, text: string, what: string, extra: string[] = []): void {
  const leaked = [...SECRETS, ...extra].filter((s) => text.includes(s));
  tt.notOk(leaked.length, `${what}: no secret in the output`);
}

function encryptOaep(publicKey: string, message: Buffer): string {
  const key = createPublicKey({ key: Buffer.from(publicKey, 'base64'), format: 'der', type: 'pkcs1' });
  return publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, message).toString('base64');
}

t.test('bad configuration: exits non-zero listing every problem, without secrets', async (t) => {
  const pinSecret = 'pin-SECRET-7731';
  const filePin = 'pinfile-SECRET-5510';
  const shortAdmin = 'admin-SECRET-short';
  const dbPassword = 'db-SECRET-pw';
  const cert = makeCertificate(work, 'bad-config');
  const env = {
    PORT: 'abc',
    LOG_LEVEL: 'loud',
    PKCS11_PIN: pinSecret,
    PKCS11_PIN_FILE: writeSecretFile(work, 'pin-bad-config', `${filePin}\n`),
    TLS_CERT: cert.certPath,
    ADMIN_TOKEN: shortAdmin,
    DATABASE_URL: `mysql://root:${dbPassword}@127.0.0.1/x`,
  };
  let expected: readonly string[] = [];
  try {
    loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) expected = err.problems;
  }
  t.equal(expected.length, 6, 'in-process, loadConfig finds six problems');

  const proc = spawnNode(t, SERVER_JS, [], { ...baseEnv(), ...env });
  const { code } = await waitExit(proc, 20_000);
  t.not(code, 0, 'exit status is non-zero');
  t.not(code, null, 'it exited by itself');
  const stderr = proc.stderr();
  for (const problem of expected) t.ok(stderr.includes(problem), `stderr lists: ${problem}`);
  t.match(stderr, /PORT/);
  t.match(stderr, /LOG_LEVEL/);
  t.match(stderr, /PKCS11_PIN and PKCS11_PIN_FILE are both set/);
  t.match(stderr, /TLS_CERT is set without TLS_KEY/);
  t.match(stderr, /ADMIN_TOKEN/);
  t.match(stderr, /DATABASE_URL/);
  noSecrets(t, proc.output(), 'bad configuration', [pinSecret, filePin, shortAdmin, dbPassword]);
  t.equal(proc.stdout(), '', 'nothing on stdout: it never started');
});

t.test('embedded database: serves, locks its data directory, stops on SIGTERM, keeps its data', async (t) => {
  const dataDir = tempDir(t, 'server-data');
  const env = { ...baseEnv(), ...tokenEnv(token, pinFile), DATA_DIR: dataDir, ADMIN_TOKEN: adminToken, LOG_LEVEL: 'info' };

  let credential!: ClientCredential;
  let keypair!: { id: string; publicKey: string; dateCreated: number };
  const first = await startService(t, SERVER_JS, env);
  const base = `${first.origin}${PREFIX}`;

  await t.test('first start: register, create a keypair, decrypt', async (t) => {
    const health = await send('GET', `${base}/health`);
    t.equal(health.status, 200);
    t.equal(health.text, 'OK');

    const auth = await send('POST', `${base}/auth`, {
      json: { id: 'genesys-process-1' },
      headers: { authorization: `Bearer ${adminToken}` },
    });
    t.equal(auth.status, 200, auth.text);
    const body = auth.json as { id: string; authKey: string; algorithm: 'sha256' };
    t.same(Object.keys(body).sort(), ['algorithm', 'authKey', 'id']);
    t.equal(body.id, 'genesys-process-1');
    t.equal(body.algorithm, 'sha256');
    credential = { id: body.id, key: body.authKey, algorithm: body.algorithm };

    const created = await hawkFetch({ method: 'POST', url: `${base}/keypair`, credential });
    t.equal(created.status, 200, created.text);
    keypair = created.json as typeof keypair;
    t.match(keypair.id, UUID);
    t.type(keypair.publicKey, 'string');

    const message = randomBytes(32);
    const decrypted = await hawkFetch({
      method: 'POST',
      url: `${base}/decrypt`,
      credential,
      json: { keypairId: keypair.id, body: encryptOaep(keypair.publicKey, message) },
    });
    t.equal(decrypted.status, 200, decrypted.text);
    t.same(decrypted.json, { body: message.toString('base64') }, 'the plaintext');
  });

  await t.test('a second process on the same DATA_DIR refuses to start', async (t) => {
    const port = await freePort();
    const second = spawnNode(t, SERVER_JS, [], { ...env, PORT: String(port), HOST: '127.0.0.1' });
    const { code } = await waitExit(second, 30_000);
    t.not(code, 0, 'non-zero exit');
    t.not(code, null, 'it exited by itself');
    t.match(second.stderr(), /embedded database/);
    t.match(second.stderr(), new RegExp(`in use by process ${first.proc.pid}\\b`), 'names the pid holding the lock');
    t.match(second.stderr(), /stop it first|DATABASE_URL/, 'says what to do');
    noSecrets(t, second.output(), 'second process');

    const health = await send('GET', `${base}/health`);
    t.equal(health.status, 200, 'the first process still serves');
    t.equal(health.text, 'OK');
    const list = await hawkFetch({ method: 'GET', url: `${base}/keypair`, credential });
    t.equal(list.status, 200);
    t.same(list.json, [keypair], 'and its data is intact');
  });

  await t.test('SIGTERM: the first process exits 0 within 10 s', async (t) => {
    t.ok(first.proc.child.kill('SIGTERM'));
    const { code, signal } = await waitExit(first.proc, 10_000);
    t.equal(code, 0, 'exit status 0');
    t.equal(signal, null, 'not killed by the signal: it shut down');
    noSecrets(t, first.proc.output(), 'first process');
    t.match(first.proc.stdout(), /shutting down/, 'it logged the graceful shutdown');
  });

  await t.test('restart on the same DATA_DIR and token: keypair, decryption and credential persist', async (t) => {
    const again = await startService(t, SERVER_JS, env);
    const base2 = `${again.origin}${PREFIX}`;
    const list = await hawkFetch({ method: 'GET', url: `${base2}/keypair`, credential });
    t.equal(list.status, 200, `the credential still works: ${list.text}`);
    t.same(list.json, [keypair], 'the keypair is still listed');
    const one = await hawkFetch({ method: 'GET', url: `${base2}/keypair/${keypair.id}`, credential });
    t.equal(one.status, 200);
    t.same(one.json, keypair);

    const message = randomBytes(32);
    const decrypted = await hawkFetch({
      method: 'POST',
      url: `${base2}/decrypt`,
      credential,
      json: { keypairId: keypair.id, body: encryptOaep(keypair.publicKey, message) },
    });
    t.equal(decrypted.status, 200, decrypted.text);
    t.same(decrypted.json, { body: message.toString('base64') }, 'the private key is still in the token and usable');

    const wrongKey = await hawkFetch({ method: 'GET', url: `${base2}/keypair`, credential: { ...credential, key: randomBytes(32).toString('base64url') } });
    t.equal(wrongKey.status, 401, 'a wrong key is still refused');

    again.proc.child.kill('SIGTERM');
    const { code } = await waitExit(again.proc, 10_000);
    t.equal(code, 0);
    noSecrets(t, again.proc.output(), 'restarted process');
  });
});

t.test('wrong PIN: exits non-zero with a login message and without the PIN', async (t) => {
  const db = await createTestDatabase(t);
  const proc = spawnNode(t, SERVER_JS, [], {
    ...baseEnv(),
    ...tokenEnv(wrongPinToken, wrongPinFile),
    DATABASE_URL: db.url,
    PORT: String(await freePort()),
    LOG_LEVEL: 'info',
  });
  const { code } = await waitExit(proc, 30_000);
  t.not(code, 0, 'non-zero exit');
  t.not(code, null, 'it exited by itself');
  t.match(proc.stderr(), /login/i, 'the message is about the login');
  t.match(proc.stderr(), wrongPinToken.label, 'names the token');
  t.match(proc.stderr(), /CKR_PIN_INCORRECT/, 'says why');
  noSecrets(t, proc.output(), 'wrong PIN');
});

t.test('unknown token label: exits non-zero naming the label', async (t) => {
  const db = await createTestDatabase(t);
  const label = `no-such-${randomBytes(4).toString('hex')}`;
  const proc = spawnNode(t, SERVER_JS, [], {
    ...baseEnv(),
    ...tokenEnv(token, pinFile),
    PKCS11_TOKEN_LABEL: label,
    DATABASE_URL: db.url,
    PORT: String(await freePort()),
  });
  const { code } = await waitExit(proc, 30_000);
  t.not(code, 0, 'non-zero exit');
  t.not(code, null, 'it exited by itself');
  t.match(proc.stderr(), new RegExp(`no token labelled "${label}"`), 'names the label');
  noSecrets(t, proc.output(), 'unknown label');
});

t.test('HTTPS', async (t) => {
  const pem = makeCertificate(work, 'https', 'ec');
  const pfxPass = `pfx-${randomBytes(6).toString('hex')}`;
  const pfxPath = makePfx(work, 'https', pem, pfxPass);

  const cases: Array<[string, Record<string, string>]> = [
    ['PEM certificate and key', { TLS_CERT: pem.certPath, TLS_KEY: pem.keyPath }],
    ['PKCS#12 with passphrase', { TLS_PFX: pfxPath, TLS_PFX_PASSPHRASE: pfxPass }],
  ];
  for (const [name, tls] of cases) {
    await t.test(name, async (t) => {
      const db = await createTestDatabase(t);
      const env = { ...baseEnv(), ...tokenEnv(tlsToken, tlsPinFile), ...tls, DATABASE_URL: db.url, ADMIN_TOKEN: adminToken };
      const { proc, origin } = await startService(t, SERVER_JS, env, { ca: pem.cert });
      t.match(origin, /^https:/);
      const base = `${origin}${PREFIX}`;

      const health = await httpsRequest(`${base}/health`, { ca: pem.cert });
      t.equal(health.status, 200);
      t.equal(health.text, 'OK');

      const auth = await httpsRequest(`${base}/auth`, {
        method: 'POST',
        ca: pem.cert,
        json: { id: 'genesys-https-1' },
        headers: { authorization: `Bearer ${adminToken}` },
      });
      t.equal(auth.status, 200, auth.text);
      const body = auth.json as { id: string; authKey: string; algorithm: 'sha256' };
      const credential: ClientCredential = { id: body.id, key: body.authKey, algorithm: body.algorithm };

      const url = `${base}/keypair`;
      const list = await httpsRequest(url, {
        ca: pem.cert,
        headers: { authorization: hawkHeader({ method: 'GET', url, credential }) },
      });
      t.equal(list.status, 200, list.text);
      t.same(list.json, [], 'a Hawk-signed GET /keypair over TLS');

      const unsigned = await httpsRequest(url, { ca: pem.cert });
      t.equal(unsigned.status, 401, 'still Hawk-protected over TLS');

      await t.rejects(
        httpsRequest(`${base}/health`, { ca: makeCertificate(work, `other-${name.length}`).cert }),
        'a client that does not trust this certificate cannot connect',
      );

      proc.child.kill('SIGTERM');
      const { code } = await waitExit(proc, 10_000);
      t.equal(code, 0, 'exits 0 on SIGTERM');
      noSecrets(t, proc.output(), name, [pfxPass]);
    });
  }
});
