/** The floor of strongroom: PKCS#11 key custody. Framework-free by design. */
export type { CustodyCheck, KeyStore, KeyStoreStats, RsaPadding, RsaPrivateKeyComponents, RsaPublicKey, TokenDescription } from './keystore.js';
export { HsmError, type HsmErrorCode } from './errors.js';
export { openPkcs11KeyStore, Pkcs11KeyStore, type Pkcs11KeyStoreOptions } from './pkcs11-keystore.js';
export { findSoftHsmModule, SOFTHSM_CANDIDATES } from './module.js';
export { decodeRsaPrivateKey, decodeRsaPublicKey, encodeRsaPublicKey, modulusBits } from './rsa-der.js';
