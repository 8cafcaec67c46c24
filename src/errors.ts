/**
 * The error catalogue: every error a caller can see, with a stable code, its HTTP status and
 * its public message. One handler (plugins/error-handler.ts) turns these into responses.
 * Reference messages of the Local Key Manager contract are kept verbatim.
 */
export const catalogue = {
  // Hawk: one answer for every failure (unknown id, bad MAC, replay, bad header), so ids cannot be probed.
  HAWK_ERR_UNAUTHORIZED: { status: 401, message: 'Hawk authentication failed' },
  HAWK_ERR_STALE_TIMESTAMP: { status: 401, message: 'Stale timestamp' },
  // Too many failed Hawk authentications from this address (or naming this id): see plugins/hawk-failure-limit.ts.
  HAWK_ERR_TOO_MANY_FAILURES: { status: 429, message: 'Too many failed authentication attempts; retry later' },

  ADMIN_ERR_UNAUTHORIZED: { status: 401, message: 'A valid admin bearer token is required' },
  // Too many wrong admin tokens from this address: see plugins/admin-auth.ts.
  ADMIN_ERR_TOO_MANY_FAILURES: { status: 429, message: 'Too many failed authentication attempts; retry later' },
  ADMIN_ERR_DISABLED: {
    status: 403,
    message:
      'Credential registration over HTTP is disabled because ADMIN_TOKEN is not configured; ' +
      'run `strongroom auth register <id>` on the server instead',
  },

  AUTH_ERR_INVALID_ID: {
    status: 400,
    message: 'id must be 6 to 128 printable ASCII characters, without spaces, quotes or backslashes',
  },
  AUTH_ERR_DUPLICATE_ID: { status: 400, message: 'A credential with this id already exists' },

  KEY_ERR_NOT_FOUND: { status: 400, message: 'No key pair found with the id provided' },
  KEY_ERR_KEYPAIR_NOT_FOUND: { status: 404, message: 'No key pair found with the id provided' },
  KEY_ERR_DECRYPT_FIELDS: { status: 400, message: 'Decrypt body and keypairId must be filled out' },
  KEY_ERR_INVALID_KEYPAIR_ID: { status: 400, message: 'keypairId must be a UUID' },
  KEY_ERR_DECRYPT_TYPE: { status: 400, message: 'If provided, decryptType must be either "pkcs1" or null' },
  KEY_ERR_BODY_NOT_BASE64: { status: 400, message: 'Decrypt body must be standard base64' },
  KEY_ERR_CIPHERTEXT_LENGTH: { status: 400, message: 'Decrypt body has the wrong length for this key pair' },
  // Every token refusal (padding, wrong key, value out of range) maps here: no padding oracle.
  KEY_ERR_DECRYPT_FAILED: { status: 400, message: 'Decryption failed' },
  // Key lifecycle (admin API, CLI, and decrypt with a key that is not enabled).
  KEY_ERR_KEYPAIR_DISABLED: { status: 400, message: 'This key pair is disabled; an administrator must enable it before it can decrypt' },
  KEY_ERR_KEYPAIR_PENDING_DELETION: {
    status: 400,
    message: 'This key pair is scheduled for deletion and cannot decrypt; an administrator can cancel the deletion',
  },
  KEY_ERR_KEYPAIR_DELETED: { status: 400, message: 'This key pair has been deleted' },
  KEY_ERR_INVALID_STATE: { status: 409, message: 'The key pair is not in a state that allows this change' },
  KEY_ERR_DELETION_DAYS: { status: 400, message: 'days must be an integer from 7 to 30' },

  REQ_ERR_MALFORMED_JSON: { status: 400, message: 'Request body is not valid JSON' },
  REQ_ERR_BODY_NOT_OBJECT: { status: 400, message: 'Request body must be a JSON object' },
  REQ_ERR_BAD_QUERY: { status: 400, message: 'Invalid query parameter' },
  REQ_ERR_NOT_FOUND: { status: 404, message: 'Not Found' },
  REQ_ERR_BODY_TOO_LARGE: { status: 413, message: 'Request body is too large' },
  REQ_ERR_UNSUPPORTED_MEDIA_TYPE: { status: 415, message: 'Content-Type must be application/json' },
  REQ_ERR_BAD_REQUEST: { status: 400, message: 'Bad request' },
  // Two Authorization or two Host headers: a proxy keeping the other one would disagree with us.
  REQ_ERR_AMBIGUOUS_REQUEST: { status: 400, message: 'Request has more than one Authorization or Host header' },
  // Node's HTTP parser refused the request head (plugins/request-guard.ts answers for it).
  REQ_ERR_HEADERS_TOO_LARGE: { status: 431, message: 'Request headers are too large' },
  REQ_ERR_TIMEOUT: { status: 408, message: 'Request timed out' },
  // TRUST_PROXY is set and the forwarded client address is not an IP address.
  REQ_ERR_BAD_CLIENT_ADDRESS: { status: 400, message: 'X-Forwarded-For does not name a client IP address' },

  HSM_ERR_UNAVAILABLE: { status: 503, message: 'The key store is temporarily unavailable' },
  // Every token session stayed busy for PKCS11_SESSION_WAIT_MS: overloaded, not broken.
  HSM_ERR_BUSY: { status: 503, message: 'The key store is busy; retry shortly' },
  // The database lists the keypair but the token has not shown this instance its key (yet): a
  // key another instance just created, confirmed absent by a token refresh. See the README.
  KEY_ERR_NOT_YET_VISIBLE: { status: 503, message: 'The key pair is not yet available here; retry shortly' },
  // The token holds two keys under one keypair id, or a key that failed its consistency check.
  HSM_ERR_KEY_INCONSISTENT: { status: 500, message: 'The key store holds an inconsistent key; an operator must resolve it' },
  // Any other fault the key store reported (details only in the server log).
  HSM_ERR_FAULT: { status: 500, message: 'The key store reported a fault' },
  // No answer within REQUEST_TIMEOUT_MS (Fastify's handlerTimeout): our delay, not the client's.
  SERVICE_ERR_TIMEOUT: { status: 503, message: 'The request took too long; retry it' },
  // A key asked for an operation its usage forbids (a decrypt key to sign, or the other way round).
  KEY_ERR_WRONG_USAGE: { status: 400, message: 'This key may not be used for this operation' },
  DB_ERR_UNAVAILABLE: { status: 503, message: 'The database is temporarily unavailable' },
  // Vault's rule: a request that cannot be audited (database and spool both failing) is refused.
  AUDIT_ERR_UNAVAILABLE: { status: 503, message: 'The audit log is temporarily unavailable' },
  // A request that arrives after shutdown began (plugins/shutdown.ts): retry, another instance may answer.
  SERVICE_ERR_SHUTTING_DOWN: { status: 503, message: 'The service is shutting down; retry the request' },
  INTERNAL_ERROR: { status: 500, message: 'Internal Server Error' },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof catalogue;

export interface AppErrorOptions {
  /** Replaces the catalogue message (same code, same status), e.g. to name a parameter. */
  message?: string;
  /** Extra response headers (WWW-Authenticate, Retry-After). */
  headers?: Record<string, string>;
  /** For the server log only: why, in words safe to log (never secrets, never request bodies). */
  detail?: string;
  cause?: unknown;
}

/** An error a caller may see: status and message come from the catalogue. */
export class AppError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly detail: string | undefined;

  constructor(code: ErrorCode, options: AppErrorOptions = {}) {
    super(options.message ?? catalogue[code].message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'AppError';
    this.code = code;
    this.status = catalogue[code].status;
    this.headers = options.headers ?? {};
    this.detail = options.detail;
  }
}

/** Response header carrying the stable code, for operators and clients that want more than the status. */
export const ERROR_CODE_HEADER = 'strongroom-error-code';
