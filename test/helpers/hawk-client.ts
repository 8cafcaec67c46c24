import Hawk from '@hapi/hawk';

export interface ClientCredential {
  id: string;
  key: string;
  algorithm: 'sha1' | 'sha256';
}

export interface HawkRequest {
  method: string;
  url: string;
  credential: ClientCredential;
  /** JSON body (sent as application/json). */
  json?: unknown;
  /** Raw body text (sent with `contentType`). */
  body?: string;
  contentType?: string;
  /** Include a payload hash in the MAC (standard Hawk clients do; Genesys Cloud does not). */
  payloadHash?: boolean;
  /** Sign the path without its query string, as the example service expects. */
  signWithoutQuery?: boolean;
  /** Sign this URL instead (e.g. the public URL in front of a proxy). */
  signUrl?: string;
  timestamp?: number;
  nonce?: string;
  headers?: Record<string, string>;
}

export interface Response {
  status: number;
  headers: Headers;
  text: string;
  json: unknown;
  /** The exact Authorization header that was sent, for replay tests. */
  authorization: string;
}

/** Hawk header from the independent reference client, @hapi/hawk. */
export function hawkHeader(r: Omit<HawkRequest, 'headers'>): string {
  const body = r.json === undefined ? r.body : JSON.stringify(r.json);
  const contentType = r.json === undefined ? r.contentType : 'application/json';
  let signUrl = r.signUrl ?? r.url;
  if (r.signWithoutQuery) {
    const u = new URL(signUrl);
    u.search = '';
    signUrl = u.toString();
  }
  const { header } = Hawk.client.header(signUrl, r.method, {
    credentials: { ...r.credential },
    ...(r.timestamp !== undefined && { timestamp: r.timestamp }),
    ...(r.nonce !== undefined && { nonce: r.nonce }),
    ...(r.payloadHash && { payload: body ?? '', contentType: contentType ?? '' }),
  });
  return header;
}

/** Send a Hawk-signed request with Node's fetch. */
export async function hawkFetch(r: HawkRequest): Promise<Response> {
  const authorization = hawkHeader(r);
  return send(r.method, r.url, { ...r, headers: { ...r.headers, authorization } });
}

export async function send(
  method: string,
  url: string,
  r: { json?: unknown; body?: string; contentType?: string; headers?: Record<string, string> } = {},
): Promise<Response> {
  const headers: Record<string, string> = { ...r.headers };
  let body: string | undefined = r.body;
  if (r.json !== undefined) {
    body = JSON.stringify(r.json);
    headers['content-type'] = 'application/json';
  } else if (r.contentType) {
    headers['content-type'] = r.contentType;
  }
  const res = await fetch(url, { method, headers, ...(body !== undefined && { body }) });
  const text = await res.text();
  let json: unknown;
  try {
    json = text === '' ? undefined : JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json, authorization: headers.authorization ?? '' };
}
