import { constants, createPublicKey, publicEncrypt, randomBytes, timingSafeEqual } from 'node:crypto';
import {
  HsmError,
  decodeRsaPrivateKey,
  decodeRsaPublicKey,
  encodeRsaPublicKey,
  modulusBits,
  type KeyStore,
  type RsaPrivateKeyComponents,
  type RsaPublicKey,
} from '../../hsm/index.js';
import type { KeypairRepository } from '../db/keypairs.js';
import { parseLegacyDate, type LegacyRow } from './source.js';

export type LegacyImportStatus = 'imported' | 'skipped' | 'failed';

/** What happened to one row. `reason` never carries key material. */
export interface LegacyImportOutcome {
  /** The keypair id, or `row N` when the row has no usable id. */
  id: string;
  status: LegacyImportStatus;
  reason?: string;
}

export interface LegacyImportDeps {
  keyStore: KeyStore;
  keypairs: KeypairRepository;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** A row the importer refuses; the message names the problem, never the value. */
class RowRefused extends Error {}

/** Standard base64, line breaks allowed (commons-codec chunked at 76 in old versions). */
function strictBase64(value: unknown, column: string): Buffer {
  if (typeof value !== 'string') throw new RowRefused(`${column} is missing`);
  const compact = value.replace(/[\r\n\t ]/g, '');
  if (compact === '' || !BASE64.test(compact)) throw new RowRefused(`${column} is not base64`);
  return Buffer.from(compact, 'base64');
}

function samePublicKey(a: RsaPublicKey, b: RsaPublicKey): boolean {
  return a.modulus.equals(b.modulus) && a.publicExponent.equals(b.publicExponent);
}

function wipe(key: RsaPrivateKeyComponents | undefined, der: Buffer | undefined): void {
  // Best effort: the ASN.1 parser's own copies are out of reach, ours are not.
  der?.fill(0);
  if (key) for (const part of Object.values(key)) (part as Buffer).fill(0);
}

/**
 * Prove the token decrypts PKCS#1 v1.5 with the key as well (importRsaKeyPair has already
 * round-tripped OAEP): Genesys Cloud may ask for either padding.
 */
async function checkPkcs1(keyStore: KeyStore, id: string, pub: RsaPublicKey): Promise<boolean> {
  const probe = randomBytes(32);
  const key = createPublicKey({
    key: { kty: 'RSA', n: pub.modulus.toString('base64url'), e: pub.publicExponent.toString('base64url') },
    format: 'jwk',
  });
  const ciphertext = publicEncrypt({ key, padding: constants.RSA_PKCS1_PADDING }, probe);
  try {
    const plain = await keyStore.rsaDecrypt(id, 'pkcs1', ciphertext);
    return plain.length === probe.length && timingSafeEqual(plain, probe);
  } catch (err) {
    if (err instanceof HsmError && err.code === 'HSM_ERR_DECRYPT') return false;
    throw err;
  }
}

/**
 * Move one legacy keypair into the token and the database, keeping its id and dateCreated.
 * Idempotent, and it completes a half-done earlier run: a key already in the token with no row
 * gets its row; a row whose key is missing gets its key. Anything inconsistent is refused.
 */
export async function importLegacyRow(row: LegacyRow, deps: LegacyImportDeps): Promise<LegacyImportOutcome> {
  const name = typeof row.id === 'string' && UUID.test(row.id.trim()) ? row.id.trim().toLowerCase() : `row ${row.position}`;
  let der: Buffer | undefined;
  let key: RsaPrivateKeyComponents | undefined;
  try {
    if (name.startsWith('row ')) throw new RowRefused('id is not a UUID');
    const id = name;
    const dateCreated = parseLegacyDate(row.dateCreated);
    if (!dateCreated) throw new RowRefused('date_created is not a date (epoch ms, DATETIME or ISO-8601)');
    let legacyPub: RsaPublicKey;
    try {
      legacyPub = decodeRsaPublicKey(strictBase64(row.publicKey, 'public_key'));
    } catch (err) {
      if (err instanceof RowRefused) throw err;
      throw new RowRefused('public_key is not a PKCS#1 RSAPublicKey');
    }

    const stored = await deps.keypairs.find(id);
    if (stored && (stored.state === 'deleted' || stored.state === 'generating')) {
      throw new RowRefused(`the database lists this id as ${stored.state}`);
    }
    if (stored && !stored.publicKey.equals(encodeRsaPublicKey(legacyPub))) {
      throw new RowRefused('the database already holds a different public key under this id');
    }
    const inToken = await deps.keyStore.getRsaPublicKey(id);
    if (inToken && !samePublicKey(inToken, legacyPub)) {
      throw new RowRefused('the token already holds a different key under this id');
    }
    if (stored && inToken) return { id, status: 'skipped', reason: 'already imported' };

    if (!inToken) {
      der = strictBase64(row.privateKey, 'private_key');
      try {
        key = decodeRsaPrivateKey(der);
      } catch {
        throw new RowRefused('private_key is not a PKCS#1 RSAPrivateKey');
      }
      if (!samePublicKey({ modulus: key.modulus, publicExponent: key.publicExponent }, legacyPub)) {
        throw new RowRefused('private_key does not match public_key');
      }
      try {
        await deps.keyStore.importRsaKeyPair(id, key);
      } catch (err) {
        if (err instanceof HsmError && (err.code === 'HSM_ERR_KEY_INVALID' || err.code === 'HSM_ERR_INPUT')) {
          throw new RowRefused(`the token refused the key (${err.code})`);
        }
        throw err;
      }
      wipe(key, der);
      if (!(await checkPkcs1(deps.keyStore, id, legacyPub))) {
        await deps.keyStore.deleteKeyPair(id);
        throw new RowRefused('the imported key failed its PKCS#1 v1.5 round trip and was removed');
      }
    }
    if (!stored) {
      await deps.keypairs.insert({
        id,
        publicKey: encodeRsaPublicKey(legacyPub),
        modulusBits: modulusBits(legacyPub.modulus),
        dateCreated,
        owner: null,
        origin: 'imported',
      });
    }
    return { id, status: 'imported' };
  } catch (err) {
    if (err instanceof RowRefused) return { id: name, status: 'failed', reason: err.message };
    // Token or database trouble: report it by code, carry on with the other rows.
    const code = (err as { code?: unknown }).code;
    return { id: name, status: 'failed', reason: `import failed (${typeof code === 'string' ? code : 'error'})` };
  } finally {
    wipe(key, der);
  }
}

export interface LegacyImportSummary {
  imported: number;
  skipped: number;
  failed: number;
  results: LegacyImportOutcome[];
}

/** Import every row in order; `onRow` sees each outcome as it happens (progress). */
export async function importLegacyRows(
  rows: readonly LegacyRow[],
  deps: LegacyImportDeps,
  onRow?: (outcome: LegacyImportOutcome) => void,
): Promise<LegacyImportSummary> {
  const summary: LegacyImportSummary = { imported: 0, skipped: 0, failed: 0, results: [] };
  for (const row of rows) {
    // A duplicated id meets its own first copy: identical → skipped, different → refused.
    const outcome = await importLegacyRow(row, deps);
    summary[outcome.status] += 1;
    summary.results.push(outcome);
    onRow?.(outcome);
  }
  return summary;
}
