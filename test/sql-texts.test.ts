// Every SQL text is a constant: batches of any size (nonce claims, audit appends, key state
// lists and transitions) reuse one prepared statement per query site. Counted on the real
// connection in pg_prepared_statements, after batches of many sizes.
import { randomUUID } from 'node:crypto';
import t from 'tap';
import type { AuditRecord } from '../src/audit/chain.js';
import { appendRecords } from '../src/audit/store.js';
import { migrate } from '../src/db/migrations.js';
import { KeypairRepository } from '../src/db/keypairs.js';
import { NonceRepository } from '../src/db/nonces.js';
import { createEmptyDatabase } from './helpers/database.js';
import { lkmRequestRecord } from './helpers/audit-record.js';

function record(i: number): AuditRecord {
  const hawk = i % 2 === 0;
  return lkmRequestRecord({
    userId: `u${i}`,
    method: 'GET',
    uri: '/key-management/v1/keypair',
    hawkId: hawk ? 'genesys' : null,
    keypairId: i % 3 === 0 ? randomUUID() : null,
    detail: i % 5 === 0 ? { n: i } : null,
    principalKind: hawk ? 'hawk' : null,
    principalId: hawk ? 'genesys' : null,
  });
}

t.test('prepared statements per connection stay fixed whatever the batch sizes', async (t) => {
  const empty = await createEmptyDatabase(t);
  // One connection: every statement below is prepared on it.
  const db = empty.open(1);
  await migrate(db);
  const prepared = async () => {
    const { rows } = await db.query<{ n: unknown }>('SELECT count(*) AS n FROM pg_prepared_statements');
    return Number(rows[0]?.n);
  };
  const nonces = new NonceRepository(db);
  const keypairs = new KeypairRepository(db);

  const round = async (sizes: number[]) => {
    for (const size of sizes) {
      const now = new Date();
      const later = new Date(now.getTime() + 60_000);
      // Claims made together are group-committed: batches of 1 and size - 1.
      const claimed = await Promise.all(Array.from({ length: size }, () => nonces.claim('genesys', randomUUID(), now, later)));
      t.ok(claimed.every(Boolean), `${size} fresh nonces claimed`);
      t.equal(await appendRecords(db, Array.from({ length: size }, (_, i) => record(i))), size, `${size} audit records appended`);
    }
    await keypairs.listIn(['enabled']);
    await keypairs.listIn(['enabled', 'disabled', 'pending_deletion']);
    await keypairs.transition(randomUUID(), ['enabled'], 'disabled', new Date());
    await keypairs.transition(randomUUID(), ['enabled', 'disabled'], 'pending_deletion', new Date(), new Date());
    await keypairs.transition(randomUUID(), ['pending_deletion'], 'disabled', new Date(), null);
  };

  await round([1, 2, 3, 5, 8, 13, 21, 34, 55, 64]);
  const first = await prepared();
  t.comment(`prepared statements on the connection after batches of 1..64: ${first}`);
  await round([4, 6, 7, 9, 10, 11, 12, 17, 40, 63]);
  const second = await prepared();
  t.comment(`after batches of ten other sizes: ${second}`);
  t.equal(second, first, 'batches of other sizes add no statement');
  // One per query site used here: the migration lock, the schema_migration insert, nonce claim,
  // the one-statement audit append, keypair list and transition (the audit head read, once per
  // connection pool, has no parameters and is not prepared).
  t.equal(first, 6, 'one statement per query site');

  // The fixed texts still do what the variable ones did.
  const when = new Date();
  t.same(await nonces.claim('genesys', 'same-nonce', when, new Date(when.getTime() + 60_000)), true, 'a fresh nonce is claimed');
  t.same(await nonces.claim('genesys', 'same-nonce', when, new Date(when.getTime() + 60_000)), false, 'a live one is refused');
  const id = randomUUID();
  await keypairs.insert({ id, publicKey: Buffer.from([1]), modulusBits: 8, dateCreated: when, owner: null });
  t.equal((await keypairs.transition(id, ['disabled'], 'enabled', when))?.state, undefined, 'a transition from the wrong state misses');
  const deleteAfter = new Date(when.getTime() + 7 * 86_400_000);
  const moved = await keypairs.transition(id, ['enabled', 'disabled'], 'pending_deletion', when, deleteAfter);
  t.equal(moved?.deleteAfter?.getTime(), deleteAfter.getTime(), 'delete_after written when given');
  const back = await keypairs.transition(id, ['pending_deletion'], 'disabled', when);
  t.equal(back?.deleteAfter?.getTime(), deleteAfter.getTime(), 'and kept when not given');
  const cleared = await keypairs.transition(id, ['disabled'], 'enabled', when, null);
  t.equal(cleared?.deleteAfter, null, 'and cleared when given null');
  t.same((await keypairs.listIn(['enabled'])).map((k) => k.id), [id], 'listIn by an array of states');
});
