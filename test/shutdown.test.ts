// SIGTERM under load, against the built server process: it stops accepting (connections refused,
// or Fastify's bare 503 for a request that arrives while closing), finishes the
// requests in flight, writes their request-log entries, closes the token and exits 0. Every
// request either completed (200) or was refused (503, or no connection), and the request log
// holds exactly one entry per answered request: nothing served unlogged, nothing logged unanswered.
import { constants, publicEncrypt, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { createTestDatabase } from './helpers/database.js';
import { hawkFetch, send, type ClientCredential } from './helpers/hawk-client.js';
import { SERVER_JS } from './helpers/paths.js';
import { baseEnv, startService, tempDir, tokenEnv, waitExit, writeSecretFile } from './helpers/process-util.js';
import { createTestToken } from './helpers/token.js';

const PREFIX = '/key-management/v1';
const WORKERS = 8;

const token = createTestToken();
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
  const outcome = { ok: 0, refused503: 0, noConnection: 0, wrong: [] as string[], answeredAfterSignal: 0, codes503: {} as Record<string, number> };

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
        else if (res.status === 503) {
          outcome.refused503 += 1;
          const code = res.headers.get('strongroom-error-code') ?? 'none';
          outcome.codes503[code] = (outcome.codes503[code] ?? 0) + 1;
        }
        else outcome.wrong.push(`${res.status} ${res.text}`);
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
  t.same(outcome.wrong, [], 'every answer was a correct 200 or a 503');
  t.comment(`200: ${outcome.ok}, 503: ${JSON.stringify(outcome.codes503)}, no connection: ${outcome.noConnection}`);
  t.ok(outcome.answeredAfterSignal >= 1, `${outcome.answeredAfterSignal} requests in flight at the signal were still answered`);
  t.match(service.proc.stdout(), /shutting down/, 'it logged the graceful shutdown');

  // A bare 503 (no error code) is Fastify refusing a request that arrived after close() began:
  // refused before routing, so not logged. Every other answer is an entry.
  const answered = outcome.ok + outcome.refused503 - (outcome.codes503.none ?? 0);
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
