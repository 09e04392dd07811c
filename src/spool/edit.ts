import type { Envelope } from './envelope.js';
import { QUEUE_ID } from './queue-id.js';
import type { Spool } from './spool.js';
import { onQueuedMessage } from './transaction.js';

export type QueueEdit = 'hold' | 'release' | 'delete';

export class QueueEditError extends Error {}

type EditOutcome = { kind: 'done'; envelope: Envelope | undefined } | { kind: 'busy' } | { kind: 'gone' };

/** One edit under the message's lock, so that it never races a delivery. */
async function edit(spool: Spool, id: string, action: QueueEdit): Promise<EditOutcome> {
  if (!QUEUE_ID.test(id)) throw new QueueEditError(`${JSON.stringify(id)} is not a queue id`);
  const outcome = await onQueuedMessage(spool, id, (envelope) => {
    if (action === 'delete') return { save: 'remove', value: undefined };
    envelope.held = action === 'hold';
    if (!envelope.held) {
      delete envelope.nextAttempt; // released: due now
      delete envelope.heldReason;
    }
    return { save: 'update', value: envelope };
  });
  return outcome.kind === 'done' ? { kind: 'done', envelope: outcome.value } : outcome;
}

/** Holds, releases or deletes a queued message. Resolves with the new envelope, or undefined once deleted. */
export async function editQueued(spool: Spool, id: string, action: QueueEdit): Promise<Envelope | undefined> {
  const outcome = await edit(spool, id, action);
  if (outcome.kind === 'busy') throw new QueueEditError(`${id} is being delivered right now; try again in a moment`);
  if (outcome.kind === 'gone') throw new QueueEditError(`${id}: no such message in the queue`);
  return outcome.envelope;
}

export interface BulkEditResult {
  edited: number;
  /** Delivered or removed meanwhile. */
  gone: number;
  /** Being delivered right now: try again in a moment. */
  busy: string[];
}

/** The same edit on many messages (queue hold|release|delete with a selection), each under its lock. */
export async function editMany(
  spool: Spool,
  ids: readonly string[],
  action: QueueEdit,
  edited?: (id: string, envelope: Envelope | undefined) => void,
): Promise<BulkEditResult> {
  const result: BulkEditResult = { edited: 0, gone: 0, busy: [] };
  for (const id of ids) {
    const outcome = await edit(spool, id, action);
    if (outcome.kind === 'done') {
      result.edited++;
      edited?.(id, outcome.envelope);
    } else if (outcome.kind === 'busy') result.busy.push(id);
    else result.gone++;
  }
  return result;
}
