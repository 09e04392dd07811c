import type { Envelope } from './envelope.js';
import { QUEUE_ID } from './queue-id.js';
import type { Spool } from './spool.js';
import { onQueuedMessage } from './transaction.js';

export type QueueEdit = 'hold' | 'release' | 'delete';

export class QueueEditError extends Error {}

/**
 * Holds, releases or deletes a queued message under its lock, so that it never
 * races a delivery. Resolves with the new envelope, or undefined once deleted.
 */
export async function editQueued(spool: Spool, id: string, edit: QueueEdit): Promise<Envelope | undefined> {
  if (!QUEUE_ID.test(id)) throw new QueueEditError(`${JSON.stringify(id)} is not a queue id`);
  const outcome = await onQueuedMessage(spool, id, (envelope) => {
    if (edit === 'delete') return { save: 'remove', value: undefined };
    envelope.held = edit === 'hold';
    if (!envelope.held) {
      delete envelope.nextAttempt; // released: due now
      delete envelope.heldReason;
    }
    return { save: 'update', value: envelope };
  });
  if (outcome.kind === 'busy') throw new QueueEditError(`${id} is being delivered right now; try again in a moment`);
  if (outcome.kind === 'gone') throw new QueueEditError(`${id}: no such message in the queue`);
  return outcome.value;
}
