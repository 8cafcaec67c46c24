// The database goes away under a running service and comes back: requests get a clean 503 with
// Retry-After (never a 500, never served unchecked), and succeed again without a restart.
// The app reaches the real Postgres through a TCP relay this test can cut.
import t from 'tap';
import { createTestDatabase, serverUrl } from './helpers/database.js';
import { startHarness } from './helpers/harness.js';
import { hawkFetch } from './helpers/hawk-client.js';
import { Relay } from './helpers/tcp-relay.js';

const { url } = await createTestDatabase(t);
const target = new URL(serverUrl());
const relay = new Relay(target.hostname, Number(target.port || 5432));
await relay.start();
t.teardown(() => relay.cut());
const viaRelay = new URL(url);
viaRelay.hostname = '127.0.0.1';
viaRelay.port = String(relay.port);

const h = await startHarness(t, { databaseUrl: viaRelay.toString() });
const credential = await h.register();
const list = () => hawkFetch({ method: 'GET', url: `${h.base}/keypair`, credential });

t.test('database down: 503 with Retry-After; back up: served again without a restart', async (t) => {
  t.equal((await list()).status, 200, 'served while the database is up');

  await relay.cut();
  for (let i = 0; i < 3; i++) {
    const res = await list();
    t.equal(res.status, 503, `request ${i + 1} during the outage: 503`);
    t.same(res.json, { message: 'The database is temporarily unavailable', status: 503 });
    t.equal(res.headers.get('strongroom-error-code'), 'DB_ERR_UNAVAILABLE');
    t.equal(res.headers.get('retry-after'), '5');
  }

  await relay.start(relay.port);
  const res = await list();
  t.equal(res.status, 200, 'the same instance serves again once the database is back');
});
