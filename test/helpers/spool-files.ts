import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseEnvelope, type Envelope } from '../../src/spool/envelope.js';
import { readTrailerSync } from '../../src/spool/trailer.js';

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

/** A queued message's bytes as received, without the envelope stored after them. */
/** The message's bytes as stored (before the envelope the file ends with), without the headers added after DATA. */
export function storedMessage(spoolDir: string, id: string): Buffer {
  return readFileSync(join(spoolDir, 'queue', `${id}.msg`)).subarray(0, queuedEnvelope(spoolDir, id).size);
}

/** The message as it will be delivered: the headers added after DATA, then the stored bytes. */
export function queuedMessage(spoolDir: string, id: string): Buffer {
  return Buffer.concat([Buffer.from(queuedEnvelope(spoolDir, id).addedHeaders ?? ''), storedMessage(spoolDir, id)]);
}
