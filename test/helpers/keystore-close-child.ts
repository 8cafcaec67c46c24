// Child process of test/keystore.test.ts: close the last key store of the process while decrypts
// are still running on libuv's thread pool. Run apart so a native crash (SIGSEGV) fails one
// assertion in the parent instead of killing the whole test file. Prints one JSON line.
import { randomBytes, randomUUID } from 'node:crypto';
import { HsmError, openPkcs11KeyStore } from '../../hsm/index.js';
import { nodeEncrypt } from './keystore-util.js';
import { createTestToken } from './token.js';

const ROUNDS = 6;
const IN_FLIGHT = 40;

const token = createTestToken();
const options = { modulePath: token.modulePath, tokenLabel: token.label, pin: token.pin, sessions: 4 };
const keyId = randomUUID();
const setup = await openPkcs11KeyStore(options);
const pub = await setup.generateRsaKeyPair(keyId, 2048);
await setup.close();

let ok = 0;
let unavailable = 0;
const other: string[] = [];
const sessionsOpenAfter: number[] = [];
for (let round = 0; round < ROUNDS; round += 1) {
  const messages = Array.from({ length: IN_FLIGHT }, () => randomBytes(16));
  const ciphertexts = messages.map((m) => nodeEncrypt(pub, 'oaep-sha1', m));
  // The last store of the process: its close() releases (finalises) the module.
  const store = await openPkcs11KeyStore(options);
  const settled = ciphertexts.map((c, i) =>
    store.rsaDecrypt(keyId, 'oaep-sha1', c).then(
      (plain) => {
        if (plain.equals(messages[i] as Buffer)) ok += 1;
        else other.push('wrong plaintext');
      },
      (err: unknown) => {
        if (err instanceof HsmError && err.code === 'HSM_ERR_UNAVAILABLE') unavailable += 1;
        else other.push(err instanceof HsmError ? err.code : String(err));
      },
    ),
  );
  await new Promise((resolve) => setTimeout(resolve, 3));
  await store.close();
  await Promise.all(settled);
  sessionsOpenAfter.push(store.stats().sessionsOpen);
}
process.stdout.write(`${JSON.stringify({ rounds: ROUNDS, ok, unavailable, other, sessionsOpenAfter })}\n`);
