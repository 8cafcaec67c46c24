import { randomBytes } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import Hawk, { type Artifacts, type Credentials } from '@hapi/hawk';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { AppError } from '../src/errors.js';

/** A Hawk credential as the server holds it. */
export interface HawkCredential {
  id: string;
  key: string;
  algorithm: 'sha1' | 'sha256';
  /** The credential has signed a query string (path+query MAC) before: refuse its path-only MACs. */
  signsQuery?: boolean;
}

/** Looks a credential up by id; undefined for unknown or revoked ids. */
export type HawkCredentialLookup = (id: string) => Promise<HawkCredential | undefined>;

/** Remembers nonces across every instance; `claim` is false when the nonce was already used. */
export interface HawkNonceStore {
  claim(hawkId: string, nonce: string, ts: number): Promise<boolean>;
}

export interface HawkAuthOptions {
  credentials: HawkCredentialLookup;
  /** Required: without it any captured header could be replayed within the skew window. */
  nonces: HawkNonceStore;
  /** Milliseconds since the epoch; injected so tests control time. */
  clock?: () => number;
  /** Host and port clients sign when a TLS proxy fronts the service (from PUBLIC_URL). */
  publicUrl?: { host: string; port: number } | undefined;
  /** Permitted clock skew either way, in seconds (Hawk's default is 60). */
  timestampSkewSec?: number;
  /**
   * Accept a MAC over the path without the query string, as the example service computes it
   * (default true). Never accepted from a credential with `signsQuery`: a relay could append a
   * query (e.g. `?decryptType=pkcs1`) that the client did not sign.
   */
  acceptPathOnlyMac?: boolean;
  /** Told after each request authenticated by a path-only MAC (for the runtime figures). */
  onPathOnlyMac?: (id: string) => void;
  /** Told when a credential without `signsQuery` authenticated a request with its query signed. */
  onSignedQuery?: (id: string) => void;
}

export interface HawkIdentity {
  id: string;
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The authenticated Hawk caller; null until (or unless) authentication succeeds. */
    hawk: HawkIdentity | null;
    /**
     * Set by hawk-failure-limit: seconds the Hawk id this request names stays over its failure
     * budget (0: not limited). A wrong MAC naming such an id is answered 429 instead of 401.
     */
    hawkIdRetryAfterSec: number;
  }
}

/** Largest nonce we store; Hawk clients send 6 characters. */
const MAX_NONCE_LENGTH = 128;

interface Verified {
  credentials: Credentials;
  artifacts: Artifacts;
}

type Decoy = Credentials & { decoy: true };
type Known = Credentials & { signsQuery: boolean };

function unauthorized(detail: string, cause?: unknown): AppError {
  return new AppError('HAWK_ERR_UNAUTHORIZED', { headers: { 'www-authenticate': 'Hawk' }, detail, cause });
}

interface Boomish {
  isBoom?: boolean;
  output?: { statusCode?: number; headers?: Record<string, string>; payload?: { attributes?: { tsm?: string } } };
  message?: string;
}

/** Hawk signals a stale timestamp by attaching a timestamp MAC (tsm) to its 401. */
function isStale(err: unknown): boolean {
  return (err as Boomish)?.output?.payload?.attributes?.tsm !== undefined;
}

/** A 5xx from Hawk is an error of our own credential lookup: pass it on untouched. */
function isLookupFailure(err: unknown): boolean {
  const boom = err as Boomish;
  return !boom?.isBoom || (boom.output?.statusCode ?? 500) >= 500;
}

/**
 * Hawk (hawk.1.header) authentication for every route of the scope it is registered in.
 * Checks, in order: header syntax, credentials, MAC (over the path with the query string,
 * then, when `acceptPathOnlyMac` and the credential never signed a query, without it),
 * timestamp within ±skew (answering `ts`/`tsm` when stale), nonce once per credential (after
 * the timestamp, so stale requests do not fill the store), then the payload hash when the
 * client sent one. Every failure is the same 401 (429 for an unverified MAC naming an id over
 * its failure budget, see hawk-failure-limit); the handler never runs.
 */
