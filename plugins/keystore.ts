import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { openPkcs11KeyStore, type KeyStore, type Pkcs11KeyStoreOptions } from '../hsm/index.js';

declare module 'fastify' {
  interface FastifyInstance {
    keyStore: KeyStore;
  }
}

export interface KeyStorePluginOptions {
  /** Open this token (the app owns it and closes it in onClose)... */
  pkcs11?: Pkcs11KeyStoreOptions;
  /** ...or use a key store the caller owns and closes. */
  keyStore?: KeyStore;
}

/** Decorates the app with its KeyStore: initialise → log in → sessions, and close on shutdown. */
async function keyStorePlugin(app: FastifyInstance, opts: KeyStorePluginOptions): Promise<void> {
  let keyStore = opts.keyStore;
  if (!keyStore) {
    if (!opts.pkcs11) throw new Error('keystore: give either pkcs11 options or a keyStore');
    const owned = await openPkcs11KeyStore(opts.pkcs11);
    app.addHook('onClose', async () => owned.close());
    keyStore = owned;
    app.log.info({ token: owned.token.label, serial: owned.token.serialNumber, sessions: opts.pkcs11.sessions }, 'token opened');
  }
  app.decorate('keyStore', keyStore);
}

export default fp(keyStorePlugin, { name: 'keystore', fastify: '5.x' });
