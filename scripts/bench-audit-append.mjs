// Audit append and Hawk nonce claim cost on the Postgres server (DATABASE_URL), in this process,
// no HTTP and no token: appends/s for single appends (one writer, one record each) and for
// batches, round trips (statements sent to Postgres, BEGIN/COMMIT included) per append, and the
// nonce claim options side by side (logged table, UNLOGGED table; folding the claim into the
// append is bounded by the single-append figure).
// Each run uses a fresh database, dropped at the end.
//
//   npm run build && DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres node scripts/bench-audit-append.mjs [--seconds 3]
import { randomBytes, randomUUID } from 'node:crypto';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import pg from 'pg';

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? fallback : Number(process.argv[i + 1]);
};
const seconds = arg('seconds', 3);
const root = resolve(new URL('..', import.meta.url).pathname);
const load = (p) => import(pathToFileURL(join(root, 'dist', p)).href);
const { appendRecords } = await load('src/audit/store.js');
const { migrate } = await load('src/db/migrations.js');
const { openPostgres } = await load('src/db/postgres.js');
const { NonceRepository } = await load('src/db/nonces.js');
const { verifyChain } = await load('src/audit/verify.js');

const server = process.env.DATABASE_URL;
if (!server) throw new Error('DATABASE_URL must name a Postgres server');
const name = `sr_bench_${process.pid}_${randomBytes(3).toString('hex')}`;
const admin = async (sql) => {
  const c = new pg.Client({ connectionString: server });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
};
await admin(`CREATE DATABASE ${name}`);
const url = new URL(server);
url.pathname = `/${name}`;
const raw = openPostgres({ url: url.toString(), poolSize: 8 });

/** Counts what reaches Postgres: every statement (BEGIN/COMMIT included) and every checkout. */
let statements = 0;
let checkouts = 0;
const counted = (q) => ({ query: (sql, params) => ((statements += 1), q.query(sql, params)) });
const db = {
  ...raw,
  query: counted(raw).query,
  transaction: (fn) => {
    checkouts += 1;
    statements += 2; // BEGIN and COMMIT
    return raw.transaction((tx) => fn(counted(tx)));
  },
};

const record = (i) => ({
  uid: randomUUID(),
  loggedAt: new Date(),
  userId: `user-${i}`,
  method: 'POST',
  uri: '/key-management/v1/decrypt',
  hawkId: 'genesys',
  statusCode: 200,
  keypairId: randomUUID(),
  clientAddress: '127.0.0.1',
  event: null,
  actor: null,
  detail: null,
  face: 'lkm',
  principalKind: 'hawk',
  principalId: 'genesys',
  subjectKind: null,
  subjectId: null,
});

/** Run `fn` repeatedly for `seconds` with `parallel` callers; returns ops/s and statements per op. */
async function measure(label, parallel, perCall, fn) {
  await fn(); // warm: prepared statements
  const s0 = statements;
  const c0 = checkouts;
  let ops = 0;
  const until = Date.now() + seconds * 1000;
  const start = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (Date.now() < until) {
        await fn();
        ops += perCall;
      }
    }),
  );
  const s = Number(process.hrtime.bigint() - start) / 1e9;
  const calls = ops / perCall;
  const line = {
    label,
    perSecond: Math.round(ops / s),
    statementsPerCall: +((statements - s0) / calls).toFixed(2),
    checkoutsPerCall: +((checkouts - c0) / calls).toFixed(2),
  };
  console.log(JSON.stringify(line));
  return line;
}

try {
  await migrate(raw);
  let n = 0;
  await measure('append 1 record, 1 caller', 1, 1, () => appendRecords(db, [record(n++)]));
  await measure('append 1 record, 8 writers racing (as 8 instances would)', 8, 1, () => appendRecords(db, [record(n++)]));
  await measure('append batch of 16, 1 caller', 1, 16, () => appendRecords(db, Array.from({ length: 16 }, () => record(n++))));
  await measure('append batch of 100, 1 caller', 1, 100, () => appendRecords(db, Array.from({ length: 100 }, () => record(n++))));
  const verdict = await verifyChain(raw);
  console.log(JSON.stringify({ label: 'verify after the bench', ok: verdict.ok, checked: verdict.checked, byVersion: verdict.byVersion, problem: verdict.problem }));

  // Nonce claim options. Each claim is one statement; the group commit batches concurrent ones.
  const nonces = new NonceRepository(db);
  const claim = () => {
    const now = new Date();
    return nonces.claim('genesys', randomUUID(), now, new Date(now.getTime() + 120_000));
  };
  const claimThenAppend = async () => {
    await claim();
    await appendRecords(db, [record(n++)]);
  };
  await raw.query('ALTER TABLE hawk_nonce SET LOGGED');
  for (const c of [1, 16]) await measure(`nonce claim, logged table, ${c} callers`, c, 1, claim);
  await measure('logged nonce claim, then append: two statements, 1 caller', 1, 1, claimThenAppend);
  await raw.query('ALTER TABLE hawk_nonce SET UNLOGGED');
  for (const c of [1, 16]) await measure(`nonce claim, UNLOGGED table, ${c} callers`, c, 1, claim);
  await measure('UNLOGGED nonce claim, then append: two statements, 1 caller', 1, 1, claimThenAppend);
  // Folding the claim into the audit statement would cost at best what an append alone costs
  // (one statement, one WAL flush for both): the 'append 1 record, 1 caller' line above.
} finally {
  await raw.close();
  await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
}
