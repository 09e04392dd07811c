import { QUEUE_ID } from './queue-id.js';

export type RecipientState = 'pending' | 'delivered' | 'failed';

export interface Recipient {
  /** As accepted at RCPT: local part as sent, domain in punycode. */
  address: string;
  state: RecipientState;
  /** The directory source that owned the domain at RCPT: it decides which primary gets it. */
  source?: string;
  /** The primary's last reply about this recipient. */
  reply?: string;
  /** The name the primary that gave that reply announced in its greeting. */
  remoteMta?: string;
  /** An RFC 3463 status this MX decided (4.4.7: expired), rather than the primary's reply. */
  status?: string;
  /** A failed recipient whose failure is settled: its DSN is queued, or none is owed. */
  reported?: boolean;
  /** RFC 3461 NOTIFY values as received (absent: the default, FAILURE and DELAY). */
  notify?: string[];
  /** RFC 3461 ORCPT as received ("rfc822;user@example.org"). */
  orcpt?: string;
}

/** Everything about a spooled message except its bytes; stored as JSON beside them. */
export interface Envelope {
  version: 1;
  id: string;
  /** ISO 8601 arrival time. */
  arrival: string;
  /** MAIL FROM; '' is the null sender. */
  sender: string;
  recipients: Recipient[];
  /** Bytes of the spooled message, our Received header included (addedHeaders not). */
  size: number;
  /**
   * Header lines decided once the whole message was in (Authentication-Results, X-Spam-*),
   * CRLF-terminated: every reader gets them before the stored bytes (Spool.openMessage).
   */
  addedHeaders?: string;
  /**
   * Header fields the client sent that claim to be ours (a forged Authentication-Results,
   * X-Spam…), as byte ranges [start, end) of the stored bytes, in order: every reader skips
   * them (Spool.openMessage), so the file is never rewritten.
   */
  removedHeaders?: Array<[number, number]>;
  /** The SPF result of MAIL FROM, when it was checked: a DSN returns the whole message (RET=FULL) only after a pass. */
  senderSpf?: string;
  /** Why no DSN may go to the sender (it is likely forged): its SPF failed, or the message was scored as spam. */
  noBounce?: 'spf-fail' | 'spam';
  bodyType: '7bit' | '8bitmime';
  smtpUtf8: boolean;
  client: { address: string; helo: string };
  messageId?: string;
  /** Delivery attempts the primary answered with a temporary failure (they drive the backoff). */
  deferrals?: number;
  /** ISO time before which no attempt is made (backoff); absent: due now. */
  nextAttempt?: string;
  lastAttempt?: string;
  /** Held messages are never delivered until released. */
  held?: boolean;
  /** Why the relay held it by itself (a message it could not process); absent when an admin did. */
  heldReason?: string;
  /** RFC 3461 MAIL parameters as received. */
  dsn?: { ret?: 'FULL' | 'HDRS'; envid?: string };
  /** 'dsn': a delivery status notification this MX generated (goes to the sender's MX, never bounced). */
  kind?: 'dsn';
  /** The one "delayed" notice has been queued. */
  delayWarned?: boolean;
  /**
   * A notice being queued (two steps, so a crash between them yields exactly one):
   * recorded here first, then written as message `id`, then cleared.
   */
  notice?: { id: string; action: 'failed' | 'delayed'; recipients: string[] };
}

export class CorruptEnvelopeError extends Error {}

/** Bytes of the message as delivered: the added headers, then the stored bytes less the removed headers. */
export function deliveredSize(envelope: Envelope): number {
  const removed = (envelope.removedHeaders ?? []).reduce((sum, [start, end]) => sum + end - start, 0);
  return envelope.size - removed + (envelope.addedHeaders ? Buffer.byteLength(envelope.addedHeaders) : 0);
}

const STATES: ReadonlySet<string> = new Set(['pending', 'delivered', 'failed']);

/** Parses and checks a stored envelope; anything unexpected is corruption, not a crash. */
export function parseEnvelope(text: string, expectedId: string): Envelope {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new CorruptEnvelopeError(`not JSON: ${(error as Error).message}`);
  }
  const problem = envelopeProblem(value as Partial<Envelope> | null, expectedId);
  if (problem) throw new CorruptEnvelopeError(problem);
  return value as Envelope;
}

function envelopeProblem(envelope: Partial<Envelope> | null, expectedId: string): string | undefined {
  if (!envelope || typeof envelope !== 'object') return 'not an object';
  if (envelope.version !== 1) return `unknown version ${String(envelope.version)}`;
  if (envelope.id !== expectedId || !QUEUE_ID.test(expectedId)) return `id ${String(envelope.id)} does not match its file name`;
  if (typeof envelope.sender !== 'string' || typeof envelope.arrival !== 'string') return 'sender or arrival missing';
  if (!Number.isInteger(envelope.size) || envelope.size! <= 0) return 'size missing or not a positive number';
  const recipients = envelope.recipients;
  if (!Array.isArray(recipients) || recipients.length === 0) return 'no recipients';
  if (!recipients.every((r) => typeof r?.address === 'string' && STATES.has(r?.state))) return 'bad recipient entry';
  if (envelope.removedHeaders !== undefined && !inOrderWithin(envelope.removedHeaders, envelope.size!)) return 'removedHeaders are not ranges in order';
  return undefined;
}

/** Byte ranges [start, end), each after the one before, all within `size`. */
function inOrderWithin(ranges: unknown, size: number): boolean {
  if (!Array.isArray(ranges)) return false;
  let last = 0;
  for (const range of ranges as unknown[]) {
    if (!Array.isArray(range) || range.length !== 2 || !range.every(Number.isInteger)) return false;
    const [start, end] = range as [number, number];
    if (start < last || end <= start || end > size) return false;
    last = end;
  }
  return true;
}

/** A message's overall state, as `queue list` shows it. */
export function messageState(envelope: Envelope): string {
  const states = new Set(envelope.recipients.map((r) => r.state));
  if (envelope.held) return 'held';
  if (states.has('pending')) return envelope.deferrals ? 'deferred' : 'queued';
  return states.has('failed') ? 'failed' : 'delivered';
}
