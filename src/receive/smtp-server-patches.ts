import type { SMTPServerSession } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';

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
  /** NOOP, RSET, VRFY, ETRN and HELP a session may send in all (Postfix's smtpd_junk_command_limit). */
  junkCommands: number;
}

type PatchedConnection = SMTPConnection & {
  _server: { options: PatchOptions & { sessionLimits?: SessionLimits } };
  session: SMTPServerSession;
  _ready: boolean;
  _parser: CountedStream | false;
  _errorReplies?: number;
  _commandsBeforeMail?: number;
  _junkCommands?: number;
  _closing?: boolean;
  /** Socket chunk of the EHLO/HELO, and of the previous command (pipelining checks). */
  _helloChunk?: number;
  _lastChunk?: number;
  _pipelining?: boolean;
  _onCommand(command: Buffer, callback: () => void): void;
};

/*
 * 5. Numbers the socket chunks the command parsers get (one sequence for all of them,
 * so a parser replaced at STARTTLS never repeats a number), to see which commands came together.
 */
type CountedStream = { _chunks?: number; _write(chunk: Buffer, encoding: string, next: () => void): void };
const streamClass = SMTPStream.prototype as unknown as CountedStream;
const libraryWrite = streamClass._write;
let chunkSequence = 0;
streamClass._write = function write(this: CountedStream, chunk, encoding, next) {
  this._chunks = ++chunkSequence;
  return libraryWrite.call(this, chunk, encoding, next);
};

/**
 * Commands sent without waiting for the reply they depend on: anything in the same
 * chunk as EHLO/HELO (before the client could know PIPELINING is offered), and any
 * two commands together after HELO (PIPELINING is an EHLO extension). RFC 2920 §3.1.
 */
function unauthorisedPipelining(connection: PatchedConnection, name: string): boolean {
  const chunk = connection._parser ? connection._parser._chunks : undefined;
  const together = chunk !== undefined && chunk === connection._lastChunk;
  const withHello = together && chunk === connection._helloChunk;
  connection._lastChunk = chunk;
  if (name === 'EHLO' || name === 'HELO') {
    connection._helloChunk = chunk;
    connection._pipelining = name === 'EHLO';
  }
  return withHello || (together && connection._pipelining === false);
}

/*
 * 4. Before each command: a client that talks before the greeting gets 554 and is
 * disconnected (as Postfix's postscreen does; smtp-server would say 421), one that
 * pipelines without PIPELINING gets 503 and is disconnected, and a session that sends
 * more than commandsBeforeMail commands without a MAIL, or more than junkCommands
 * NOOP/RSET/VRFY/ETRN/HELP in all, is closed.
 */
const JUNK = new Set(['NOOP', 'RSET', 'VRFY', 'ETRN', 'HELP']);
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
    if (unauthorisedPipelining(this, name)) {
      this._closing = true;
      librarySend.call(this, 503, '5.5.0 Improper use of SMTP command pipelining', false);
      this.close();
      return;
    }
    if (name === 'MAIL') this._commandsBeforeMail = -Infinity;
    else if ((this._commandsBeforeMail = (this._commandsBeforeMail ?? 0) + 1) > limits.commandsBeforeMail) {
      this._closing = true;
      librarySend.call(this, 421, '4.7.0 Too many commands without a transaction, closing connection', false);
      return;
    }
    if (JUNK.has(name) && (this._junkCommands = (this._junkCommands ?? 0) + 1) > limits.junkCommands) {
      this._closing = true;
      librarySend.call(this, 421, '4.7.0 Too many NOOP, RSET, VRFY, ETRN or HELP commands, closing connection', false);
      return;
    }
  }
  libraryOnCommand.call(this, command, callback);
};

/*
 * 6. The pause before the greeting, which smtp-server fixes at 100 ms: limits.greetingPause.
 * A client that talks during it is an early talker (4. above). With 100 sessions of one
 * message each, the pause alone caps the accept rate at 1,000 messages/s.
 */
type StartingConnection = PatchedConnection & {
  _server: { options: PatchOptions & { maxClients?: number }; connections: Set<unknown> };
  name: string;
  _setListeners(callback: () => void): void;
  connectionReady(): void;
  init(): void;
};
const startingClass = SMTPConnection.prototype as unknown as StartingConnection;
const libraryInit = startingClass.init;
startingClass.init = function init(this: StartingConnection) {
  const pause = this._server.options.greetingPause;
  if (pause === undefined) return libraryInit.call(this);
  this._setListeners(() => {
    const { maxClients } = this._server.options;
    if (maxClients && this._server.connections.size > maxClients) {
      return this.send(421, `${this.name} Too many connected clients, try again in a moment`, false);
    }
    setTimeout(() => this.connectionReady(), pause).unref();
  });
};

/** Decides an ETRN request; calls back with the reply code and text (text with its enhanced code). */
export type EtrnHandler = (node: string, session: SMTPServerSession, reply: (code: number, text: string) => void) => void;

/** The server options this module adds (smtp-server passes unknown options through). */
export interface PatchOptions {
  onEtrn?: EtrnHandler;
  sessionLimits?: SessionLimits;
  /** Milliseconds before the greeting (smtp-server's own: 100). */
  greetingPause?: number;
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
