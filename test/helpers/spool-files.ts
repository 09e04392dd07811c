import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseEnvelope, type Envelope } from '../../src/spool/envelope.js';
import { newQueueId } from '../../src/spool/queue-id.js';
import { Spool } from '../../src/spool/spool.js';
import { readTrailerSync } from '../../src/spool/trailer.js';
import { message } from './smtp-client.js';

/** What a spool's queue/ folder holds, read the way the daemon reads it. */

/** Ids of the queued messages (one queue/<id>.msg each), sorted. */
export function queuedIds(spoolDir: string): string[] {
  return readdirSync(join(spoolDir, 'queue'))
    .filter((name) => name.endsWith('.msg'))
    .map((name) => name.slice(0, -'.msg'.length))
    .sort();
}

/** A queued message's envelope: its later state (queue/<id>.env) if it changed, else the one stored after the message. */
export function queuedEnvelope(spoolDir: string, id: string): Envelope {
  try {
    return parseEnvelope(readFileSync(join(spoolDir, 'queue', `${id}.env`), 'utf8'), id);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  return readTrailerSync(join(spoolDir, 'queue', `${id}.msg`), id);
}

/** The message's bytes as stored (before the envelope the file ends with), without the headers added after DATA. */
export function storedMessage(spoolDir: string, id: string): Buffer {
  return readFileSync(join(spoolDir, 'queue', `${id}.msg`)).subarray(0, queuedEnvelope(spoolDir, id).size);
}

/** The message as it will be delivered: the headers added after DATA, then the stored bytes but the removed headers. */
export function queuedMessage(spoolDir: string, id: string): Buffer {
  const envelope = queuedEnvelope(spoolDir, id);
  const stored = storedMessage(spoolDir, id);
  const kept: Buffer[] = [Buffer.from(envelope.addedHeaders ?? '')];
  let from = 0;
  for (const [start, end] of envelope.removedHeaders ?? []) {
    kept.push(stored.subarray(from, start));
    from = end;
  }
  return Buffer.concat([...kept, stored.subarray(from)]);
}

/** Queues messages straight into a spool (no daemon), as a stopped primary leaves them: pending, `minutesAgo` old. */
export async function queueWaiting(
  spoolDir: string,
  messages: Array<{ subject: string; sender?: string; recipients?: string[]; minutesAgo?: number; delivered?: boolean }>,
): Promise<string[]> {
  const spool = await Spool.forDelivery(spoolDir);
  const ids: string[] = [];
  for (const { subject, sender = 's@remote.example', recipients = ['alice@d1.example'], minutesAgo = 0, delivered = false } of messages) {
    const arrival = Date.now() - minutesAgo * 60_000;
    const id = newQueueId(arrival); // as the receiver mints them: ids sort by arrival
    ids.push(id);
    await spool.enqueue(id, Buffer.from(message(subject)), {
      arrival: new Date(arrival).toISOString(),
      sender,
      recipients: recipients.map((address) => ({ address, state: delivered ? ('delivered' as const) : ('pending' as const) })),
      bodyType: '7bit',
      smtpUtf8: false,
      client: { address: '127.0.0.1', helo: 'x' },
    });
  }
  await spool.unlock();
  return ids;
}
