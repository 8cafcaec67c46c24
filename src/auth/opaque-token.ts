import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/** Random bytes in every opaque token and session id: 256 bits. */
export const TOKEN_BYTES = 32;

/** base64url of 32 bytes, unpadded: exactly 43 characters of the URL-safe alphabet. */
const TOKEN_SHAPE = /^[A-Za-z0-9_-]{43}$/;

/** A new opaque token: 256 random bits from the OS CSPRNG, base64url without padding. */
export function newOpaqueToken(): string {
  return randomBytes(TOKEN_BYTES).toString('base64url');
}

/** True when `value` has the shape of a token from {@link newOpaqueToken} (checked before any lookup). */
export function isOpaqueToken(value: unknown): value is string {
  return typeof value === 'string' && TOKEN_SHAPE.test(value);
}

/**
 * What the database keeps of a token: its SHA-256. A slow password hash is not needed here: the
 * token has 256 bits of entropy, so a stolen table cannot be searched by guessing preimages
 * (2^256 candidates), unlike a PIN or password; and an unsalted fast hash keeps verification to
 * one indexed lookup by hash.
 */
export function hashOpaqueToken(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/** Fixed-time equality of two digests; false (not an exception) when the lengths differ. */
export function digestsEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
