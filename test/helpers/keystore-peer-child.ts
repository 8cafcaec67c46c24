// A second process on the test's token directory (test/key-visibility.test.ts): SoftHSM keeps its
// object index per process, so cross-process visibility can only be seen from two processes.
// Reads one JSON command per line on stdin, answers one JSON line per command on stdout.
import { createInterface } from 'node:readline';
import { openPkcs11KeyStore } from '../../hsm/index.js';

const { modulePath, tokenLabel, pin } = JSON.parse(process.env.PEER_TOKEN ?? '{}') as {
  modulePath: string;
  tokenLabel: string;
  pin: string;
};
const store = await openPkcs11KeyStore({ modulePath, tokenLabel, pin, sessions: 2 });
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);

for await (const line of createInterface({ input: process.stdin })) {
  const cmd = JSON.parse(line) as { op: 'generate' | 'close'; id: string; bits: number };
  if (cmd.op === 'close') break;
  const pub = await store.generateRsaKeyPair(cmd.id, cmd.bits);
  process.stdout.write(`${JSON.stringify({ modulus: pub.modulus.toString('base64'), exponent: pub.publicExponent.toString('base64') })}\n`);
}
await store.close();
// stdin stays open (the parent holds it): leave explicitly.
process.exit(0);
