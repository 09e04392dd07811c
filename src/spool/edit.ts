import type { Envelope } from './envelope.js';
import { QUEUE_ID } from './queue-id.js';
import type { Spool } from './spool.js';

export type QueueEdit = 'hold' | 'release' | 'delete';

export class QueueEditError extends Error {}

/**
 * Holds, releases or deletes a queued message under its lock, so that it never
 * races a delivery. Resolves with the new envelope, or undefined once deleted.
 */
export async function editQueued(spool: Spool, id: string, edit: QueueEdit): Promise<Envelope | undefined> {
  if (!QUEUE_ID.test(id)) throw new QueueEditError(`${JSON.stringify(id)} is not a queue id`);
  if (!(await spool.lockMessage(id))) throw new QueueEditError(`${id} is being delivered right now; try again in a moment`);
  try {
    let envelope: Envelope;
    try {
      envelope = await spool.readEnvelope(id);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new QueueEditError(`${id}: no such message in the queue`);
      throw error;
    }
    if (edit === 'delete') {
      await spool.remove(id);
      return undefined;
    }
    envelope.held = edit === 'hold';
    if (!envelope.held) delete envelope.nextAttempt; // released: due now
    await spool.updateEnvelope(envelope);
    return envelope;
  } finally {
    await spool.unlockMessage(id);
  }
}
