/*
 * A large message leaves its socket and parser buffers as garbage outside V8's heap,
 * and V8 collects them only once some 35 MB have piled up (its external-memory
 * trigger): a 50 MB message raised RSS by 35 MB. Collecting the young generation
 * (about a millisecond) after every 4 MB of DATA frees them early: +10 MB.
 * gc() exists because the CLI starts Node with --expose-gc (its #! line); without it
 * this does nothing.
 */
const collect = (globalThis as { gc?: (options: { type: 'minor' }) => void }).gc;
const STEP = 4 * 1024 * 1024;
let sinceLastCollection = 0;

/** Counts DATA bytes received (all sessions together) and collects young garbage every STEP. */
export function countDataBytes(bytes: number): void {
  sinceLastCollection += bytes;
  if (sinceLastCollection < STEP || !collect) return;
  sinceLastCollection = 0;
  collect({ type: 'minor' });
}
