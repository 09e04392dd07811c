import type { Envelope } from './envelope.js';
import type { Spool } from './spool.js';

/** What a change decides about the message it was given: how to store it, and what to report. */
export interface Change<T> {
  save: 'update' | 'remove' | 'none';
  value: T;
}

/** busy: another process (or job) holds the message; gone: it is not in the queue (ENOENT only). */
export type QueuedOutcome<T> = { kind: 'busy' } | { kind: 'gone' } | { kind: 'done'; value: T };

/**
 * One transaction on a queued message: lock, read, change, save, unlock. Every writer
 * of queued messages (the relay, `queue hold|release|delete`) goes through it, so none
 * races another. Errors other than "no such message" are thrown, never taken for "gone".
 * `change` also gets the message bytes when the file was small enough to be read whole
 * (Spool.readForDelivery), for Spool.openMessage.
 */
export async function onQueuedMessage<T>(
  spool: Spool,
  id: string,
  change: (envelope: Envelope, bytes?: Buffer) => Promise<Change<T>> | Change<T>,
): Promise<QueuedOutcome<T>> {
  if (!(await spool.locks.lock(id))) return { kind: 'busy' };
  try {
    let envelope: Envelope;
    let bytes: Buffer | undefined;
    try {
      ({ envelope, bytes } = await spool.readForDelivery(id));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'gone' };
      throw error;
    }
    const { save, value } = await change(envelope, bytes);
    if (save === 'remove') await spool.remove(id);
    else if (save === 'update') await spool.updateEnvelope(envelope);
    return { kind: 'done', value };
  } finally {
    await spool.locks.unlock(id);
  }
}
