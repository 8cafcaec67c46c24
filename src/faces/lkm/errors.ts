import { defineCatalogue } from '../../errors.js';

/**
 * The Local Key Manager's own error codes. Messages are the LKM contract's reference texts,
 * byte for byte; the body they go out in is `{"message","status"}` (see face.ts).
 */
export const lkmErrors = defineCatalogue('lkm', {
  AUTH_ERR_INVALID_ID: {
    status: 400,
    message: 'id must be 6 to 128 printable ASCII characters, without spaces, quotes or backslashes',
  },
  AUTH_ERR_DUPLICATE_ID: { status: 400, message: 'A credential with this id already exists' },
  KEY_ERR_NOT_FOUND: { status: 400, message: 'No key pair found with the id provided' },
  KEY_ERR_DECRYPT_FIELDS: { status: 400, message: 'Decrypt body and keypairId must be filled out' },
  KEY_ERR_INVALID_KEYPAIR_ID: { status: 400, message: 'keypairId must be a UUID' },
  KEY_ERR_DECRYPT_TYPE: { status: 400, message: 'If provided, decryptType must be either "pkcs1" or null' },
  KEY_ERR_BODY_NOT_BASE64: { status: 400, message: 'Decrypt body must be standard base64' },
  KEY_ERR_CIPHERTEXT_LENGTH: { status: 400, message: 'Decrypt body has the wrong length for this key pair' },
  // Decrypt with a key that is not enabled (the admin API and CLI change the state).
  KEY_ERR_KEYPAIR_DISABLED: { status: 400, message: 'This key pair is disabled; an administrator must enable it before it can decrypt' },
  KEY_ERR_KEYPAIR_PENDING_DELETION: {
    status: 400,
    message: 'This key pair is scheduled for deletion and cannot decrypt; an administrator can cancel the deletion',
  },
  KEY_ERR_KEYPAIR_DELETED: { status: 400, message: 'This key pair has been deleted' },
});

/** A code of the LKM catalogue. */
export type LkmErrorCode = keyof typeof lkmErrors.entries;
