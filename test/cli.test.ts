// The BUILT `strongroom` CLI as a real process: `auth register` against a real token and a real
// Postgres (the credential then works against the app), usage and configuration errors, secrets
// refused on argv, and the embedded database held by a running service.
import { randomBytes } from 'node:crypto';
import t from 'tap';
import { createTestDatabase } from './helpers/database.js';
import { startHarness } from './helpers/harness.js';
import { hawkFetch, send, type ClientCredential } from './helpers/hawk-client.js';
import { SERVER_JS } from './helpers/paths.js';
import { baseEnv, startService, tempDir, tokenEnv, waitExit, writeSecretFile } from './helpers/process-util.js';
import { secretCheckedCli } from './helpers/cli-run.js';
import { createTestToken } from './helpers/token.js';

const PREFIX = '/key-management/v1';

// SoftHSM scans the token directory at C_Initialize: create every token before anything opens one.
const token = createTestToken();
const work = tempDir(t, 'cli');
const pinFile = writeSecretFile(work, 'pin', `${token.pin}\n`);
const adminToken = randomBytes(32).toString('base64url');
const SECRETS = [token.pin, token.soPin, adminToken];
const cli = secretCheckedCli(SECRETS);

const db = await createTestDatabase(t);
const env = { ...baseEnv(), ...tokenEnv(token, pinFile), DATABASE_URL: db.url };

t.test('auth register prints one line of JSON and the credential authenticates', async (t) => {
  const run = await cli(t, ['auth', 'register', 'genesys-cli-1'], env);
  t.equal(run.code, 0, run.stderr);
  t.equal(run.stderr, '');
  t.match(run.stdout, /^[^\n]+\n$/, 'exactly one line');
  const body = JSON.parse(run.stdout) as Record<string, unknown>;
  t.same(Object.keys(body).sort(), ['algorithm', 'authKey', 'id'], 'the keys of POST /auth');
  t.equal(body.id, 'genesys-cli-1');
  t.equal(body.algorithm, 'sha256');
  t.type(body.authKey, 'string');
  t.ok((body.authKey as string).length >= 43, 'the key carries at least 256 bits');

  const h = await startHarness(t, { token, databaseUrl: db.url });
  const credential: ClientCredential = { id: 'genesys-cli-1', key: body.authKey as string, algorithm: 'sha256' };
  const list = await hawkFetch({ method: 'GET', url: `${h.base}/keypair`, credential });
  t.equal(list.status, 200, list.text);
  t.same(list.json, [], 'a Hawk request with the printed credential is accepted');
  const forged = await hawkFetch({
    method: 'GET',
    url: `${h.base}/keypair`,
    credential: { ...credential, key: randomBytes(32).toString('base64url') },
  });
  t.equal(forged.status, 401, 'the same id with another key is not');
  t.equal(forged.headers.get('strongroom-error-code'), 'HAWK_ERR_UNAUTHORIZED');
});

t.test('registering the same id again fails with exit 1', async (t) => {
  const run = await cli(t, ['auth', 'register', 'genesys-cli-1'], env);
  t.equal(run.code, 1);
  t.match(run.stderr, /already exists/);
  t.equal(run.stdout, '', 'no credential printed');
});

t.test('an invalid id fails with exit 1', async (t) => {
  const run = await cli(t, ['auth', 'register', 'abc'], env);
  t.equal(run.code, 1);
  t.match(run.stderr, /id must be 6 to 128/);
  t.equal(run.stdout, '');
});

t.test('usage errors exit 2 with the usage text', async (t) => {
  const cases: Array<[string, string[]]> = [
    ['no id', ['auth', 'register']],
    ['extra arguments', ['auth', 'register', 'genesys-cli-2', 'genesys-cli-3']],
    ['unknown command', ['keys', 'shred']],
    ['unknown auth command', ['auth', 'shred', 'genesys-cli-1']],
    ['unknown option', ['auth', 'register', 'genesys-cli-2', '--force']],
  ];
  for (const [name, args] of cases) {
    const run = await cli(t, args, env);
    t.equal(run.code, 2, `${name}: exit 2`);
    t.match(run.stderr, /usage: strongroom/, `${name}: usage on stderr`);
    t.equal(run.stdout, '', `${name}: nothing on stdout`);
  }
});

t.test('a PIN on the command line is refused: secrets never come from argv', async (t) => {
  for (const args of [
    ['auth', 'register', 'genesys-cli-4', '--pin', token.pin],
    ['auth', 'register', 'genesys-cli-4', `--pin=${token.pin}`],
    ['--pin', token.pin, 'auth', 'register', 'genesys-cli-4'],
  ]) {
    const run = await cli(t, args, { ...baseEnv(), ...tokenEnv(token, pinFile), DATABASE_URL: db.url, PKCS11_PIN_FILE: '' });
    t.equal(run.code, 2, `${args.join(' ').replace(token.pin, '<pin>')}: exit 2`);
    t.match(run.stderr, /--pin/, 'names the refused option');
    t.notMatch(run.stderr, /invalid configuration/, 'refused as an argument, before any configuration is read');
    t.equal(run.stdout, '', 'no credential printed');
  }
  const after = await cli(t, ['auth', 'register', 'genesys-cli-4'], env);
  t.equal(after.code, 0, `the refused runs registered nothing: ${after.stderr}`);
});

