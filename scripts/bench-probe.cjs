// Profile probe for `npm run bench -- --profile`, preloaded into the server (node --require), so
// nothing in src/ or hsm/ changes for it. On SIGUSR2 it writes cumulative counters to
// BENCH_PROBE_FILE; the bench diffs two snapshots around a phase:
// - the event loop's utilisation (perf_hooks eventLoopUtilization: active vs idle ms);
// - how long token sessions are held by decrypts: from C_DecryptInit (synchronous, on the main
//   thread) until the JavaScript continuation of C_DecryptAsync runs, summed over sessions; and
//   the main-thread time spent inside C_DecryptInit itself.
'use strict';
const { writeFileSync, renameSync } = require('node:fs');
const { performance } = require('node:perf_hooks');
const pkcs11js = require('pkcs11js');

const file = process.env.BENCH_PROBE_FILE;
if (!file) throw new Error('bench-probe: BENCH_PROBE_FILE is not set');

const started = new Map(); // session handle (hex) -> performance.now() at C_DecryptInit
let heldMs = 0;
let initMs = 0;
let decrypts = 0;
let seq = 0;

/** Wraps one instance's C_DecryptInit and C_DecryptAsync (pkcs11js defines them per instance). */
function instrument(p11) {
  const decryptInit = p11.C_DecryptInit;
  const decryptAsync = p11.C_DecryptAsync;
  p11.C_DecryptInit = function (session, ...rest) {
    const t0 = performance.now();
    try {
      return decryptInit.call(this, session, ...rest);
    } finally {
      initMs += performance.now() - t0;
      started.set(session.toString('hex'), t0);
    }
  };
  p11.C_DecryptAsync = function (session, ...rest) {
    const key = session.toString('hex');
    const settle = () => {
      const t0 = started.get(key);
      if (t0 !== undefined) {
        heldMs += performance.now() - t0;
        started.delete(key);
      }
      decrypts += 1;
    };
    return decryptAsync.call(this, session, ...rest).then(
      (v) => (settle(), v),
      (e) => {
        settle();
        throw e;
      },
    );
  };
}
const Original = pkcs11js.PKCS11;
pkcs11js.PKCS11 = class extends Original {
  constructor(...args) {
    super(...args);
    instrument(this);
  }
};

process.on('SIGUSR2', () => {
  const elu = performance.eventLoopUtilization();
  seq += 1;
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, JSON.stringify({ seq, now: performance.now(), eluActiveMs: elu.active, eluIdleMs: elu.idle, heldMs, initMs, decrypts }));
  renameSync(tmp, file);
});
