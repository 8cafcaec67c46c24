/**
 * Service entry for `npm start` and scripts/start.sh: sizes libuv's thread pool, then loads the
 * server. libuv reads UV_THREADPOOL_SIZE once, when the pool first starts, and loading ES modules
 * already starts it: set in server.ts it would be too late, so this one file is CommonJS.
 * Every PKCS#11 operation runs on that pool (pkcs11js async calls), one per session at a time;
 * the rest (key generation in the pool refill, fs, DNS) gets a few threads of its own, so a
 * refill never takes a thread a decrypt is waiting for. An explicit UV_THREADPOOL_SIZE wins.
 */
const sessions = Number.parseInt(process.env.PKCS11_SESSIONS ?? '', 10);
if (!process.env.UV_THREADPOOL_SIZE) {
  process.env.UV_THREADPOOL_SIZE = String((Number.isInteger(sessions) && sessions > 0 ? sessions : 4) + 4);
}
void import('./server.js');
