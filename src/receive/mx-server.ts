import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession } from 'smtp-server';
import type { SMTPServerResolvedOptions } from 'smtp-server/lib/smtp-server.js';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

/*
 * smtp-server extended through subclasses (no prototype of the library is touched, so
 * other servers in the process, the tests' primary among them, stay as shipped):
 * MxServer builds MxConnection, which adds what its options cannot do. Each override
 * calls the library's own method; the members it relies on are asserted at start,
 * with the exact version it was written against.
 */

/** The version these overrides were written and tested against. */
const WRITTEN_FOR = '3.21.6';
/** What MxConnection overrides or calls: if an upgrade drops one, refuse to start rather than misbehave. */
const RELIED_ON = ['send', '_onCommand', 'init', 'connectionReady', '_createParser', 'close', '_isSupported'] as const;

/** smtp-server's own pause before the greeting, in milliseconds (fixed in its init()). */
const LIBRARY_PAUSE = 100;

const LEADING_ENHANCED_CODE = /^[245]\.\d{1,3}\.\d{1,3} /;
const JUNK = new Set(['NOOP', 'RSET', 'VRFY', 'ETRN', 'HELP']);

/** Per-session limits MxConnection enforces (limits.* in the config). */
export interface SessionLimits {
  errorsPerSession: number;
  commandsBeforeMail: number;
  /** NOOP, RSET, VRFY, ETRN and HELP a session may send in all (Postfix's smtpd_junk_command_limit). */
  junkCommands: number;
}

/** Decides an ETRN request; calls back with the reply code and text (text with its enhanced code). */
export type EtrnHandler = (node: string, session: SMTPServerSession, reply: (code: number, text: string) => void) => void;

/** The options MxServer adds to smtp-server's. */
export interface MxOptions {
  onEtrn?: EtrnHandler;
  sessionLimits?: SessionLimits;
  /** Milliseconds before the greeting (smtp-server's own: 100). */
  greetingPause?: number;
  /** Milliseconds before this client's greeting, asked as it connects (instead of greetingPause). */
  greetingPauseFor?: (remoteAddress: string) => number;
}

/** Refuses to run on an smtp-server these overrides were not written for. */
export function assertSmtpServerVersion(): void {
  const { version } = createRequire(import.meta.url)('smtp-server/package.json') as { version: string };
  const missing = RELIED_ON.filter((name) => typeof (SMTPConnection.prototype as unknown as Record<string, unknown>)[name] !== 'function');
  if (version !== WRITTEN_FOR || missing.length > 0) {
    throw new Error(
      `smtp-server ${version} is installed, receive/mx-server.ts was written for ${WRITTEN_FOR}` +
        `${missing.length ? ` (missing: ${missing.join(', ')})` : ''}: check its overrides before changing the pinned version`,
    );
  }
}

/** smtp-server whose connections are MxConnections. */
export class MxServer extends SMTPServer {
  declare options: SMTPServerResolvedOptions & MxOptions;

  constructor(options: SMTPServerOptions & MxOptions) {
    assertSmtpServerVersion();
    super(options);
  }

  /** Open connections by session id (smtp-server's callbacks get the session, not the connection). */
  private readonly bySession = new Map<string, MxConnection>();

  /** smtp-server's connect(), with our connection class. */
  override connect(socket: Socket, socketOptions?: ConstructorParameters<typeof SMTPConnection>[2]): void {
    const connection = new MxConnection(this, socket, socketOptions);
    this.bySession.set(connection.id, connection);
    socket.once('close', () => this.bySession.delete(connection.id));
    this.connections.add(connection);
    connection.on('error', (error: Error) => this._onError(error));
    connection.on('connect', (data) => this._onClientConnect(data));
    connection.init();
  }

  /** The open connection of a session, unless it is already closing. */
  connectionOf(session: SMTPServerSession): MxConnection | undefined {
    const connection = this.bySession.get(session.id);
    return connection && !connection._closing && !connection._closed ? connection : undefined;
  }
}

let chunkSequence = 0;

/** One SMTP session with this MX's policy at the protocol level. */
export class MxConnection extends SMTPConnection {
  declare _server: MxServer;
  private errorReplies = 0;
  private commandsBeforeMail = 0;
  private junkCommands = 0;
  private startedAt = 0;
  private greetingPause = LIBRARY_PAUSE;
  private greeted = false;
  /** Socket chunk of the EHLO/HELO, of the previous command, and the chunk the parser is in (pipelining checks). */
  private helloChunk: number | undefined;
  private lastChunk: number | undefined;
  private currentChunk: number | undefined;
  private pipelining: boolean | undefined;

  private get limits(): SessionLimits | undefined {
    return this._server.options.sessionLimits;
  }

