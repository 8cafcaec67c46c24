/**
 * The core error catalogue: the errors every face shares (request, key store, database, audit,
 * service, admin API, Hawk), each with a stable code, its HTTP status and its public message.
 * A face adds its own codes with `defineCatalogue` (src/faces/<face>/errors.ts) and formats
 * every error body its own way (see plugins/error-handler.ts `useErrorHandler`).
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

  // Key lifecycle (admin API, CLI) and what the key store's refusals map to.
  KEY_ERR_KEYPAIR_NOT_FOUND: { status: 404, message: 'No key pair found with the id provided' },
  // Every token refusal (padding, wrong key, value out of range) maps here: no padding oracle.
  KEY_ERR_DECRYPT_FAILED: { status: 400, message: 'Decryption failed' },
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

/** A code of the core catalogue. */
export type ErrorCode = keyof typeof catalogue;

/** One catalogue entry: what the caller sees. */
export interface CatalogueEntry {
  readonly status: number;
  readonly message: string;
}

declare const faceCode: unique symbol;
/** A code of a face's catalogue: only `defineCatalogue` makes one. */
export type FaceErrorCode = string & { readonly [faceCode]: true };

/** Every code of every catalogue defined so far: one code means one thing across all faces. */
const entries = new Map<string, CatalogueEntry & { owner: string }>(
  Object.entries(catalogue).map(([code, entry]) => [code, { ...entry, owner: 'core' }]),
);

/** The entry of a code from any catalogue (core or a face's), if one defines it. */
export function catalogueEntry(code: string): CatalogueEntry | undefined {
  const entry = entries.get(code);
  return entry && { status: entry.status, message: entry.message };
}

export interface AppErrorOptions {
  /** Replaces the catalogue message (same code, same status), e.g. to name a parameter. */
  message?: string;
  /** Extra response headers (WWW-Authenticate, Retry-After). */
  headers?: Record<string, string>;
  /** For the server log only: why, in words safe to log (never secrets, never request bodies). */
  detail?: string;
  cause?: unknown;
}

/** An error a caller may see: status and message come from the catalogue that defines its code. */
export class AppError extends Error {
  readonly code: ErrorCode | FaceErrorCode;
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly detail: string | undefined;

  constructor(code: ErrorCode | FaceErrorCode, options: AppErrorOptions = {}) {
    const entry = entries.get(code);
    if (!entry) throw new TypeError(`no catalogue defines the error code ${code}`);
    super(options.message ?? entry.message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'AppError';
    this.code = code;
    this.status = entry.status;
    this.headers = options.headers ?? {};
    this.detail = options.detail;
  }
}

/** A face's catalogue: its entries, and the constructor of its errors. */
export interface FaceCatalogue<K extends string> {
  readonly owner: string;
  readonly entries: Readonly<Record<K, CatalogueEntry>>;
  /** An AppError with one of this catalogue's codes. */
  error(code: K, options?: AppErrorOptions): AppError;
}

/**
 * Define a face's error codes beside the core ones. A code already defined (by the core or
 * another face) is refused when the module loads: a code names one error everywhere, in the
 * `strongroom-error-code` header, the logs and the audit.
 */
export function defineCatalogue<K extends string>(owner: string, defined: Record<K, CatalogueEntry>): FaceCatalogue<K> {
  for (const [code, entry] of Object.entries<CatalogueEntry>(defined)) {
    const existing = entries.get(code);
    if (existing && existing.owner !== owner) throw new TypeError(`error code ${code} of ${owner} is already defined by ${existing.owner}`);
    entries.set(code, { status: entry.status, message: entry.message, owner });
  }
  return {
    owner,
    entries: Object.freeze({ ...defined }),
    error: (code, options) => new AppError(code as unknown as FaceErrorCode, options),
  };
}

/** Response header carrying the stable code, for operators and clients that want more than the status. */
export const ERROR_CODE_HEADER = 'strongroom-error-code';
