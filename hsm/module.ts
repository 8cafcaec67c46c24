import { existsSync } from 'node:fs';
import pkcs11js from 'pkcs11js';
import type * as P11 from 'pkcs11js';
import { HsmError, ckrName, ckrOf } from './errors.js';

/** Where Debian, Ubuntu, Fedora, Alpine and Homebrew put SoftHSM2. */
export const SOFTHSM_CANDIDATES = [
  '/usr/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib64/pkcs11/libsofthsm2.so',
  '/usr/lib/pkcs11/libsofthsm2.so',
  '/usr/local/lib/softhsm/libsofthsm2.so',
  '/opt/homebrew/lib/softhsm/libsofthsm2.so',
];

/** The first SoftHSM2 library found on this machine, or undefined. */
export function findSoftHsmModule(candidates: readonly string[] = SOFTHSM_CANDIDATES): string | undefined {
  return candidates.find((path) => existsSync(path));
}

export interface LoadedModule {
  readonly pkcs11: P11.PKCS11;
  readonly path: string;
  /** Drop this holder's reference; the last one finalises the library. */
  release(): void;
  /**
   * C_Finalize then C_Initialize, so the library reads its token state afresh (SoftHSM's file
   * store re-reads every object). Every session and object handle of the old state is invalid
   * afterwards. Only the sole holder may do it, and only with no operation running (finalising
   * under a running operation crashed the process): false, without touching the library, when
   * another holder shares it.
   */
  reinitialize(): boolean;
  /** Whether `reinitialize` may run now: this is the library's only holder in the process. */
  readonly sole: boolean;
}

interface Entry {
  pkcs11: P11.PKCS11;
  refs: number;
  libraryParameters: string | undefined;
}

function initialize(pkcs11: P11.PKCS11, libraryParameters: string | undefined): void {
  pkcs11.C_Initialize(
    libraryParameters === undefined
      ? { flags: pkcs11js.CKF_OS_LOCKING_OK }
      : { flags: pkcs11js.CKF_OS_LOCKING_OK, libraryParameters },
  );
}

/*
 * Cryptoki state is per process, not per handle: a second C_Initialize of the same library
 * answers CKR_CRYPTOKI_ALREADY_INITIALIZED and one C_Finalize ends it for everyone. So loaded
 * modules are reference-counted here, and only the last release finalises.
 */
const loaded = new Map<string, Entry>();

/**
 * Load and initialise a PKCS#11 library with CKF_OS_LOCKING_OK. Without that flag, concurrent
 * operations from libuv's thread pool hung SoftHSM (measured on these machines).
 */
export function loadModule(path: string, libraryParameters?: string): LoadedModule {
  let entry = loaded.get(path);
  if (!entry) {
    const pkcs11 = new pkcs11js.PKCS11();
    try {
      pkcs11.load(path);
    } catch (err) {
      throw new HsmError('HSM_ERR_MODULE', `cannot load PKCS#11 module ${path}`, { cause: err });
    }
    try {
      initialize(pkcs11, libraryParameters);
    } catch (err) {
      const code = ckrOf(err);
      if (code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        pkcs11.close();
        throw new HsmError('HSM_ERR_MODULE', `C_Initialize failed for ${path}`, {
          cause: err,
          ckr: code === undefined ? undefined : ckrName(code),
        });
      }
    }
    entry = { pkcs11, refs: 0, libraryParameters };
    loaded.set(path, entry);
  }
  entry.refs += 1;
  const held = entry;
  let released = false;
  return {
    pkcs11: held.pkcs11,
    path,
    release() {
      if (released) return;
      released = true;
      held.refs -= 1;
      if (held.refs > 0) return;
      loaded.delete(path);
      try {
        held.pkcs11.C_Finalize();
      } finally {
        held.pkcs11.close();
      }
    },
    get sole() {
      return !released && held.refs === 1;
    },
    reinitialize() {
      if (released || held.refs !== 1) return false;
      try {
        held.pkcs11.C_Finalize();
      } catch (err) {
        // Left finalised by an earlier refresh whose C_Initialize failed: initialise again.
        if (ckrOf(err) !== pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED) throw err;
      }
      try {
        initialize(held.pkcs11, held.libraryParameters);
      } catch (err) {
        const code = ckrOf(err);
        throw new HsmError('HSM_ERR_UNAVAILABLE', 'C_Initialize failed while refreshing the token state', {
          cause: err,
          ckr: code === undefined ? undefined : ckrName(code),
        });
      }
      return true;
    },
  };
}

/**
 * The slot of the one initialised token labelled `label`. SoftHSM gives a token a random-looking
 * slot id when it is initialised, so tokens are chosen by label, and a label must be unique.
 */
export function findTokenSlot(pkcs11: P11.PKCS11, label: string): P11.Handle {
  const seen: string[] = [];
  const matches: P11.Handle[] = [];
  for (const slot of pkcs11.C_GetSlotList(true)) {
    const info = pkcs11.C_GetTokenInfo(slot);
    if ((info.flags & pkcs11js.CKF_TOKEN_INITIALIZED) === 0) continue;
    const tokenLabel = info.label.trim();
    seen.push(tokenLabel);
    if (tokenLabel === label) matches.push(slot);
  }
  if (matches.length === 1) return matches[0] as P11.Handle;
  if (matches.length > 1) {
    throw new HsmError('HSM_ERR_TOKEN_NOT_FOUND', `${matches.length} tokens are labelled "${label}"; labels must be unique`);
  }
  const list = seen.length === 0 ? 'no initialised tokens' : `tokens present: ${seen.map((l) => `"${l}"`).join(', ')}`;
  throw new HsmError('HSM_ERR_TOKEN_NOT_FOUND', `no token labelled "${label}" (${list})`);
}
