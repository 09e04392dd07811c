import type { Readable } from 'node:stream';
import { SessionLost, type Reply, type SmtpSession } from './session.js';
import { isAscii } from '../mail/address.js';

export interface OutgoingRecipient {
  address: string;
  /** RFC 3461 NOTIFY values and ORCPT, sent on this recipient's own RCPT line. */
  notify?: string[];
  orcpt?: string;
}

export interface OutgoingMessage {
  sender: string;
  recipients: OutgoingRecipient[];
  /** The bytes we will send (RFC 1870 SIZE). */
  size: number;
  eightBit: boolean;
  smtpUtf8: boolean;
  ret?: 'FULL' | 'HDRS';
  envid?: string;
  /** Opens the message bytes (not dot-stuffed). */
  body: () => Readable;
}

export type Outcome = 'delivered' | 'deferred' | 'failed';

export interface RecipientResult {
  address: string;
  outcome: Outcome;
  /** The primary's reply about this recipient, or what happened instead ("lost connection …"). */
  reply: string;
  /** The name the primary gave itself, when it answered. */
  remoteMta?: string;
}

export interface TransactionResult {
  recipients: RecipientResult[];
  /** The session is in a known state (a final reply to DATA, or RSET done) and may carry the next message. */
  reusable: boolean;
}

/** 503 "bad sequence of commands": the primary and we disagree on the session state. */
const OUT_OF_SEQUENCE = 503;

/**
 * One message, one transaction: MAIL, every recipient's RCPT with its own DSN
 * parameters, one DATA for all the accepted ones; one result per recipient. The
 * session is left clean (RSET after any transaction that did not end with a final
 * reply to DATA) or marked unusable. Only the primary's replies fail a recipient;
 * a lost session, a 421 or an out-of-sequence reply defers whatever was undecided.
 * Spool read errors while sending are thrown (the session is closed first).
 */
export async function sendMessage(session: SmtpSession, message: OutgoingMessage): Promise<TransactionResult> {
  const results = new Map<string, RecipientResult>();
  const remoteMta = session.peerName ? { remoteMta: session.peerName } : {};
  const decide = (recipients: readonly OutgoingRecipient[], outcome: Outcome, reply: string) => {
    for (const { address } of recipients) if (!results.has(address)) results.set(address, { address, outcome, reply, ...remoteMta });
  };
  const finish = (reusable: boolean): TransactionResult => ({
    recipients: message.recipients.map((r) => results.get(r.address)!),
    reusable: reusable && session.usable,
  });
  // RFC 6531 §3.2: without SMTPUTF8 at the primary, a message whose envelope is ASCII still goes, without
  // the keyword (as Postfix sends it); only non-ASCII addresses truly cannot be delivered.
  const utf8 = message.smtpUtf8 && session.offers('SMTPUTF8');
  if (message.smtpUtf8 && !utf8 && ![message.sender, ...message.recipients.map((r) => r.address)].every(isAscii)) {
    decide(message.recipients, 'failed', '550 5.6.7 The primary does not offer SMTPUTF8, which the non-ASCII addresses of this message need');
    return finish(true);
  }
  let stage = 'MAIL FROM';
  try {
    const commands = [mailCommand(session, { ...message, smtpUtf8: utf8 }), ...message.recipients.map((r) => rcptCommand(session, r))];
    const replies = session.offers('PIPELINING') ? await session.pipeline(commands) : await oneByOne(session, commands);
    const [mail, ...rcpts] = replies;
    if (!isPositive(mail)) {
      decide(message.recipients, outcomeOf(mail), mail.text);
      return finish(inSequence(mail) && (await reset(session)));
    }
    stage = 'RCPT TO';
    const accepted = message.recipients.filter((recipient, i) => {
      const reply = rcpts[i];
      if (!isPositive(reply)) decide([recipient], outcomeOf(reply), reply.text);
      return isPositive(reply);
    });
    const confused = rcpts.some((reply) => !inSequence(reply));
    if (accepted.length === 0 || confused) {
      decide(accepted, 'deferred', `${rcpts.find((reply) => !inSequence(reply))?.text ?? ''} (session out of sequence)`.trim());
      return finish(!confused && (await reset(session)));
    }
    stage = 'DATA';
    const data = await session.command('DATA');
    if (data.code !== 354) {
      decide(accepted, data.code >= 200 && data.code < 400 ? 'deferred' : outcomeOf(data), data.text);
      return finish(inSequence(data) && data.code >= 400 && (await reset(session)));
    }
    stage = 'the message';
    const final = await session.data(message.body());
    decide(accepted, outcomeOf(final), final.text);
    return finish(inSequence(final));
  } catch (error) {
    if (!(error instanceof SessionLost)) throw error;
    decide(message.recipients, 'deferred', `lost connection with the primary while sending ${stage}: ${error.message}`);
    return finish(false);
  }
}

