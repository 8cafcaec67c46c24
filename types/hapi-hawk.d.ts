// Minimal typings for the parts of @hapi/hawk strongroom uses (the package ships none).
declare module '@hapi/hawk' {
  export type Algorithm = 'sha1' | 'sha256';

  export interface Credentials {
    id?: string;
    key: string;
    algorithm: Algorithm;
    [extra: string]: unknown;
  }

  export interface Artifacts {
    method: string;
    host: string;
    port: number | string;
    resource: string;
    ts: string;
    nonce: string;
    hash?: string;
    ext?: string;
    app?: string;
    dlg?: string;
    mac: string;
    id: string;
  }

  export interface ServerRequest {
    method: string;
    url: string;
    headers: Record<string, string | string[] | undefined>;
    connection?: { encrypted?: boolean };
  }

  export interface AuthenticateOptions {
    timestampSkewSec?: number;
    localtimeOffsetMsec?: number;
    host?: string;
    port?: number;
    payload?: string;
    nonceFunc?: (key: string, nonce: string, ts: string) => Promise<void>;
  }

  export interface ClientHeaderOptions {
    credentials: Credentials & { id: string };
    ext?: string;
    timestamp?: number;
    nonce?: string;
    localtimeOffsetMsec?: number;
    payload?: string;
    contentType?: string;
    hash?: string;
    app?: string;
    dlg?: string;
  }

  export const server: {
    authenticate<C extends Credentials>(
      req: ServerRequest,
      credentialsFunc: (id: string) => Promise<C | null | undefined>,
      options?: AuthenticateOptions,
    ): Promise<{ credentials: C; artifacts: Artifacts }>;
    authenticatePayload(payload: string, credentials: Credentials, artifacts: Artifacts, contentType: string): void;
  };

  export const client: {
    header(
      uri: string | URL,
      method: string,
      options: ClientHeaderOptions,
    ): { header: string; artifacts: Artifacts };
  };

  export const crypto: {
    calculateMac(type: string, credentials: Credentials, options: Partial<Artifacts>): string;
    calculatePayloadHash(payload: string, algorithm: Algorithm, contentType: string): string;
    timestampMessage(credentials: Credentials, localtimeOffsetMsec?: number): { ts: number; tsm: string };
    generateNormalizedString(type: string, options: Partial<Artifacts>): string;
  };

  export const utils: {
    parseAuthorizationHeader(header: string, keys?: string[]): Record<string, string>;
  };

  const Hawk: { server: typeof server; client: typeof client; crypto: typeof crypto; utils: typeof utils };
  export default Hawk;
}
