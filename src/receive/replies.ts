import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

/** An SMTP refusal with its enhanced status code (RFC 3463), passed to smtp-server's callbacks. */
export class SmtpReply extends Error {
  constructor(
    readonly responseCode: number,
    readonly enhancedCode: string,
    text: string,
  ) {
    super(`${enhancedCode} ${text}`);
  }
}

const LEADING_ENHANCED_CODE = /^[245]\.\d{1,3}\.\d{1,3} /;

/*
 * smtp-server derives the enhanced code of an application's reply from the reply
 * code alone (550 always becomes 5.1.1), so "550 5.7.1 relay denied" would go out as
 * "550 5.1.1 5.7.1 ...". A reply text that already starts with an enhanced code is
 * sent as it is; every other reply keeps the library's code. Tests pin the replies.
 */
const librarySend = SMTPConnection.prototype.send;
SMTPConnection.prototype.send = function send(code, data, context) {
  const ownCode = typeof data === 'string' && LEADING_ENHANCED_CODE.test(data);
  return librarySend.call(this, code, data, ownCode ? false : context);
};
