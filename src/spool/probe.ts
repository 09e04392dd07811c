import { join } from 'node:path';
import { writeFileSynced } from '../fs/durable.js';
import { unlinkIfAny } from './locks.js';
import { PROBE_PREFIX } from './recovery.js';
import type { Spool } from './spool.js';

/** About one envelope's worth: what recording an outcome writes. */
const PROBE = Buffer.alloc(4096, '\n');

/**
 * Whether the spool can record outcomes again: still the folders the daemon locked, and the steps of an envelope update
 * (create in tmp/, write, fsync, rename into queue/), then the removal. Throws the
 * file system's error when a step fails. Recovery removes a probe a crash left.
 */
export async function probeStorage(spool: Spool): Promise<void> {
  const moved = await spool.movedFolder();
  if (moved) throw new Error(`${moved} is not the folder this daemon locked`);
  const name = `${PROBE_PREFIX}${process.pid}`;
  const [temp, target] = [join(spool.tmpDir, name), join(spool.queueDir, name)];
  try {
    await writeFileSynced(temp, target, PROBE);
  } finally {
    await Promise.all([temp, target].map((path) => unlinkIfAny(path).catch(() => undefined)));
  }
}
