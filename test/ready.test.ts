// GET /key-management/v1/ready: the readiness check beside the liveness /health. It needs no
// credential, is not request-logged, and names the dependency that failed (here the database,
// cut through a TCP relay; token failures are driven in token-faults.test.ts).
import { join } from 'node:path';
import t from 'tap';
import { createTestDatabase, serverUrl } from './helpers/database.js';
import { startHarness } from './helpers/harness.js';
import { tempDir } from './helpers/process-util.js';
import { Relay } from './helpers/tcp-relay.js';

const { url, db } = await createTestDatabase(t);
const target = new URL(serverUrl());
const relay = new Relay(target.hostname, Number(target.port || 5432));
await relay.start();
t.teardown(() => relay.cut());

const h = await startHarness(t, { databaseUrl: relay.via(url), env: { AUDIT_SPOOL_DIR: join(tempDir(t, 'ready'), 'spool') } });
const logRows = async () => Number((await db.query<{ n: string }>('SELECT count(*) AS n FROM request_log')).rows[0]?.n);

t.test('all dependencies up: 200 ready, every check ok; /health is still the plain OK', async (t) => {
  const before = await logRows();
  const res = await fetch(`${h.base}/ready`);
  t.equal(res.status, 200);
  t.same(await res.json(), { status: 'ready', checks: { database: 'ok', token: 'ok', canary: 'ok' } });
  t.equal(res.headers.get('cache-control'), 'no-store');
  const health = await fetch(`${h.base}/health`);
  t.equal(health.status, 200);
  t.equal(await health.text(), 'OK', 'liveness answer unchanged');
  t.equal(await logRows(), before, 'probes are not request-logged');
});

// One round of checks answers every caller for 1 s (plugins/ready.ts): wait it out after a change.
const pastCache = () => new Promise((resolve) => setTimeout(resolve, 1100));

t.test('database cut: 503 naming the database; back: ready again', async (t) => {
  await relay.cut();
  await pastCache();
  const res = await fetch(`${h.base}/ready`);
  t.equal(res.status, 503);
  t.equal(res.headers.get('retry-after'), '5');
  t.same(await res.json(), { status: 'unavailable', checks: { database: 'failed', token: 'ok', canary: 'ok' } });
  await relay.start();
  await pastCache();
  const back = await fetch(`${h.base}/ready`);
  t.equal(back.status, 200, 'ready again without a restart');
  t.same(await back.json(), { status: 'ready', checks: { database: 'ok', token: 'ok', canary: 'ok' } });
});

t.test('a hanging database is reported as timeout, not waited for', async (t) => {
  // Connections accepted but never answered: the relay's peer is a silent listener.
  const { createServer } = await import('node:net');
  const held = new Set<import('node:net').Socket>();
  const silent = createServer((socket) => {
    held.add(socket);
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const address = silent.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  const hung = new URL(url);
  hung.hostname = '127.0.0.1';
  hung.port = String(port);
  const { default: readyPlugin } = await import('../plugins/ready.js');
  const { default: Fastify } = await import('fastify');
  const { openPostgres } = await import('../src/db/postgres.js');
  const hungDb = openPostgres({ url: hung.toString(), poolSize: 1 });
  const app = Fastify();
  await app.register(readyPlugin, { db: hungDb, keyStore: h.app.keyStore, timeoutMs: 300 });
  t.teardown(async () => {
    await app.close();
    for (const socket of held) socket.destroy();
    await new Promise<void>((resolve) => silent.close(() => resolve()));
    await hungDb.close().catch(() => undefined);
  });
  const start = Date.now();
  const res = await app.inject({ method: 'GET', url: '/ready' });
  const took = Date.now() - start;
  t.equal(res.statusCode, 503);
  t.same(res.json(), { status: 'unavailable', checks: { database: 'timeout', token: 'ok', canary: 'ok' } });
  t.ok(took < 1500, `answered in ${took} ms`);
});

t.test('during shutdown: 503 shutting-down, so balancers drain the instance', async (t) => {
  const { default: readyPlugin } = await import('../plugins/ready.js');
  const { default: Fastify } = await import('fastify');
  const app = Fastify();
  await app.register(readyPlugin, { db: h.db, keyStore: h.app.keyStore });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  // close() runs the preClose hooks first; the routes still answer inject until it completes.
  const closing = app.close();
  const res = await app.inject({ method: 'GET', url: '/ready' });
  await closing;
  t.ok(port > 0);
  t.equal(res.statusCode, 503);
  t.equal(res.json().status, 'shutting-down');
});
