// Helpers for the operator-command tests: legacy key pairs in the example service's format made
// by the openssl CLI, a MariaDB database per run, and certificates with chosen validity periods.
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import mysql from 'mysql2/promise';

const run = promisify(execFile);

interface TestLike {
  teardown(fn: () => unknown): void;
}

/** A key pair exactly as the example service stores it (base64 of PKCS#1 DER, both halves). */
export interface LegacyKey {
  id: string;
  /** base64 PKCS#1 RSAPrivateKey DER: the secret that must never appear in any output. */
  privateKey: string;
  /** base64 PKCS#1 RSAPublicKey DER (no algorithm OID). */
  publicKey: string;
}

/** Generate an RSA-3072 key with `openssl genrsa` and convert it as the example's BouncyCastle code does. */
export async function makeLegacyKey(dir: string): Promise<LegacyKey> {
  const id = randomUUID();
  const pem = join(dir, `${id}.pem`);
  await run('openssl', ['genrsa', '-out', pem, '3072']);
  const priv = await run('openssl', ['rsa', '-in', pem, '-traditional', '-outform', 'DER'], { encoding: 'buffer' });
  const pub = await run('openssl', ['rsa', '-in', pem, '-RSAPublicKey_out', '-outform', 'DER'], { encoding: 'buffer' });
  writeFileSync(pem, randomBytes(64));
  return { id, privateKey: priv.stdout.toString('base64'), publicKey: pub.stdout.toString('base64') };
}

export interface LegacyMysql {
  /** mysql://root@127.0.0.1:3306/<db> */
  url: string;
  name: string;
  connection: mysql.Connection;
}

/**
 * A fresh MariaDB database (dropped when the test ends) with the example service's `keypair`
 * table as Hibernate creates it on MySQL.
 */
export async function createLegacyMysql(t: TestLike): Promise<LegacyMysql> {
  const name = `sr_legacy_${process.pid}_${randomBytes(4).toString('hex')}`;
  const connection = await mysql.createConnection({ host: '127.0.0.1', port: 3306, user: 'root', password: '' });
  await connection.query(`CREATE DATABASE ${name}`);
  t.teardown(async () => {
    await connection.query(`DROP DATABASE IF EXISTS ${name}`).catch(() => undefined);
    await connection.end();
  });
  await connection.query(`USE ${name}`);
  await connection.query(`CREATE TABLE keypair (
    id varchar(255) NOT NULL PRIMARY KEY,
    date_created datetime(6),
    private_key longtext,
    public_key longtext
  )`);
  return { url: `mysql://root@127.0.0.1:3306/${name}`, name, connection };
}

/**
 * A self-signed certificate (CN/SAN 127.0.0.1) valid from `start` to `end` (`openssl ca -selfsign`,
 * the one OpenSSL 3.0 command that accepts both dates), and its key.
 */
export function makeCertificateValidity(dir: string, name: string, start: Date, end: Date): { certPath: string; keyPath: string } {
  const keyPath = join(dir, `${name}.key.pem`);
  const certPath = join(dir, `${name}.cert.pem`);
  const csr = join(dir, `${name}.csr`);
  const db = join(dir, `${name}.index`);
  const serial = join(dir, `${name}.serial`);
  const conf = join(dir, `${name}.cnf`);
  writeFileSync(db, '');
  writeFileSync(serial, `${randomBytes(8).toString('hex')}\n`);
  writeFileSync(
    conf,
    `[ca]\ndefault_ca = d\n[d]\ndatabase = ${db}\nnew_certs_dir = ${dir}\nserial = ${serial}\ndefault_md = sha256\npolicy = p\n` +
      'copy_extensions = copy\n[p]\ncommonName = supplied\n',
  );
  const stamp = (d: Date) => `${d.toISOString().replace(/[-:T]/g, '').slice(0, 14)}Z`;
  execFileSync('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyPath,
    '-out', csr, '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'pipe' });
  execFileSync('openssl', ['ca', '-batch', '-config', conf, '-selfsign', '-keyfile', keyPath, '-in', csr, '-out', certPath,
    '-startdate', stamp(start), '-enddate', stamp(end), '-notext'], { stdio: 'pipe' });
  readFileSync(certPath);
  return { certPath, keyPath };
}
