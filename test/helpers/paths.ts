import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The compiled tree this test runs from (dist/ or any other outDir): <out>/test/helpers/paths.js. */
export const BUILD_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The built service and CLI entry points, next to this compiled test. */
export const SERVER_JS = join(BUILD_ROOT, 'src', 'server.js');
export const CLI_JS = join(BUILD_ROOT, 'src', 'cli', 'main.js');

/** The repository root (where package.json is): tests run with it as the working directory. */
export const REPO_ROOT = process.cwd();

/**
 * The shared known-answer vectors: where STRONGROOM_VECTORS points, else ../shared/vectors beside
 * the checkout. scripts/test.sh refuses to start without them; a missing directory here fails the
 * test rather than skipping it.
 */
export function vectorsDir(): string {
  const candidates = [process.env.STRONGROOM_VECTORS, resolve(REPO_ROOT, '..', 'shared', 'vectors')].filter(
    (p): p is string => typeof p === 'string' && p !== '',
  );
  const found = candidates.find((p) => existsSync(join(p, 'wycheproof')));
  if (!found) throw new Error(`known-answer vectors not found (looked in ${candidates.join(', ')}); set STRONGROOM_VECTORS`);
  return found;
}
