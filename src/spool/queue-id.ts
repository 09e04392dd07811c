import { randomBytes } from 'node:crypto';

/** Uppercase, time-ordered (sorting ids sorts by arrival), unique without coordination. */
export function newQueueId(now = Date.now()): string {
  return now.toString(36).toUpperCase().padStart(9, '0') + randomBytes(5).toString('hex').toUpperCase();
}

export const QUEUE_ID = /^[0-9A-Z]{19}$/;