t.test('bad configuration exits 2 listing every problem', async (t) => {
  const run = await cli(t, ['auth', 'register', 'genesys-cli-5'], {
    ...env,
    PKCS11_PIN: token.pin,
    LOG_LEVEL: 'loud',
    PKCS11_SESSIONS: 'many',
    DATABASE_URL: 'mysql://root@127.0.0.1/x',
  });
  t.equal(run.code, 2);
  t.match(run.stderr, /invalid configuration/);
  t.match(run.stderr, /PKCS11_PIN and PKCS11_PIN_FILE are both set/);
  t.match(run.stderr, /LOG_LEVEL/);
  t.match(run.stderr, /PKCS11_SESSIONS/);
  t.match(run.stderr, /DATABASE_URL/);
  t.equal(run.stdout, '');

  const noPin = await cli(t, ['auth', 'register', 'genesys-cli-5'], { ...env, PKCS11_PIN_FILE: '' });
  t.equal(noPin.code, 2);
  t.match(noPin.stderr, /PKCS11_PIN or PKCS11_PIN_FILE is required/);
});

t.test('--help prints the usage and exits 0', async (t) => {
  for (const args of [['--help'], ['-h'], ['auth', 'register', '--help']]) {
    const run = await cli(t, args, env);
    t.equal(run.code, 0, `${args.join(' ')}: exit 0`);
    t.match(run.stdout, /^usage: strongroom <command>/);
    t.match(run.stdout, /auth register <id>/);
    t.equal(run.stderr, '');
  }
});

t.test('embedded database in use by a running service', async (t) => {
  const dataDir = tempDir(t, 'cli-data');
  const embedded = { ...baseEnv(), ...tokenEnv(token, pinFile), DATA_DIR: dataDir };
  const serviceEnv = { ...embedded, ADMIN_TOKEN: adminToken };

  const first = await startService(t, SERVER_JS, serviceEnv);
  const base = `${first.origin}${PREFIX}`;
  const auth = await send('POST', `${base}/auth`, { json: { id: 'genesys-svc-1' }, headers: { authorization: `Bearer ${adminToken}` } });
  t.equal(auth.status, 200, auth.text);
  const serviceCredential: ClientCredential = { id: 'genesys-svc-1', key: (auth.json as { authKey: string }).authKey, algorithm: 'sha256' };
  const created = await hawkFetch({ method: 'POST', url: `${base}/keypair`, credential: serviceCredential });
  t.equal(created.status, 200, created.text);
  const keypair = created.json as { id: string };

  const refused = await cli(t, ['auth', 'register', 'genesys-cli-embedded'], embedded);
  t.equal(refused.code, 1);
  t.match(refused.stderr, /embedded database .* is in use by process \d+/, 'says the embedded database is in use');
  t.match(refused.stderr, /stop it first|DATABASE_URL/, 'and what to do');
  t.equal(refused.stdout, '');
  const still = await hawkFetch({ method: 'GET', url: `${base}/keypair`, credential: serviceCredential });
  t.equal(still.status, 200, 'the service keeps serving');
  t.same(still.json, [created.json]);

  first.proc.child.kill('SIGTERM');
  t.equal((await waitExit(first.proc, 10_000)).code, 0, 'the service stops cleanly');

  const registered = await cli(t, ['auth', 'register', 'genesys-cli-embedded'], embedded);
  t.equal(registered.code, 0, `with the service stopped the CLI registers: ${registered.stderr}`);
  const body = JSON.parse(registered.stdout) as { id: string; authKey: string; algorithm: 'sha256' };
  t.equal(body.id, 'genesys-cli-embedded');

  const again = await startService(t, SERVER_JS, serviceEnv);
  const base2 = `${again.origin}${PREFIX}`;
  const cliCredential: ClientCredential = { id: body.id, key: body.authKey, algorithm: body.algorithm };
  const list = await hawkFetch({ method: 'GET', url: `${base2}/keypair`, credential: cliCredential });
  t.equal(list.status, 200, `the restarted service accepts the CLI's credential: ${list.text}`);
  t.same(list.json, [created.json], 'and nothing was lost or corrupted');
  const one = await hawkFetch({ method: 'GET', url: `${base2}/keypair/${keypair.id}`, credential: serviceCredential });
  t.equal(one.status, 200, 'the credential registered through the service still works');
  t.same(one.json, created.json);

  again.proc.child.kill('SIGTERM');
  t.equal((await waitExit(again.proc, 10_000)).code, 0);
  const leaked = SECRETS.filter((s) => first.proc.output().includes(s) || again.proc.output().includes(s));
  t.notOk(leaked.length, 'no secret in the service output either');
});
