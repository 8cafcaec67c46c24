// Helpers for the tests that spawn the built service and CLI as real processes, and for the
// TLS material those tests (and the config tests) generate with the openssl CLI at run time.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequestRaw } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createSecureContext } from 'node:tls';
import type { TestToken } from './token.js';

interface TestLike {
  teardown(fn: () => unknown): void;
}

/** A private temporary directory, removed when the test ends. */
export function tempDir(t: TestLike, prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `strongroom-${prefix}-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Write a secret the way an operator would: a file only its owner can read. */
export function writeSecretFile(dir: string, name: string, content: string): string {
  const path = join(dir, name);
  writeFileSync(path, content, { mode: 0o600 });
  return path;
}

export interface PemPair {
  certPath: string;
  keyPath: string;
  cert: Buffer;
  key: Buffer;
}

/** A self-signed certificate for CN/SAN 127.0.0.1 and its unencrypted key, made by the openssl CLI. */
export function makeCertificate(dir: string, name: string, kind: 'rsa' | 'ec' = 'ec'): PemPair {
  const certPath = join(dir, `${name}.cert.pem`);
  const keyPath = join(dir, `${name}.key.pem`);
  const keyArgs = kind === 'rsa' ? ['-newkey', 'rsa:2048'] : ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'];
  execFileSync(
    'openssl',
    ['req', '-x509', ...keyArgs, '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '2',
      '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'],
    { stdio: 'pipe' },
  );
  return { certPath, keyPath, cert: readFileSync(certPath), key: readFileSync(keyPath) };
}

/**
 * A PKCS#12 file of `pem` protected by `passphrase`. OpenSSL 3 writes AES/PBKDF2 by default;
 * `-legacy` is used only when this Node cannot open that.
 */
export function makePfx(dir: string, name: string, pem: PemPair, passphrase: string): string {
  const path = join(dir, `${name}.pfx`);
  const build = (legacy: boolean) =>
    execFileSync(
      'openssl',
      ['pkcs12', '-export', ...(legacy ? ['-legacy'] : []), '-in', pem.certPath, '-inkey', pem.keyPath,
        '-out', path, '-passout', 'env:STRONGROOM_TEST_PFX_PASS'],
      { stdio: 'pipe', env: { ...process.env, STRONGROOM_TEST_PFX_PASS: passphrase } },
    );
  build(false);
  try {
    createSecureContext({ pfx: readFileSync(path), passphrase });
  } catch {
    build(true);
    createSecureContext({ pfx: readFileSync(path), passphrase });
  }
  return path;
}

/** A port nobody listens on right now: bind port 0, read it, release it. */
export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Proc {
  child: ChildProcess;
  pid: number;
  stdout(): string;
  stderr(): string;
  /** stdout and stderr together, for "no secret anywhere" checks. */
  output(): string;
  exited(): boolean;
  exit: Promise<Exit>;
}

/** The environment a spawned process starts from: nothing of ours (no DATABASE_URL, no SOFTHSM2_CONF). */
export function baseEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of ['PATH', 'HOME', 'LANG', 'TZ']) {
    const value = process.env[name];
    if (value !== undefined) env[name] = value;
  }
  return env;
}

/**
 * Spawn `node <script> ...args` with exactly `env`. The process is SIGKILLed when the test ends
 * (or when this test process exits), whatever happened in between.
 */
export function spawnNode(t: TestLike, script: string, args: string[], env: Record<string, string>): Proc {
  const child = spawn(process.execPath, ['--enable-source-maps', script, ...args], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  let done = false;
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (err += chunk));
  const exit = new Promise<Exit>((resolveExit) => {
    child.once('close', (code, signal) => {
      done = true;
      resolveExit({ code, signal });
    });
    child.once('error', () => {
      done = true;
      resolveExit({ code: null, signal: null });
    });
  });
  const killNow = () => {
    if (!done) child.kill('SIGKILL');
  };
  process.once('exit', killNow);
  t.teardown(async () => {
    killNow();
    await exit;
    process.removeListener('exit', killNow);
  });
  return {
    child,
    pid: child.pid ?? -1,
    stdout: () => out,
    stderr: () => err,
    output: () => `${out}\n${err}`,
    exited: () => done,
    exit,
  };
}

/** The exit of `proc`, or an error if it takes longer than `ms`. */
export async function waitExit(proc: Proc, ms: number): Promise<Exit> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`process ${proc.pid} did not exit within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([proc.exit, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export interface PlainResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: unknown;
}

/** One HTTPS request trusting only `ca` (our self-signed test certificate). */
export function httpsRequest(
  url: string,
  r: { method?: string; headers?: Record<string, string>; json?: unknown; ca: Buffer },
): Promise<PlainResponse> {
  const body = r.json === undefined ? undefined : JSON.stringify(r.json);
  const headers: Record<string, string> = { ...r.headers };
  if (body !== undefined) headers['content-type'] = 'application/json';
  return new Promise((resolveRes, reject) => {
    const req = httpsRequestRaw(url, { method: r.method ?? 'GET', headers, ca: r.ca, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => {
        let json: unknown;
        try {
          json = text === '' ? undefined : JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolveRes({ status: res.statusCode ?? 0, headers: res.headers, text, json });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * Poll GET /key-management/v1/health until it answers 200 "OK". Fails early, with the process's
 * stderr, if the process exits first.
 */
export async function waitForHealth(proc: Proc, origin: string, ms = 60_000, ca?: Buffer): Promise<void> {
  const url = `${origin}/key-management/v1/health`;
  const deadline = Date.now() + ms;
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (proc.exited()) {
      const { code, signal } = await proc.exit;
      throw new Error(`the service exited (code ${code}, signal ${signal}) before it was healthy:\n${proc.stderr()}`);
    }
    try {
      const res = ca ? await httpsRequest(url, { ca }) : await fetch(url).then(async (r) => ({ status: r.status, text: await r.text() }));
      if (res.status === 200 && res.text === 'OK') return;
      last = `${res.status} ${res.text}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(200);
  }
  throw new Error(`the service was not healthy within ${ms} ms (last: ${last}):\n${proc.stderr()}`);
}

/** The token variables a spawned service or CLI needs; the PIN comes from a 0600 file. */
export function tokenEnv(token: TestToken, pinFile: string): Record<string, string> {
  return {
    SOFTHSM2_CONF: token.conf,
    PKCS11_MODULE: token.modulePath,
    PKCS11_TOKEN_LABEL: token.label,
    PKCS11_PIN_FILE: pinFile,
  };
}

/**
 * What every spawned service gets unless the test's env says otherwise: no background key pool
 * (KEY_POOL_SIZE=0), whose RSA generations would take the CPU the other tests are timed on.
 * Tests about the pool set KEY_POOL_SIZE themselves. Kept out of baseEnv, which holds nothing of ours.
 */
export const SERVICE_TEST_DEFAULTS: Readonly<Record<string, string>> = { KEY_POOL_SIZE: '0' };

/** Spawn the service (SERVICE_TEST_DEFAULTS under `env`) and wait until it is healthy. */
export async function startService(
  t: TestLike,
  serverJs: string,
  env: Record<string, string>,
  options: { ca?: Buffer; ms?: number } = {},
): Promise<{ proc: Proc; origin: string; port: number }> {
  const port = await freePort();
  const proc = spawnNode(t, serverJs, [], { ...SERVICE_TEST_DEFAULTS, ...env, PORT: String(port), HOST: '127.0.0.1' });
  const origin = `${options.ca ? 'https' : 'http'}://127.0.0.1:${port}`;
  await waitForHealth(proc, origin, options.ms ?? 60_000, options.ca);
  return { proc, origin, port };
}
