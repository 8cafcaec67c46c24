// The face registry: a face of the tests' own (test/helpers/example-face.ts) beside the LKM, each
// in its own scope with its own parsers, body limit, error and 404 bodies; FACES and face
// settings in the one ConfigError; migrations per component, including the upgrade of a
// database whose schema_migration predates components.
import t from 'tap';
import { ConfigError, loadConfig } from '../src/config.js';
import type { Database } from '../src/db/database.js';
import { CORE_COMPONENT, migrateAll, migrations, type Migration, type MigrationSet } from '../src/db/migrations.js';
import { ERROR_CODE_HEADER } from '../src/errors.js';
import { knownFaces } from '../src/faces/index.js';
import { createEmptyDatabase } from './helpers/database.js';
import { exampleFace } from './helpers/example-face.js';
import { startHarness } from './helpers/harness.js';
import { createTestToken } from './helpers/token.js';

const FACES = [...knownFaces(), exampleFace];
/** schema_migration rows of the core component, in version order. */
const CORE_ROWS = migrations.map((m) => m.version).sort((x, y) => x - y).map((v) => `core:${v}`);
const token = createTestToken();
const MIN = { PKCS11_MODULE: token.modulePath, PKCS11_PIN: token.pin, PKCS11_TOKEN_LABEL: token.label };

