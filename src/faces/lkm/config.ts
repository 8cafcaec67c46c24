import { z } from 'zod';

/** The variables only the LKM reads (names unchanged from before faces: a contract). */
export const lkmConfigSchema = z.object({
  KEY_POOL_SIZE: z.coerce.number().int().min(0).max(1000).default(4),
  HAWK_FAILURE_LIMIT: z.coerce.number().int().min(1).max(100000).default(20),
  HAWK_FAILURE_WINDOW_SEC: z.coerce.number().int().min(1).max(86400).default(60),
  HAWK_ACCEPT_PATH_ONLY_MAC: z.enum(['true', 'false'], { error: 'must be true or false' }).default('true'),
});

/** The LKM's configuration section. */
export interface LkmConfig {
  /** Unassigned RSA key pairs kept generated ahead in the token (0: generate on request). */
  keyPool: { size: number };
  /** Failed Hawk authentications allowed per client address and per id within the window. */
  hawkFailures: { limit: number; windowSec: number };
  /**
   * Accept a Hawk MAC over the path without its query string (the example service's way), except
   * from a credential that has ever signed a query.
   */
  hawkAcceptPathOnlyMac: boolean;
}

/** The section from its validated variables (no rule spans them). */
export function loadLkmConfig(env: z.output<typeof lkmConfigSchema>): LkmConfig {
  return {
    keyPool: { size: env.KEY_POOL_SIZE },
    hawkFailures: { limit: env.HAWK_FAILURE_LIMIT, windowSec: env.HAWK_FAILURE_WINDOW_SEC },
    hawkAcceptPathOnlyMac: env.HAWK_ACCEPT_PATH_ONLY_MAC === 'true',
  };
}
