import { Duplex, PassThrough } from 'node:stream';
import { SmtpSession } from '../../src/relay/session.js';

/**
 * What the scripted primary does with a command: a reply line ("250 ok"), 'drop' (close
 * the connection), 'lose' (at the final dot: queue the message, then close before the
 * reply: the one case where the client cannot know), or undefined for the default.
 */
export type ScriptAnswer = string | 'drop' | 'lose' | undefined;

/** The default extensions: what Postfix offers. */
export const POSTFIX_EXTENSIONS = ['PIPELINING', 'SIZE 10240000', 'ENHANCEDSTATUSCODES', '8BITMIME', 'DSN', 'SMTPUTF8'];

/**
 * A primary without a socket, for the relay's unit tests: it keeps the session
 * state an SMTP server keeps (so it answers 503 to a nested MAIL or a stray RCPT and
 * 554 to DATA without recipients, as Postfix does), and a script can override any
 * reply or drop the connection at any point. "." stands for the end of the data.
 */
export class ScriptedPrimary {
  /** Every command received, in order ("." for each end of data), over all sessions. */
  readonly commands: string[] = [];
  /** Messages whose final dot was answered 2xx: sender, recipients and the data as sent (dot-stuffed). */
  readonly delivered: Array<{ from: string; to: string[]; data: string }> = [];
  /** Recipients of the messages queued under a 'lose': the client cannot know they went. */
  readonly lost: string[][] = [];
  /** Bytes the client wrote, all told. */
  bytesIn = 0;
  /** Commands the client sent out of sequence: MAIL inside a transaction, DATA without an accepted recipient. */
  sequenceErrors = 0;

  constructor(
    private readonly script: (command: string, primary: ScriptedPrimary) => ScriptAnswer = () => undefined,
    private readonly extensions = POSTFIX_EXTENSIONS,
  ) {}

  /** A new session to this primary (its own transaction state): greeting and EHLO done. */
  session(): Promise<SmtpSession> {
    const toServer = new PassThrough();
    const toClient = new PassThrough();
    const stream = Duplex.from({ readable: toClient, writable: toServer });
    const state = { inTransaction: false, accepted: [] as string[], from: '', inData: false, closed: false };
    let buffered = '';
    const answer = (text: string) => {
      if (text === 'drop' || text === 'lose') {
        state.closed = true;
        toClient.end(); // the client reads the end of the connection
        return;
      }
      toClient.write(Buffer.from(`${text}\r\n`, 'latin1')); // bytes, as commands are read
    };
    toServer.on('data', (chunk: Buffer) => {
      this.bytesIn += chunk.length;
      buffered += chunk.toString('latin1');
      while (!state.closed) {
        if (state.inData) {
          const end = buffered.indexOf('\r\n.\r\n');
          if (end === -1) return;
          const data = buffered.slice(0, end + 2);
          buffered = buffered.slice(end + 5);
          state.inData = false;
          const reply = this.respond('.', state);
          if (reply === 'lose' || (reply !== 'drop' && reply.startsWith('2'))) this.delivered.push({ from: state.from, to: state.accepted, data });
          if (reply === 'lose') this.lost.push(state.accepted);
          state.inTransaction = false;
          state.accepted = [];
          answer(reply);
          continue;
        }
        const end = buffered.indexOf('\r\n');
        if (end === -1) return;
        const line = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        const reply = this.respond(line, state);
        if (reply.startsWith('354')) state.inData = true;
        answer(reply);
      }
    });
    toClient.write('220 primary.test ESMTP\r\n');
    return SmtpSession.start(stream, { name: 'mx2.test' });
  }

  private respond(line: string, state: SessionState): string {
    this.commands.push(line);
    const verb = line.split(/[ :]/)[0].toUpperCase();
    if ((verb === 'MAIL' && state.inTransaction) || (verb === 'DATA' && state.accepted.length === 0)) this.sequenceErrors++;
    const reply = this.script(line, this) ?? this.proper(verb, line, state);
    if (reply === 'drop' || reply === 'lose') return reply;
    // The server's state follows the reply it gave.
    const positive = reply.startsWith('2') || reply.startsWith('3');
    if (verb === 'MAIL' && positive && !state.inTransaction) {
      state.inTransaction = true;
      state.from = /<([^>]*)>/.exec(line)?.[1] ?? '';
    }
    if (verb === 'RCPT' && positive) state.accepted.push(/<([^>]*)>/.exec(line)?.[1] ?? '');
    if (verb === 'RSET') {
      state.inTransaction = false;
      state.accepted = [];
    }
    return reply;
  }

  /** What a real server answers, by its state. */
  private proper(verb: string, line: string, state: SessionState): string {
    switch (verb) {
      case 'EHLO':
        return ['250-primary.test', ...this.extensions.map((e, i) => `250${i === this.extensions.length - 1 ? ' ' : '-'}${e}`)].join('\r\n');
      case 'MAIL':
        return state.inTransaction ? '503 5.5.1 Error: nested MAIL command' : '250 2.1.0 Ok';
      case 'RCPT':
        return state.inTransaction ? '250 2.1.5 Ok' : '503 5.5.1 Error: need MAIL command';
      case 'DATA':
        if (!state.inTransaction) return '503 5.5.1 Error: need RCPT command';
        return state.accepted.length > 0 ? '354 End data with <CR><LF>.<CR><LF>' : '554 5.5.1 Error: no valid recipients';
      case '.':
        return '250 2.0.0 Ok: queued';
      case 'RSET':
        return '250 2.0.0 Ok';
      case 'QUIT':
        return '221 2.0.0 Bye';
      default:
        return `502 5.5.2 Error: command not recognized: ${line.slice(0, 20)}`;
    }
  }
}

interface SessionState {
  inTransaction: boolean;
  accepted: string[];
  from: string;
}
