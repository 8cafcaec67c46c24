/** The floor of strongroom: PKCS#11 key custody. Framework-free by design. */
export type { CustodyCheck, KeyStore, KeyStoreStats, RsaPadding, RsaPrivateKeyComponents, RsaPublicKey, TokenDescription } from './keystore.js';
export { HsmError, type HsmErrorCode } from './errors.js';
export { openPkcs11KeyStore, Pkcs11KeyStore, type Pkcs11KeyStoreOptions } from './pkcs11-keystore.js';
export { findSoftHsmModule, SOFTHSM_CANDIDATES } from './module.js';
export { decodeRsaPrivateKey, decodeRsaPublicKey, encodeRsaPublicKey, modulusBits } from './rsa-der.js';
export { openPkcs11KeyStoreV2, Pkcs11KeyStoreV2, type GenerateRequest, type OperationOptions, type Pkcs11KeyStoreV2Options, type KeyForm, type KeyInfo, type KeyStoreV2, type ListFilter, type PublicKeyExport, type SchemeEngine } from './keystore-v2.js';
export { KEY_SPECS, type DecryptScheme, type DigestHash, type KeyLookup, type KeyRef, type KeySpec, type KeyUsage } from './key-spec.js';
export { type SignScheme } from './signature.js';
export { type TokenCapabilities } from './capabilities.js';
export { oaepDecode, type OaepHash } from './oaep.js';
export { DEFAULT_LANE, SessionLanes } from './session-lanes.js';
