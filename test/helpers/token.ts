import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { findSoftHsmModule } from '../../hsm/index.js';

export interface TestToken {
  label: string;
  pin: string;
  soPin: string;
  modulePath: string;
  /** SOFTHSM2_CONF of this test process (one token directory per process). */
  conf: string;
}

let storeDir: string | undefined;

/**
 * A token directory private to this test process. SoftHSM reads SOFTHSM2_CONF at C_Initialize
 * and scans tokens then: create every token a test needs before opening a key store.
 */
function tokenStore(): { dir: string; conf: string } {
  if (storeDir === undefined) {
    storeDir = mkdtempSync(join(tmpdir(), 'strongroom-test-token-'));
    const dir = storeDir;
    writeFileSync(
      join(dir, 'softhsm.conf'),
      `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`,
    );
    execFileSync('mkdir', ['-p', join(dir, 'tokens')]);
    process.env.SOFTHSM2_CONF = join(dir, 'softhsm.conf');
    process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  }
  return { dir: storeDir, conf: join(storeDir, 'softhsm.conf') };
}

export function softHsmModule(): string {
  const path = findSoftHsmModule();
  if (!path) throw new Error('SoftHSM2 is not installed (scripts/test.sh installs it)');
  return path;
}

/** Initialise a fresh token, as an operator would with softhsm2-util; PINs are random per run. */
export function createTestToken(label = `t-${randomBytes(6).toString('hex')}`): TestToken {
  const { conf } = tokenStore();
  const pin = randomBytes(8).toString('hex');
  const soPin = randomBytes(8).toString('hex');
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', soPin, '--pin', pin], {
    env: { ...process.env, SOFTHSM2_CONF: conf },
    stdio: 'pipe',
  });
  return { label, pin, soPin, modulePath: softHsmModule(), conf };
}
