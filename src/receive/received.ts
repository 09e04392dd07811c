import type { SMTPServerSession } from 'smtp-server';
import { rfc5322Date } from '../mail/date.js';

/** A token safe inside a Received header: the client's EHLO name is untrusted input. */
function headerToken(value: string | false | undefined): string {
  const cleaned = (value || 'unknown').replace(/[^A-Za-z0-9.\-_:[\]]/g, '?');
  return cleaned.slice(0, 255);
}

/**
 * The trace header this MX prepends (RFC 5321 §4.4). "for" names the recipient only
 * when there is exactly one, as Postfix does, so a message to many does not list them.
 */
export function receivedHeader(session: SMTPServerSession, recipients: readonly string[], hostname: string, queueId: string, now: Date): string {
  // RFC 6531 §3.7.3: SMTPUTF8 sessions are "UTF8SMTP", "UTF8SMTPS".
  const protocol = session.envelope.smtpUtf8 ? session.transmissionType.replace(/^E?SMTP/, 'UTF8SMTP') : session.transmissionType;
  const client = session.remoteAddress.includes(':') ? `IPv6:${session.remoteAddress}` : session.remoteAddress;
  const forClause = recipients.length === 1 ? `\r\n\tfor <${recipients[0]}>` : '';
  return (
    `Received: from ${headerToken(session.hostNameAppearsAs)} ([${client}])\r\n` +
    `\tby ${hostname} (alternc-secondarymx) with ${protocol} id ${queueId}${forClause};\r\n` +
    `\t${rfc5322Date(now)}\r\n`
  );
}
