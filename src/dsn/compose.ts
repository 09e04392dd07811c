import { once } from 'node:events';
import type { Readable } from 'node:stream';
import { MailParser } from 'mailparser';
import MimeNode from 'nodemailer/lib/mime-node';
import { rfc5322Date } from '../mail/date.js';
import { deliveredSize, type Envelope, type Recipient } from '../spool/envelope.js';

export type NoticeAction = 'failed' | 'delayed';

export interface NoticeInput {
  /** Our host name: Reporting-MTA, MAILER-DAEMON@, Message-ID. */
  hostname: string;
  envelope: Envelope;
  recipients: Recipient[];
  action: NoticeAction;
  /** Opens the original message as received. */
  openOriginal: () => Readable;
  /** Largest original to return whole with RET=FULL (limits.messageSize). */
  maxReturnSize: number;
  /** Host of the primary that answered, for Remote-MTA. */
  remoteMta: (recipient: Recipient) => string | undefined;
  /** For delayed notices: until when we keep trying. */
  willRetryUntil?: Date;
  /** Why the original is left out (it could not be read or parsed): the notice goes without it. */
  withoutOriginal?: string;
}

const ENHANCED = /^\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})\b/;

/** The RFC 3463 status of a recipient: the primary's enhanced code, or one derived from the reply. */
export function recipientStatus(recipient: Recipient, action: NoticeAction): string {
  const reply = recipient.reply ?? '';
  const enhanced = recipient.status ?? ENHANCED.exec(reply)?.[1];
  const status = enhanced ?? (reply.startsWith('5') ? '5.0.0' : '4.0.0');
  // An expired or otherwise given-up recipient is a permanent failure in a failure notice (4.4.7 → 5.4.7).
  return action === 'failed' && status.startsWith('4') ? `5${status.slice(1)}` : status;
}

/**
 * Builds a delivery status notification (RFC 3464 inside RFC 6522's multipart/report):
 * a human-readable part, the message/delivery-status part, and the original headers
 * (or the whole original with RET=FULL when it fits). MIME by nodemailer's MimeNode.
 */
export async function composeNotice(input: NoticeInput): Promise<Buffer> {
  const { envelope, action, hostname } = input;
  const original = input.withoutOriginal === undefined ? await readOriginal(input.openOriginal()) : undefined;
  const root = new MimeNode('multipart/report; report-type=delivery-status', { hostname, newline: 'win' });
  root.setHeader({
    From: `Mail Delivery System <MAILER-DAEMON@${hostname}>`,
    To: envelope.sender,
    Subject: action === 'failed' ? 'Undelivered Mail Returned to Sender' : 'Delayed Mail (still being retried)',
    'Auto-Submitted': 'auto-replied',
    Date: rfc5322Date(new Date()),
    'Message-ID': `<${envelope.id}.${Date.now()}.dsn@${hostname}>`,
  });
  root.createChild('text/plain; charset=utf-8').setContent(humanText(input, original?.subject));
  root.createChild('message/delivery-status').setContent(deliveryStatus(input));
  // A sender whose SPF did not pass may be forged: it gets the headers only, whatever it asked (no spam carried back).
  const full = envelope.dsn?.ret === 'FULL' && envelope.senderSpf === 'pass' && deliveredSize(envelope) <= input.maxReturnSize;
  if (!original) return root.build(); // RFC 6522: the third part is optional
  if (full) root.createChild('message/rfc822').setContent(input.openOriginal());
  else root.createChild('text/rfc822-headers').setContent(original.headerBlock);
  return root.build();
}

function humanText(input: NoticeInput, subject: string | undefined): string {
  const { envelope, recipients, action, hostname } = input;
  const lines = [
    `This is the mail system at host ${hostname}.`,
    '',
    action === 'failed'
      ? 'I am sorry to have to inform you that your message could not be delivered to one or more recipients.'
      : 'Your message could not be delivered yet to one or more recipients. It is still queued and will be retried; you do not need to send it again.',
    '',
    `Message: ${subject ? `"${subject}", ` : ''}received ${rfc5322Date(new Date(envelope.arrival))}, queue id ${envelope.id}`,
    '',
    ...recipients.map(
      (r) =>
        `<${r.address}>: ${r.status === '4.4.7' ? 'delivery time expired; ' : ''}${r.reply ? `last reply: ${r.reply}` : 'no answer from the primary mail server'}`,
    ),
    '',
    ...(input.withoutOriginal === undefined ? [] : [`The original message's headers are not included: ${input.withoutOriginal}.`, '']),
  ];
  return lines.join('\r\n');
}

function deliveryStatus(input: NoticeInput): string {
  const { envelope, recipients, action, hostname } = input;
  const fields = [`Reporting-MTA: dns; ${hostname}`];
  if (envelope.dsn?.envid) fields.push(`Original-Envelope-Id: ${envelope.dsn.envid}`);
  fields.push(`Arrival-Date: ${rfc5322Date(new Date(envelope.arrival))}`, '');
  for (const recipient of recipients) {
    if (recipient.orcpt) fields.push(`Original-Recipient: ${recipient.orcpt}`);
    fields.push(`Final-Recipient: rfc822; ${recipient.address}`, `Action: ${action}`, `Status: ${recipientStatus(recipient, action)}`);
    const remote = recipient.remoteMta ?? input.remoteMta(recipient);
    if (remote && recipient.reply && /^\d{3}/.test(recipient.reply)) {
      fields.push(`Remote-MTA: dns; ${remote}`, `Diagnostic-Code: smtp; ${recipient.reply}`);
    }
    if (envelope.lastAttempt) fields.push(`Last-Attempt-Date: ${rfc5322Date(new Date(envelope.lastAttempt))}`);
    if (action === 'delayed' && input.willRetryUntil) fields.push(`Will-Retry-Until: ${rfc5322Date(input.willRetryUntil)}`);
    fields.push('');
  }
  return fields.join('\r\n');
}

/** The original's header block as received (mailparser's raw header lines) and its subject. */
async function readOriginal(stream: Readable): Promise<{ headerBlock: string; subject: string | undefined }> {
  const parser = new MailParser();
  const headerLines = once(parser, 'headerLines') as Promise<[Array<{ line: string }>]>;
  const headers = once(parser, 'headers') as Promise<[Map<string, unknown>]>;
  stream.pipe(parser);
  try {
    const [[lines], [parsed]] = await Promise.all([headerLines, headers]);
    const subject = parsed.get('subject');
    return { headerBlock: `${lines.map((l) => l.line).join('\r\n')}\r\n`, subject: typeof subject === 'string' ? subject : undefined };
  } finally {
    stream.unpipe(parser);
    stream.destroy();
    parser.destroy();
  }
}
