import { domainOf } from '../mail/address.js';
import type { Envelope } from './envelope.js';

/** Which queued messages a bulk `queue` command acts on (all given conditions hold). */
export interface QueueSelection {
  /** A recipient still pending in this domain. */
  domain?: string;
  /** The sender, as an address, or "@domain" for any sender of that domain ("<>": the null sender). */
  sender?: string;
  /** This address among the recipients. */
  recipient?: string;
  /** Arrived at least this many seconds ago. */
  olderThanSeconds?: number;
  /** Every message (required when no other condition is given: never "all" by accident). */
  all?: boolean;
}

export function isEmptySelection(selection: QueueSelection): boolean {
  return (
    !selection.all &&
    selection.domain === undefined &&
    selection.sender === undefined &&
    selection.recipient === undefined &&
    selection.olderThanSeconds === undefined
  );
}

export function selects(selection: QueueSelection, envelope: Envelope, now = Date.now()): boolean {
  const { domain, sender, recipient, olderThanSeconds } = selection;
  if (domain !== undefined && !envelope.recipients.some((r) => r.state === 'pending' && domainOf(r.address) === domain.toLowerCase())) return false;
  if (sender !== undefined) {
    const wanted = sender.toLowerCase();
    const actual = envelope.sender.toLowerCase();
    if (wanted === '<>' ? actual !== '' : wanted.startsWith('@') ? actual === '' || domainOf(actual) !== wanted.slice(1) : actual !== wanted) return false;
  }
  if (recipient !== undefined && !envelope.recipients.some((r) => r.address.toLowerCase() === recipient.toLowerCase())) return false;
  if (olderThanSeconds !== undefined && now - Date.parse(envelope.arrival) < olderThanSeconds * 1000) return false;
  return true;
}

/** qshape's age buckets, in minutes: T (total), 5, 10, 20, 40, 80, 160, 320, 640, 1280, 1280+. */
export const AGE_BUCKETS = [5, 10, 20, 40, 80, 160, 320, 640, 1280] as const;

export interface QueueShape {
  /** Column labels: the bucket upper bounds in minutes, then "1280+". */
  buckets: string[];
  /** TOTAL first, then recipient domains by message count, descending. */
  rows: Array<{ domain: string; total: number; counts: number[] }>;
}

/**
 * Postfix's qshape view: messages with pending recipients per recipient domain (a message
 * counts once per domain it still has recipients in) and per age bucket.
 */
export async function queueShape(envelopes: Iterable<Envelope> | AsyncIterable<Envelope>, now = Date.now()): Promise<QueueShape> {
  const byDomain = new Map<string, number[]>();
  const total = new Array<number>(AGE_BUCKETS.length + 1).fill(0);
  for await (const envelope of envelopes) {
    const domains = new Set(envelope.recipients.filter((r) => r.state === 'pending').map((r) => domainOf(r.address)));
    if (domains.size === 0) continue;
    const minutes = (now - Date.parse(envelope.arrival)) / 60_000;
    const bucket = AGE_BUCKETS.findIndex((limit) => minutes < limit);
    const column = bucket === -1 ? AGE_BUCKETS.length : bucket;
    total[column]++;
    for (const domain of domains) {
      const counts = byDomain.get(domain) ?? new Array<number>(AGE_BUCKETS.length + 1).fill(0);
      counts[column]++;
      byDomain.set(domain, counts);
    }
  }
  const sum = (counts: number[]) => counts.reduce((a, b) => a + b, 0);
  const rows = [...byDomain]
    .map(([domain, counts]) => ({ domain, total: sum(counts), counts }))
    .sort((a, b) => b.total - a.total || a.domain.localeCompare(b.domain));
  return {
    buckets: [...AGE_BUCKETS.map(String), `${AGE_BUCKETS[AGE_BUCKETS.length - 1]}+`],
    rows: [{ domain: 'TOTAL', total: sum(total), counts: total }, ...rows],
  };
}

/** The qshape table as text. */
export function formatShape(shape: QueueShape): string {
  const width = Math.max(6, ...shape.rows.map((row) => row.domain.length));
  const cell = (value: string | number) => String(value).padStart(6);
  const lines = [`${''.padStart(width)} ${cell('T')} ${shape.buckets.map(cell).join(' ')}`];
  for (const row of shape.rows) lines.push(`${row.domain.padStart(width)} ${cell(row.total)} ${row.counts.map(cell).join(' ')}`);
  return `${lines.join('\n')}\n`;
}
