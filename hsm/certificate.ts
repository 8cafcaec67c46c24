import { X509Certificate } from 'node:crypto';
import { HsmError } from './errors.js';
import type { CertificateFields } from './usage-templates.js';

interface Tlv {
  readonly tag: number;
  /** The whole element, header included. */
  readonly element: Buffer;
  readonly content: Buffer;
}

/** One DER element at `offset` (X.690 §8.1: single-byte tags, definite lengths). */
function readTlv(der: Buffer, offset: number): Tlv {
  const tag = der[offset];
  let lengthByte = der[offset + 1];
  if (tag === undefined || lengthByte === undefined) throw new RangeError('truncated DER');
  let header = 2;
  let length = lengthByte;
  if (lengthByte & 0x80) {
    const count = lengthByte & 0x7f;
    if (count === 0 || count > 3) throw new RangeError('unsupported DER length');
    length = 0;
    for (let i = 0; i < count; i += 1) {
      lengthByte = der[offset + 2 + i];
      if (lengthByte === undefined) throw new RangeError('truncated DER');
      length = length * 256 + lengthByte;
    }
    header += count;
  }
  const end = offset + header + length;
  if (end > der.length) throw new RangeError('truncated DER');
  return { tag, element: der.subarray(offset, end), content: der.subarray(offset + header, end) };
}

/** The children of a constructed element, in order. */
function children(content: Buffer): Tlv[] {
  const out: Tlv[] = [];
  for (let offset = 0; offset < content.length; ) {
    const tlv = readTlv(content, offset);
    out.push(tlv);
    offset += tlv.element.length;
  }
  return out;
}

/**
 * Parse an X.509 certificate (DER) for its PKCS#11 object: Node checks that it is a
 * certificate and reads its public key; the subject, issuer and serial number are taken as the
 * DER elements of TBSCertificate (RFC 5280 §4.1), which is what CKA_SUBJECT, CKA_ISSUER and
 * CKA_SERIAL_NUMBER hold.
 */
export function parseCertificate(der: Buffer): { fields: CertificateFields; certificate: X509Certificate } {
  let certificate: X509Certificate;
  let tbs: Tlv[];
  try {
    certificate = new X509Certificate(der);
    const outer = readTlv(der, 0);
    if (outer.element.length !== der.length) throw new RangeError('trailing bytes after the certificate');
    const [tbsTlv] = children(outer.content);
    if (tbsTlv === undefined) throw new RangeError('no TBSCertificate');
    tbs = children(tbsTlv.content);
  } catch (err) {
    throw new HsmError('HSM_ERR_INPUT', 'not a DER X.509 certificate', { cause: err });
  }
  // version is [0] EXPLICIT and optional (absent for v1 certificates).
  const rest = tbs[0]?.tag === 0xa0 ? tbs.slice(1) : tbs;
  const [serial, , issuer, , subject] = rest;
  if (serial?.tag !== 0x02 || issuer?.tag !== 0x30 || subject?.tag !== 0x30) {
    throw new HsmError('HSM_ERR_INPUT', 'certificate TBSCertificate is malformed');
  }
  return {
    certificate,
    fields: { der: Buffer.from(der), subject: Buffer.from(subject.element), issuer: Buffer.from(issuer.element), serialNumber: Buffer.from(serial.element) },
  };
}