function problemsOf(env: Record<string, string>): readonly string[] {
  try {
    loadConfig({ ...MIN, ...env }, FACES);
    return [];
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
}

t.test('FACES: default lkm; unknown, repeated or no names are problems listed with the others', async (t) => {
  t.same(loadConfig(MIN, FACES).faces.map((f) => f.face.name), ['lkm'], 'the LKM alone by default');
  t.same(loadConfig({ ...MIN, FACES: ' example , lkm ' }, FACES).faces.map((f) => f.face.name), ['example', 'lkm'], 'in FACES order, spaces trimmed');
  const problems = problemsOf({ FACES: 'lkm,jose,lkm', PORT: 'x', HAWK_FAILURE_LIMIT: '0' });
  t.equal(problems.length, 4, problems.join(' | '));
  t.ok(problems.some((p) => /^FACES: unknown face "jose" \(known: lkm, example\)$/.test(p)), 'the unknown face, with the known ones');
  t.ok(problems.some((p) => p === 'FACES: lkm is listed twice'));
  t.ok(problems.some((p) => p.startsWith('PORT: ')), 'a core problem in the same error');
  t.ok(problems.some((p) => p.startsWith('HAWK_FAILURE_LIMIT: ')), "the LKM's own setting in the same error");
  t.same(problemsOf({ FACES: ' , ' }), ['FACES: name at least one face']);
  t.throws(() => loadConfig({ ...MIN, FACES: 'example' }), /unknown face "example" \(known: lkm\)/, 'the build alone does not know the test face');
});

t.test("a face's bad settings are listed with the core's; a disabled face's are not read", async (t) => {
  const problems = problemsOf({ FACES: 'lkm,example', EXAMPLE_BODY_LIMIT: 'lots', PKCS11_SESSIONS: '0', KEY_POOL_SIZE: '-1' });
  t.equal(problems.length, 3, problems.join(' | '));
  t.ok(problems.some((p) => p.startsWith('EXAMPLE_BODY_LIMIT: ')), 'the example face');
  t.ok(problems.some((p) => p.startsWith('KEY_POOL_SIZE: ')), 'the LKM');
  t.ok(problems.some((p) => p.startsWith('PKCS11_SESSIONS: ')), 'the core');
  t.same(
    problemsOf({ FACES: 'example', EXAMPLE_GREETING: 'x'.repeat(20), EXAMPLE_BODY_LIMIT: '10' }),
    ['EXAMPLE_GREETING: longer than EXAMPLE_BODY_LIMIT'],
    "a face's cross-variable rule",
  );
  t.same(problemsOf({ FACES: 'lkm', EXAMPLE_BODY_LIMIT: 'lots' }), [], 'a disabled face is not validated');
  t.same(problemsOf({ FACES: 'example', HAWK_FAILURE_LIMIT: 'lots' }), [], 'nor is the LKM when it is off');
  const config = loadConfig({ ...MIN, FACES: 'lkm,example', EXAMPLE_GREETING: 'hi' }, FACES);
  const example = config.faces.find((f) => f.face.name === 'example');
  t.same(example?.config, { bodyLimit: 64, greeting: 'hi' }, 'its typed section');
  t.ok(Object.isFrozen(example?.config) && Object.isFrozen(config.faces), 'frozen');
  const lkm = config.faces.find((f) => f.face.name === 'lkm');
  t.same(lkm?.config, { keyPool: { size: 4 }, hawkFailures: { limit: 20, windowSec: 60 }, hawkAcceptPathOnlyMac: true }, "the LKM's section, defaults unchanged");
});

t.test('the example face beside the LKM: each scope its own parsers, limits and bodies', async (t) => {
  const h = await startHarness(t, { faces: FACES, env: { FACES: 'lkm,example' }, listen: false });
  const { app, adminToken } = h;
  const admin = { authorization: `Bearer ${adminToken}` };
  const lkm = '/key-management/v1';
  const ex = '/example/v1';

  await t.test('parsers: text and forms in the example face, JSON only in the LKM and the admin API', async (t) => {
    const echo = await app.inject({ method: 'POST', url: `${ex}/echo`, headers: { 'content-type': 'text/plain' }, payload: 'hi there' });
    t.equal(echo.statusCode, 200);
    t.same(echo.json(), { greeting: 'hello', echo: 'hi there' });
    const note = await app.inject({ method: 'POST', url: `${ex}/note`, headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: 'text=a+note' });
    t.equal(note.statusCode, 201);
    t.same((await h.db.query('SELECT text FROM example_note')).rows, [{ text: 'a note' }], "stored in the face's own table");

    const json = await app.inject({ method: 'POST', url: `${ex}/echo`, headers: { 'content-type': 'application/json' }, payload: '{"a":1}' });
    t.equal(json.statusCode, 415, 'JSON is not a media type of the example face');
    t.equal(json.headers[ERROR_CODE_HEADER], 'REQ_ERR_UNSUPPORTED_MEDIA_TYPE');
    t.same(json.json(), { error: 'req_err_unsupported_media_type', error_description: 'Content-Type must be application/json' }, "in the face's body");

    const text = await app.inject({ method: 'POST', url: `${lkm}/auth`, headers: { ...admin, 'content-type': 'text/plain' }, payload: 'id=genesys' });
    t.equal(text.statusCode, 415, 'the LKM still takes JSON only');
    t.same(text.json(), { message: 'Content-Type must be application/json', status: 415 });
    const form = await app.inject({
      method: 'POST',
      url: '/admin/v1/keypairs/00000000-0000-4000-8000-000000000000/disable',
      headers: { ...admin, 'content-type': 'application/x-www-form-urlencoded' },
      payload: 'a=b',
    });
    t.equal(form.statusCode, 415, "the admin API does not take the example face's forms");
    t.same(form.json(), { message: 'Content-Type must be application/json', status: 415 });
  });

  await t.test("body limits: the example face's 64 bytes do not apply to the LKM", async (t) => {
    const big = await app.inject({ method: 'POST', url: `${ex}/echo`, headers: { 'content-type': 'text/plain' }, payload: 'x'.repeat(65) });
    t.equal(big.statusCode, 413);
    t.equal(big.headers[ERROR_CODE_HEADER], 'REQ_ERR_BODY_TOO_LARGE');
    t.same(big.json(), { error: 'req_err_body_too_large', error_description: 'Request body is too large' });
    const atLimit = await app.inject({ method: 'POST', url: `${ex}/echo`, headers: { 'content-type': 'text/plain' }, payload: 'x'.repeat(64) });
    t.equal(atLimit.statusCode, 200, 'exactly the limit passes');

    const kb = await app.inject({ method: 'POST', url: `${lkm}/auth`, headers: admin, payload: { id: 'x'.repeat(1000) } });
    t.equal(kb.statusCode, 400, 'a 1 KB body reaches the LKM handler');
    t.equal(kb.headers[ERROR_CODE_HEADER], 'AUTH_ERR_INVALID_ID', "the LKM's own code");
    t.same(kb.json(), { message: 'id must be 6 to 128 printable ASCII characters, without spaces, quotes or backslashes', status: 400 });
    const over = await app.inject({ method: 'POST', url: `${lkm}/auth`, headers: admin, payload: { id: 'x'.repeat(17_000) } });
    t.equal(over.statusCode, 413, 'BODY_LIMIT (16 KB) still bounds the LKM');
    t.same(over.json(), { message: 'Request body is too large', status: 413 });
  });

  await t.test("error and 404 bodies: each face's own; outside every face, today's", async (t) => {
    const empty = await app.inject({ method: 'POST', url: `${ex}/echo`, headers: { 'content-type': 'text/plain' }, payload: '' });
    t.equal(empty.statusCode, 422, "a code from the face's catalogue");
    t.equal(empty.headers[ERROR_CODE_HEADER], 'EXAMPLE_ERR_EMPTY');
    t.same(empty.json(), { error: 'example_err_empty', error_description: 'Say something' });
    const down = await app.inject({ method: 'GET', url: `${ex}/unavailable` });
    t.equal(down.statusCode, 503, 'a core code raised in the face');
    t.equal(down.headers['retry-after'], '5');
    t.same(down.json(), { error: 'db_err_unavailable', error_description: 'The database is temporarily unavailable' });

    const cases: Array<[string, unknown]> = [
      [`${ex}/nope`, { error: 'req_err_not_found', error_description: 'Not Found' }],
      [`${lkm}/nope`, { message: 'Not Found', status: 404 }],
      ['/elsewhere', { message: 'Not Found', status: 404 }],
      ['/admin/v1/nope', { message: 'Not Found', status: 404 }],
    ];
    for (const [url, body] of cases) {
      const res = await app.inject({ method: 'GET', url });
      t.equal(res.statusCode, 404, url);
      t.equal(res.headers[ERROR_CODE_HEADER], 'REQ_ERR_NOT_FOUND', url);
      t.same(res.json(), body, url);
    }
    const unsigned = await app.inject({ method: 'GET', url: `${lkm}/keypair` });
    t.equal(unsigned.statusCode, 401, 'the LKM still asks for Hawk');
    t.same(unsigned.json(), { message: 'Hawk authentication failed', status: 401 });
  });

  await t.test('readiness checks and runtime sections the faces add', async (t) => {
    const ready = await app.inject({ method: 'GET', url: `${lkm}/ready` });
    t.equal(ready.statusCode, 200);
    t.same(ready.json(), { status: 'ready', checks: { database: 'ok', token: 'ok', canary: 'ok', example: 'ok' } });
    const runtime = await app.inject({ method: 'GET', url: '/admin/v1/runtime', headers: admin });
    t.equal(runtime.statusCode, 200);
    const body = runtime.json() as Record<string, unknown>;
    t.same(body.example, { echoes: 2 }, "the example face's section");
    t.same(body.hawk, { pathOnlyMac: {} }, "the LKM's section, as before");
  });

  await t.test("the face's migrations ran as their own component", async (t) => {
    const { rows } = await h.db.query<{ component: string; version: number }>('SELECT component, version FROM schema_migration ORDER BY component, version');
    t.same(
      rows.map((r) => `${r.component}:${r.version}`),
      [...CORE_ROWS, 'example:1'],
    );
  });
});

/** The migrate() of builds before components, kept verbatim in spirit: one table keyed by version. */
async function oldMigrate(db: Database, list: readonly Migration[]): Promise<void> {
  await db.transaction(async (tx) => {
    await tx.query(`
      CREATE TABLE IF NOT EXISTS schema_migration (
        version     integer PRIMARY KEY,
        name        text NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT now()
      )`);
    for (const m of list) {
      for (const statement of m.sql.split(/;\s*$/m).map((s) => s.replace(/^\s*--.*$/gm, '').trim()).filter(Boolean)) await tx.query(statement);
      await tx.query('INSERT INTO schema_migration (version, name) VALUES ($1, $2)', [m.version, m.name]);
    }
  });
}

const core: MigrationSet = { component: CORE_COMPONENT, migrations };
const faceSet = (component: string, table: string): MigrationSet => ({
  component,
  migrations: [{ version: 1, name: 'first', sql: `CREATE TABLE ${table} (x integer);` }],
});
const rowsOf = async (db: Database) =>
  (await db.query<{ component: string; version: number }>('SELECT component, version FROM schema_migration ORDER BY component, version')).rows.map(
    (r) => `${r.component}:${r.version}`,
  );

t.test('a database migrated by the old migrate() upgrades in place; two pools at once apply everything once', async (t) => {
  const empty = await createEmptyDatabase(t);
  const a = empty.open(2);
  const b = empty.open(2);
  await oldMigrate(a, migrations);
  await a.query("INSERT INTO keypair (id, public_key, modulus_bits, date_created) VALUES ('00000000-0000-4000-8000-000000000001', '\\x01', 8, now())");
  const sets = [core, faceSet('alpha', 'alpha_thing'), faceSet('beta', 'beta_thing')];
  const results = await Promise.all([migrateAll(a, sets), migrateAll(b, sets)]);
  const applied = results.map((r) => r.map((m) => `${m.component}:${m.version}`).join(',')).sort();
  t.same(applied, ['', 'alpha:1,beta:1'], 'one pool applies both faces\' version 1, the other finds nothing; no core version re-runs');
  t.same(
    await rowsOf(a),
    ['alpha:1', 'beta:1', ...CORE_ROWS],
    'the old rows became the core component; two faces share version 1',
  );
  const { rows: pk } = await a.query<{ def: string }>(
    "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conrelid = 'schema_migration'::regclass AND contype = 'p'",
  );
  t.same(pk, [{ def: 'PRIMARY KEY (component, version)' }]);
  t.equal(Number((await a.query<{ n: string }>('SELECT count(*) AS n FROM keypair')).rows[0]?.n), 1, 'data kept');
  t.same(await migrateAll(b, sets), [], 'a second run applies nothing');
  const err = await migrateAll(a, [core, { component: 'alpha', migrations: [] }]).catch((e: unknown) => e);
  t.match(String(err), /the database schema of alpha \(version 1\) is newer than this build knows \(0\)/, 'a face newer than the build stops the start');
  t.same(await migrateAll(a, [core]), [], 'a face the build does not enable is left alone');
});

t.test('a fresh database gets every component; bad sets are refused before any SQL', async (t) => {
  const empty = await createEmptyDatabase(t);
  const db = empty.open(2);
  const applied = await migrateAll(db, [core, faceSet('alpha', 'alpha_thing')]);
  t.same(applied.map((m) => `${m.component}:${m.version}`), [...CORE_ROWS, 'alpha:1'], 'core first, then the face');
  await t.rejects(migrateAll(db, [{ component: 'alpha', migrations: [...faceSet('alpha', 'x').migrations, ...faceSet('alpha', 'y').migrations] }]), /two migrations numbered 1/);
  await t.rejects(migrateAll(db, [{ component: 'Alpha!', migrations: [] }]), /not \[a-z\]\[a-z0-9\]\*/);
  await t.rejects(migrateAll(db, [{ component: 'alpha', migrations: [{ version: 0, name: 'zero', sql: '' }] }]), /positive integer/);
  t.same(await rowsOf(db), ['alpha:1', ...CORE_ROWS], 'nothing was recorded by the refused sets');
});
