// SIGTERM under load, against the built server process: it stops accepting (connections refused,
// or the contract 503 SERVICE_ERR_SHUTTING_DOWN with Retry-After for a request that arrives on a
// busy connection while closing), finishes the requests in flight, writes their request-log
// entries, closes the token and exits 0. Every request either completed (200) or was refused
// (that 503, or no connection), and the request log holds exactly one entry per answered request:
// nothing served unlogged, nothing logged unanswered. In process: a request that arrives after
// close() began is refused before Hawk or admin authentication looks at it, and is audited.
import { constants, publicEncrypt, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import { createTestDatabase } from './helpers/database.js';
import { startHarness } from './helpers/harness.js';
import { hawkFetch, send, type ClientCredential } from './helpers/hawk-client.js';
import { SERVER_JS } from './helpers/paths.js';
import { baseEnv, startService, tempDir, tokenEnv, waitExit, writeSecretFile } from './helpers/process-util.js';
import { createTestToken } from './helpers/token.js';

const PREFIX = '/key-management/v1';
const WORKERS = 8;

// Every token this process needs, before anything opens one (the harness opens its own in process).
const token = createTestToken();
const harnessToken = createTestToken();
const work = tempDir(t, 'shutdown');
const adminToken = randomBytes(32).toString('base64url');
const { url, db } = await createTestDatabase(t);
const service = await startService(t, SERVER_JS, {
  ...baseEnv(),
  ...tokenEnv(token, writeSecretFile(work, 'pin', `${token.pin}\n`)),
  DATABASE_URL: url,
  ADMIN_TOKEN_FILE: writeSecretFile(work, 'admin', adminToken),
  LOG_LEVEL: 'info',
  AUDIT_SPOOL_DIR: join(work, 'spool'),
});
const base = `${service.origin}${PREFIX}`;

const registered = await send('POST', `${base}/auth`, {
  json: { id: `genesys-${randomBytes(4).toString('hex')}` },
  headers: { authorization: `Bearer ${adminToken}` },
});
const reg = registered.json as { id: string; authKey: string };
const credential: ClientCredential = { id: reg.id, key: reg.authKey, algorithm: 'sha256' };
const created = await hawkFetch({ method: 'POST', url: `${base}/keypair`, credential });
if (created.status !== 200) throw new Error(`POST /keypair answered ${created.status}`);
const keypair = created.json as { id: string; publicKey: string };
const publicKey = { key: Buffer.from(keypair.publicKey, 'base64'), format: 'der' as const, type: 'pkcs1' as const };

t.test('SIGTERM under a continuous decrypt load', { timeout: 60_000 }, async (t) => {
  let stopped = false;
  let signalledAt = 0;
  const outcome = { ok: 0, refused503: 0, noConnection: 0, wrong: [] as string[], answeredAfterSignal: 0 };

  const worker = async () => {
    while (!stopped) {
      const plaintext = randomBytes(32);
      const body = publicEncrypt({ ...publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, plaintext);
      const sentAt = Date.now();
      try {
        const res = await hawkFetch({
          method: 'POST',
          url: `${base}/decrypt`,
          credential,
          json: { keypairId: keypair.id, body: body.toString('base64') },
        });
        if (signalledAt > 0 && sentAt <= signalledAt) outcome.answeredAfterSignal += 1;
        if (res.status === 200 && (res.json as { body?: string }).body === plaintext.toString('base64')) outcome.ok += 1;
        else if (
          res.status === 503 &&
          res.headers.get('strongroom-error-code') === 'SERVICE_ERR_SHUTTING_DOWN' &&
          res.headers.get('retry-after') === '5' &&
          res.text === JSON.stringify({ message: 'The service is shutting down; retry the request', status: 503 })
        ) {
          outcome.refused503 += 1;
        } else outcome.wrong.push(`${res.status} ${res.headers.get('strongroom-error-code')} ${res.text}`);
      } catch {
        // Connection refused or closed before an answer: the request was not served.
        outcome.noConnection += 1;
        if (service.proc.exited()) return;
        await sleep(20);
      }
    }
  };

  const workers = Array.from({ length: WORKERS }, worker);
  await sleep(1_500);
  const beforeSignal = outcome.ok;
  signalledAt = Date.now();
  t.ok(service.proc.child.kill('SIGTERM'), 'SIGTERM sent');
  const exit = await waitExit(service.proc, 20_000);
  stopped = true;
  await Promise.all(workers);

  t.equal(exit.code, 0, 'the process exits 0');
  t.ok(beforeSignal >= 20, `${beforeSignal} decrypts served before the signal`);
  t.same(outcome.wrong, [], 'every answer was a correct 200 or the contract 503 SERVICE_ERR_SHUTTING_DOWN with Retry-After');
  t.comment(`200: ${outcome.ok}, 503 shutting down: ${outcome.refused503}, no connection: ${outcome.noConnection}`);
  t.ok(outcome.answeredAfterSignal >= 1, `${outcome.answeredAfterSignal} requests in flight at the signal were still answered`);
  t.match(service.proc.stdout(), /shutting down/, 'it logged the graceful shutdown');

  // The refusals during shutdown are answered by the app, so each is an entry too.
  const answered = outcome.ok + outcome.refused503;
  // Entries left in the local spool would reach the database only at the next start: shutdown flushes them.
  const spoolDir = join(work, 'spool');
  const spooled = existsSync(spoolDir)
    ? readdirSync(spoolDir).reduce((n, f) => n + readFileSync(join(spoolDir, f), 'utf8').split('\n').filter(Boolean).length, 0)
    : 0;
  t.equal(spooled, 0, 'nothing left in the audit spool');
  const { rows } = await db.query<{ n: string }>(
    "SELECT count(*) AS n FROM request_log WHERE request_uri LIKE '%/decrypt%'",
  );
  t.equal(Number(rows[0]?.n), answered, `request-log rows equal the ${answered} decrypts served or refused by the app (${outcome.noConnection} never connected)`);
  if (Number(rows[0]?.n) !== answered) {
    t.comment(service.proc.stdout().split('\n').filter((l) => /"level":(40|50|60)/.test(l)).slice(0, 10).join('\n'));
  }
  const after = await fetch(`${base}/health`).then(
    () => 'answered',
    () => 'refused',
  );
  t.equal(after, 'refused', 'nothing listens any more');
});

/** Send `head` (an incomplete request head) now and `rest` when `later` resolves; the raw answer. */
function splitRequest(port: number, head: string, later: Promise<string>): Promise<{ status: number; headers: Map<string, string>; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let raw = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (raw += chunk));
    socket.on('close', () => {
      const [headText = '', body = ''] = raw.split('\r\n\r\n');
      const [statusLine = '', ...lines] = headText.split('\r\n');
      const headers = new Map(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body });
    });
    // write, not end: a half-closed request is abandoned by the server before it answers.
    socket.write(head, () => void later.then((rest) => socket.write(rest), reject));
  });
}

