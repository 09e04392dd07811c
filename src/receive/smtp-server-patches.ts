import type { SMTPServerSession } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

/*
 * Two things smtp-server cannot do through its options, added to its connection class.
 * smtp-server is pinned to an exact version and the tests assert both, so an upgrade
 * that breaks them fails the suite.
 */

const LEADING_ENHANCED_CODE = /^[245]\.\d{1,3}\.\d{1,3} /;

/*
 * 1. smtp-server derives the enhanced code of an application's reply from the reply
 * code alone (550 always becomes 5.1.1), so "550 5.7.1 relay denied" would go out as
 * "550 5.1.1 5.7.1 ...". A reply text that already starts with an enhanced code is
 * sent as it is; every other reply keeps the library's code.
 */
const librarySend = SMTPConnection.prototype.send;
SMTPConnection.prototype.send = function send(code, data, context) {
  const ownCode = typeof data === 'string' && LEADING_ENHANCED_CODE.test(data);
  return librarySend.call(this, code, data, ownCode ? false : context);
};

/** Decides an ETRN request; calls back with the reply code and text (text with its enhanced code). */
export type EtrnHandler = (node: string, session: SMTPServerSession, reply: (code: number, text: string) => void) => void;

/** The server option that carries the ETRN handler (smtp-server passes unknown options through). */
export interface EtrnOption {
  onEtrn?: EtrnHandler;
}

/*
 * 2. ETRN (RFC 1985), which smtp-server does not know: handed to the server's onEtrn.
 * Servers without one (the tests' primary) answer 502.
 */
const connectionPrototype = SMTPConnection.prototype as unknown as Record<string, unknown>;
connectionPrototype.handler_ETRN = function handleEtrn(
  this: SMTPConnection & { _server: { options: EtrnOption }; session: SMTPServerSession },
  command: Buffer,
  callback: () => void,
) {
  const onEtrn = this._server.options.onEtrn;
  if (!onEtrn) {
    this.send(502, '5.5.1 ETRN is not supported');
    return callback();
  }
  const node = command.toString().trim().split(/\s+/).slice(1).join(' ');
  onEtrn(node, this.session, (code, text) => {
    this.send(code, text);
    callback();
  });
};
