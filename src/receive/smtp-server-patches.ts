import type { SMTPServerSession } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

/*
 * What smtp-server cannot do through its options, added to its connection class.
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
SMTPConnection.prototype.send = function send(this: PatchedConnection, code, data, context) {
  if (code === 421 && data === 'Error: Command line too long') {
    // A line over limits.commandLength is the client's error, not a temporary one (RFC 5321 §4.5.3.1.4).
    librarySend.call(this, 500, '5.5.2 Line too long', false);
    return this.close();
  }
  const ownCode = typeof data === 'string' && LEADING_ENHANCED_CODE.test(data);
  librarySend.call(this, code, data, ownCode ? false : context);
  // 3. Postfix's smtpd_hard_error_limit: too many error replies end the session.
  const limits = this._server.options.sessionLimits;
  if (limits && code >= 400 && code !== 421 && !this._closing) {
    this._errorReplies = (this._errorReplies ?? 0) + 1;
    if (this._errorReplies >= limits.errorsPerSession) {
      this._closing = true;
      librarySend.call(this, 421, '4.7.0 Too many errors, closing connection', false);
    }
  }
};

/** Per-session limits the patched connection enforces (limits.* in the config). */
export interface SessionLimits {
  errorsPerSession: number;
  commandsBeforeMail: number;
}

type PatchedConnection = SMTPConnection & {
  _server: { options: PatchOptions & { sessionLimits?: SessionLimits } };
  session: SMTPServerSession;
  _ready: boolean;
  _errorReplies?: number;
  _commandsBeforeMail?: number;
  _closing?: boolean;
  _onCommand(command: Buffer, callback: () => void): void;
};

/*
 * 4. Before each command: a client that talks before the greeting gets 554 and is
 * disconnected (as Postfix's postscreen does; smtp-server would say 421), and a
 * session that sends more than commandsBeforeMail commands without a MAIL is closed.
 */
const connectionClass = SMTPConnection.prototype as unknown as PatchedConnection;
const libraryOnCommand = connectionClass._onCommand;
connectionClass._onCommand = function onCommand(this: PatchedConnection, command: Buffer, callback: () => void) {
  const limits = this._server.options.sessionLimits;
  if (limits && !this._closing) {
    if (!this._ready) {
      this._closing = true;
      librarySend.call(this, 554, '5.5.1 Protocol error: talking before the greeting', false);
      this.close();
      return;
    }
    const name = command.toString('latin1').split(' ')[0].toUpperCase();
    if (name === 'MAIL') this._commandsBeforeMail = -Infinity;
    else if ((this._commandsBeforeMail = (this._commandsBeforeMail ?? 0) + 1) > limits.commandsBeforeMail) {
      this._closing = true;
      librarySend.call(this, 421, '4.7.0 Too many commands without a transaction, closing connection', false);
      return;
    }
  }
  libraryOnCommand.call(this, command, callback);
};

/** Decides an ETRN request; calls back with the reply code and text (text with its enhanced code). */
export type EtrnHandler = (node: string, session: SMTPServerSession, reply: (code: number, text: string) => void) => void;

/** The server options this module adds (smtp-server passes unknown options through). */
export interface PatchOptions {
  onEtrn?: EtrnHandler;
  sessionLimits?: SessionLimits;
}

/*
 * 2. ETRN (RFC 1985), which smtp-server does not know: handed to the server's onEtrn.
 * Servers without one (the tests' primary) answer 502.
 */
const connectionPrototype = SMTPConnection.prototype as unknown as Record<string, unknown>;
connectionPrototype.handler_ETRN = function handleEtrn(
  this: SMTPConnection & { _server: { options: PatchOptions }; session: SMTPServerSession },
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