function mailCommand(session: SmtpSession, message: OutgoingMessage): string {
  const params: string[] = [];
  if (session.offers('SIZE')) params.push(`SIZE=${message.size}`);
  if (message.eightBit && session.offers('8BITMIME')) params.push('BODY=8BITMIME');
  if (message.smtpUtf8) params.push('SMTPUTF8');
  if (session.offers('DSN')) {
    if (message.ret) params.push(`RET=${message.ret}`);
    if (message.envid) params.push(`ENVID=${xtext(message.envid)}`);
  }
  return [`MAIL FROM:<${message.sender}>`, ...params].join(' ');
}

function rcptCommand(session: SmtpSession, recipient: OutgoingRecipient): string {
  const params: string[] = [];
  if (session.offers('DSN')) {
    if (recipient.notify?.length) params.push(`NOTIFY=${recipient.notify.join(',')}`);
    if (recipient.orcpt) params.push(`ORCPT=${orcptParameter(recipient.orcpt)}`);
  }
  return [`RCPT TO:<${recipient.address}>`, ...params].join(' ');
}

/** Without PIPELINING: each command waits for its reply, and RCPTs wait for a positive MAIL. */
async function oneByOne(session: SmtpSession, commands: readonly string[]): Promise<Reply[]> {
  const replies: Reply[] = [];
  for (const command of commands) {
    replies.push(await session.command(command));
    if (!isPositive(replies[0])) return commands.map(() => replies[0]);
  }
  return replies;
}

/** RSET after a transaction that did not end with DATA's final reply; false if the session cannot go on. */
async function reset(session: SmtpSession): Promise<boolean> {
  const reply = await session.command('RSET');
  return isPositive(reply);
}

function isPositive(reply: Reply): boolean {
  return reply.code >= 200 && reply.code < 300;
}

function inSequence(reply: Reply): boolean {
  return reply.code !== OUT_OF_SEQUENCE && reply.code !== 421;
}

function outcomeOf(reply: Reply): Outcome {
  if (isPositive(reply)) return 'delivered';
  if (reply.code >= 500 && inSequence(reply)) return 'failed';
  return 'deferred';
}

/** ORCPT as received ("rfc822;user@example.org"), its address xtext-encoded (RFC 3461 §4.2). */
function orcptParameter(orcpt: string): string {
  const at = orcpt.indexOf(';');
  return at === -1 ? `rfc822;${xtext(orcpt)}` : `${orcpt.slice(0, at)};${xtext(orcpt.slice(at + 1))}`;
}

/** RFC 3461 xtext: "+", "=", controls and non-ASCII as +XX. */
function xtext(value: string): string {
  return Array.from(Buffer.from(value, 'utf8'), (byte) =>
    byte < 33 || byte > 126 || byte === 0x2b || byte === 0x3d ? `+${byte.toString(16).toUpperCase().padStart(2, '0')}` : String.fromCharCode(byte),
  ).join('');
}
