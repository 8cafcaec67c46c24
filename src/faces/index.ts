import type { Face } from '../core/face.js';
import { lkmFace } from './lkm/face.js';

/**
 * Every face this build knows, in the order `FACES` is matched; `FACES` chooses which run. Add
 * a new face here. A function, not a constant: the config and CLI modules a face imports import
 * this module too, and a constant would be read before the faces are defined.
 */
export function knownFaces(): readonly Face[] {
  return [lkmFace];
}
