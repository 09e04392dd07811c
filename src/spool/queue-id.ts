import { randomFillSync } from 'node:crypto';

/** Random bytes drawn 4 KB at a time: one getrandom() per 819 ids instead of one per id. */
const pool = Buffer.alloc(4096);
let used = pool.length;

function randomHex(bytes: number): string {
  if (used + bytes > pool.length) {
    randomFillSync(pool);
    used = 0;
  }
  used += bytes;
  return pool.toString('hex', used - bytes, used);
}

/** Uppercase, time-ordered (sorting ids sorts by arrival), unique without coordination. */
export function newQueueId(now = Date.now()): string {
  return now.toString(36).toUpperCase().padStart(9, '0') + randomHex(5).toUpperCase();
}

export const QUEUE_ID = /^[0-9A-Z]{19}$/;
