// Load generator for scripts/bench.mjs, run as a separate process (fork with IPC), so its CPU is
// not the server's event loop. Every request carries a fresh Hawk header (@hapi/hawk client).
//
// Message in:  { id, job: { base, credentials, kind: 'decrypt'|'get'|'post', path, items?,
//                concurrency, durationMs?, count? } }
// Message out: { id, result: { ops, seconds, opsPerSec, p50Ms, p99Ms, errors, errorSample } }
import http from 'node:http';
import Hawk from '@hapi/hawk';

const agents = new Map();
function agent(concurrency) {
  let a = agents.get(concurrency);
  if (!a) {
    a = new http.Agent({ keepAlive: true, maxSockets: concurrency });
    agents.set(concurrency, a);
  }
  return a;
}

function request(base, credentials, method, path, body, concurrency) {
  const url = new URL(path, base);
  const { header } = Hawk.client.header(url.toString(), method, { credentials });
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      {
        method,
        agent: agent(concurrency),
        headers: {
          authorization: header,
          ...(payload && { 'content-type': 'application/json', 'content-length': payload.length }),
        },
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** One request of the job; returns an error description or undefined. */
async function once(job, i) {
  if (job.kind === 'decrypt') {
    const item = job.items[i % job.items.length];
    const res = await request(job.base, job.credentials, 'POST', job.path, { keypairId: item.keypairId, body: item.body }, job.concurrency);
    if (res.status !== 200) return `${res.status} ${res.text.slice(0, 120)}`;
    if (JSON.parse(res.text).body !== item.expected) return 'wrong plaintext';
    return undefined;
  }
  const res = await request(job.base, job.credentials, job.kind === 'post' ? 'POST' : 'GET', job.path, undefined, job.concurrency);
  if (res.status !== 200) return `${res.status} ${res.text.slice(0, 120)}`;
  return undefined;
}

async function run(job) {
  const latencies = [];
  let errors = 0;
  let errorSample;
  let next = 0;
  const start = performance.now();
  const deadline = job.durationMs === undefined ? Infinity : start + job.durationMs;
  const limit = job.count ?? Infinity;
  const worker = async () => {
    while (performance.now() < deadline && next < limit) {
      const i = next++;
      const t0 = performance.now();
      let failure;
      try {
        failure = await once(job, i);
      } catch (err) {
        failure = err instanceof Error ? err.message : String(err);
      }
      latencies.push(performance.now() - t0);
      if (failure !== undefined) {
        errors += 1;
        errorSample ??= failure;
      }
    }
  };
  await Promise.all(Array.from({ length: job.concurrency }, worker));
  const seconds = (performance.now() - start) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    ops: latencies.length - errors,
    seconds,
    opsPerSec: (latencies.length - errors) / seconds,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
    errors,
    errorSample,
  };
}

process.on('message', (msg) => {
  if (msg === 'exit') {
    for (const a of agents.values()) a.destroy();
    process.disconnect();
    return;
  }
  run(msg.job).then(
    (result) => process.send({ id: msg.id, result }),
    (err) => process.send({ id: msg.id, error: err instanceof Error ? err.stack : String(err) }),
  );
});