async function hawkAuth(app: FastifyInstance, opts: HawkAuthOptions): Promise<void> {
  if (typeof opts.credentials !== 'function') throw new Error('hawk-auth: a credentials lookup is required');
  if (!opts.nonces || typeof opts.nonces.claim !== 'function') {
    throw new Error('hawk-auth: a nonce store is required; without one every request could be replayed');
  }
  const skew = opts.timestampSkewSec ?? 60;
  if (!Number.isInteger(skew) || skew < 1 || skew > 600) throw new Error('hawk-auth: timestampSkewSec must be 1..600');
  const clock = opts.clock ?? Date.now;
  const acceptPathOnly = opts.acceptPathOnlyMac ?? true;
  const verified = new WeakMap<FastifyRequest, Verified>();

  // Unknown and revoked ids get a random key, so they cost a MAC like any other and fail the same way.
  const lookup = async (id: string): Promise<Credentials> => {
    const credential = await opts.credentials(id);
    if (credential) {
      const { id: known, key, algorithm } = credential;
      const value: Known = { id: known, key, algorithm, signsQuery: credential.signsQuery === true };
      return value;
    }
    const decoy: Decoy = { id, key: randomBytes(32).toString('base64'), algorithm: 'sha256', decoy: true };
    return decoy;
  };

  app.decorateRequest('hawk', null);
  app.decorateRequest('hawkIdRetryAfterSec', 0);

  // The MAC was never verified (wrong, or an unknown id): while the id is over its failure budget
  // this is a 429, so a distributed guesser learns nothing; a correct MAC is never refused by it.
  const macFailure = (request: FastifyRequest, err: AppError): AppError => {
    if (request.hawkIdRetryAfterSec <= 0 || err.code !== 'HAWK_ERR_UNAUTHORIZED') return err;
    return new AppError('HAWK_ERR_TOO_MANY_FAILURES', {
      headers: { 'retry-after': String(request.hawkIdRetryAfterSec) },
      detail: 'too many failed Hawk authentications naming this id',
      cause: err,
    });
  };

  app.addHook('onRequest', async (request) => {
    const authorization = request.headers.authorization;
    if (!authorization) throw unauthorized('no Authorization header');
    const offset = clock() - Date.now();
    const options = {
      timestampSkewSec: skew,
      localtimeOffsetMsec: offset,
      ...(opts.publicUrl ? { host: opts.publicUrl.host, port: opts.publicUrl.port } : {}),
    };
    const url = request.raw.url ?? request.url;
    const q = url.indexOf('?');
    const attempt = (resource: string) =>
      Hawk.server.authenticate(
        {
          method: request.method,
          url: resource,
          headers: request.headers,
          connection: { encrypted: Boolean((request.raw.socket as TLSSocket | undefined)?.encrypted) },
        },
        lookup,
        options,
      );

    let result: Verified;
    let pathOnly = false;
    try {
      result = await attempt(url);
    } catch (first) {
      if (isLookupFailure(first)) throw first;
      if (q < 0 || isStale(first) || !acceptPathOnly) throw macFailure(request, failure(first));
      // The example service MACs the path without its query string; standard clients include it.
      try {
        result = await attempt(url.slice(0, q));
        pathOnly = true;
      } catch (second) {
        if (isLookupFailure(second)) throw second;
        throw macFailure(request, failure(isStale(second) ? second : first));
      }
    }

    const { credentials, artifacts } = result;
    if ((credentials as Partial<Decoy>).decoy) throw macFailure(request, unauthorized('unknown or revoked credential id'));
    const signsQuery = (credentials as Partial<Known>).signsQuery === true;
    if (pathOnly && signsQuery) throw unauthorized('path-only MAC from a credential that signs its query strings');
    // Hawk compares ts numerically and lets a non-numeric ts through as never stale: refuse it.
    if (!/^\d{1,12}$/.test(artifacts.ts)) throw unauthorized('timestamp is not an integer');
    if (artifacts.nonce.length > MAX_NONCE_LENGTH) throw unauthorized('nonce too long');
    if (!(await opts.nonces.claim(artifacts.id, artifacts.nonce, Number(artifacts.ts)))) {
      throw unauthorized('nonce already used (replay)');
    }
    if (pathOnly) opts.onPathOnlyMac?.(artifacts.id);
    else if (q >= 0 && !signsQuery) opts.onSignedQuery?.(artifacts.id);
    verified.set(request, result);
    request.hawk = { id: artifacts.id };
  });

  // The body is read after onRequest: check the payload hash once it is here, if one was signed.
  app.addHook('preValidation', async (request) => {
    const result = verified.get(request);
    if (!result?.artifacts.hash) return;
    try {
      Hawk.server.authenticatePayload(
        request.rawBody ?? '',
        result.credentials,
        result.artifacts,
        request.headers['content-type'] ?? '',
      );
    } catch (err) {
      request.hawk = null;
      throw unauthorized('payload hash does not match the body', err);
    }
  });
}

function failure(err: unknown): AppError {
  if (isStale(err)) {
    const header = (err as Boomish).output?.headers?.['WWW-Authenticate'] ?? 'Hawk error="Stale timestamp"';
    return new AppError('HAWK_ERR_STALE_TIMESTAMP', { headers: { 'www-authenticate': header }, detail: 'stale timestamp' });
  }
  return unauthorized((err as Boomish)?.message ?? 'invalid Hawk header', err);
}

export default fp(hawkAuth, { name: 'hawk-auth', fastify: '5.x' });