  /**
   * 1. smtp-server derives the enhanced code from the reply code alone (550 always becomes
   * 5.1.1): a reply text that already starts with one is sent as it is. A command line
   * over the limit is the client's error (500 5.5.2, RFC 5321 §4.5.3.1.4), not a 421.
   * 3. Postfix's smtpd_hard_error_limit: too many error replies end the session.
   */
  override send(code: number, data?: string | string[] | null, context?: string | false): void {
    if (code === 421 && data === 'Error: Command line too long') {
      super.send(500, '5.5.2 Line too long', false);
      return this.close();
    }
    const ownCode = typeof data === 'string' && LEADING_ENHANCED_CODE.test(data);
    super.send(code, data, ownCode ? false : context);
    const limits = this.limits;
    if (limits && code >= 400 && code !== 421 && !this._closing && ++this.errorReplies >= limits.errorsPerSession) {
      this._closing = true;
      super.send(421, '4.7.0 Too many errors, closing connection', false);
    }
  }

  /**
   * 4. Before each command: a client that talks before the greeting gets 554 and is
   * disconnected (as postscreen does; smtp-server would say 421), one that pipelines
   * without PIPELINING gets 503 and is disconnected, and a session with more than
   * commandsBeforeMail commands without a MAIL, or more than junkCommands
   * NOOP/RSET/VRFY/ETRN/HELP in all, is closed with 421.
   */
  override _onCommand(command: Buffer, callback?: () => void): void {
    const limits = this.limits;
    if (limits && !this._closing) {
      const refuse = (code: number, text: string, close: boolean) => {
        this._closing = true;
        super.send(code, text, false);
        if (close) this.close();
      };
      if (!this._ready) return refuse(554, '5.5.1 Protocol error: talking before the greeting', true);
      const name = command.toString('latin1').split(' ')[0].toUpperCase();
      if (this.unauthorisedPipelining(name)) return refuse(503, '5.5.0 Improper use of SMTP command pipelining', true);
      if (name === 'MAIL') this.commandsBeforeMail = -Infinity;
      else if (++this.commandsBeforeMail > limits.commandsBeforeMail)
        return refuse(421, '4.7.0 Too many commands without a transaction, closing connection', false);
      if (JUNK.has(name) && ++this.junkCommands > limits.junkCommands) {
        return refuse(421, '4.7.0 Too many NOOP, RSET, VRFY, ETRN or HELP commands, closing connection', false);
      }
    }
    super._onCommand(command, callback);
  }

  /** 5. Numbers the socket chunks the parser gets (one sequence across parsers, STARTTLS included), to see which commands came together. */
  override _createParser(): ReturnType<SMTPConnection['_createParser']> {
    const parser = super._createParser();
    const write = parser._write.bind(parser);
    parser._write = (chunk: Buffer, encoding: BufferEncoding, next: (error?: Error | null) => void) => {
      this.currentChunk = ++chunkSequence;
      write(chunk, encoding, next);
    };
    return parser;
  }

  /**
   * Commands sent without waiting for the reply they depend on: anything in the same
   * chunk as EHLO/HELO (before the client could know PIPELINING is offered), and any
   * two commands together after HELO (PIPELINING is an EHLO extension). RFC 2920 §3.1.
   */
  private unauthorisedPipelining(name: string): boolean {
    const chunk = this.currentChunk;
    const together = chunk !== undefined && chunk === this.lastChunk;
    const withHello = together && chunk === this.helloChunk;
    this.lastChunk = chunk;
    if (name === 'EHLO' || name === 'HELO') {
      this.helloChunk = chunk;
      this.pipelining = name === 'EHLO';
    }
    return withHello || (together && this.pipelining === false);
  }

  /**
   * 6. The pause before the greeting is limits.greetingPause, not smtp-server's fixed
   * 100 ms: sooner, our own timer greets; later, the library's timer is sent to wait on.
   * A client that talks meanwhile is an early talker (4. above).
   */
  override init(): void {
    this.startedAt = Date.now();
    const { greetingPause, greetingPauseFor } = this._server.options;
    this.greetingPause = greetingPauseFor?.(this.remoteAddress) ?? greetingPause ?? LIBRARY_PAUSE;
    super.init();
    if (this.greetingPause < LIBRARY_PAUSE && !this.needsUpgrade) setTimeout(() => this.connectionReady(), this.greetingPause).unref();
  }

  override connectionReady(next?: () => void): void {
    if (this.greeted || this._closing || this._closed) return;
    const wait = this.greetingPause - (Date.now() - this.startedAt);
    if (wait > 0) {
      setTimeout(() => this.connectionReady(next), wait).unref();
      return;
    }
    this.greeted = true;
    super.connectionReady(next);
  }

  /** 2. ETRN (RFC 1985), which smtp-server does not know: handed to the server's onEtrn. */
  handler_ETRN(command: Buffer, callback: () => void): void {
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
  }
}