t.test('a request arriving after close() began: contract 503 before any authentication, audited', async (t) => {
  const h = await startHarness(t, { token: harnessToken });
  const caller = await h.register('shutdown-probe');
  const address = h.app.server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  // A connection with half a request head is busy, not idle: close() keeps it, so the rest of the
  // request arrives after shutdown began. Wrong credentials: authentication would answer 401.
  let closingNow!: () => void;
  const closing = new Promise<void>((resolve) => (closingNow = resolve));
  const after = (rest: string) => closing.then(() => rest);
  const hawkReq = splitRequest(
    port,
    'GET /key-management/v1/keypair HTTP/1.1\r\nHost: 127.0.0.1\r\n',
    after(`Authorization: Hawk id="${caller.id}", ts="1", nonce="abc", mac="AAAA"\r\nPureCloud-User-Id: late-hawk\r\n\r\n`),
  );
  const adminReq = splitRequest(
    port,
    'GET /admin/v1/keypairs HTTP/1.1\r\nHost: 127.0.0.1\r\n',
    after('Authorization: Bearer wrong\r\nPureCloud-User-Id: late-admin\r\n\r\n'),
  );
  await sleep(100);
  const closed = h.app.close();
  while (h.app.server.listening) await sleep(5);
  closingNow();
  const answers = await Promise.all([hawkReq, adminReq]);
  await closed;

  for (const [name, res] of [['Hawk route', answers[0]], ['admin route', answers[1]]] as const) {
    t.equal(res.status, 503, `${name}: 503, not the 401 authentication would give`);
    t.equal(res.headers.get('strongroom-error-code'), 'SERVICE_ERR_SHUTTING_DOWN', `${name}: the code`);
    t.equal(res.headers.get('retry-after'), '5', `${name}: Retry-After`);
    t.equal(res.headers.get('connection'), 'close', `${name}: asks the client to close`);
    t.same(JSON.parse(res.body), { message: 'The service is shutting down; retry the request', status: 503 }, `${name}: the contract body`);
  }
  const { rows } = await h.db.query<{ user_id: string; status_code: number; hawk_id: string | null }>(
    "SELECT user_id, status_code, hawk_id FROM request_log WHERE user_id LIKE 'late-%' ORDER BY user_id",
  );
  t.same(
    rows.map((r) => [r.user_id, r.status_code, r.hawk_id]),
    [['late-admin', 503, null], ['late-hawk', 503, null]],
    'both refusals are in the audit chain, with no Hawk identity (authentication never ran)',
  );
});
