import { readFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import type { Duplex, Readable } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import type { HostPort } from '../config/schema.js';
import { dotStuffer } from './dot-stuff.js';

/** The primary could not be talked to at all: refused, timed out, closed, 421 or no 2xx greeting. */
export class PrimaryUnreachable extends Error {}

/** An open session ended under us: closed, reset, timed out, a 421, or a reply that is not SMTP. */
export class SessionLost extends Error {}

/** A command that would hold CR, LF or NUL: nothing of it is written, the session goes on. */
export class UnsafeCommand extends Error {}

/** What no command may carry: its own line end, or a NUL (RFC 5321 §2.3.8, §4.1.1). */
const UNSAFE = /[\r\n\0]/;

/**
 * The bytes of commands, each ended by CRLF: the one place where the relay, the RCPT probe
 * and the DSN sessions turn text into bytes. UTF-8 (RFC 6531): a character outside ASCII
 * becomes bytes of 0x80 and over, never a CR, LF or NUL. A command holding one of those
 * (a value that came from a client) is refused whole.
 */
export function commandBytes(lines: readonly string[]): Buffer {
  const unsafe = lines.find((line) => UNSAFE.test(line));
  if (unsafe !== undefined) throw new UnsafeCommand(`command not sent: it holds CR, LF or NUL: ${JSON.stringify(unsafe.slice(0, 100))}`);
  return Buffer.from(lines.map((line) => `${line}\r\n`).join(''), 'utf8');
}

export interface Reply {
  code: number;
  /** The whole reply, lines joined by a space: "250 2.1.5 Ok". */
  text: string;
}

export interface SessionOptions {
  /** Our EHLO name. */
  name: string;
  /** Seconds for the connection and the greeting. */
  connectTimeout: number;
  /** Seconds the primary may stay silent while we wait for a reply or it reads our data. */
  commandTimeout: number;
  /** TLS server name (SNI) when it is not the host we connect to. */
  servername?: string;
  /** Verify the peer (primary.tls): STARTTLS required, certificate checked against `ca` (else the system's) or pinned by `fingerprint`. */
  verify?: { ca?: string; fingerprint?: string };
}

/** A reply's lines are capped: a peer that sends an endless line is not an SMTP server. */
const MAX_REPLY_BYTES = 64 * 1024;

/**
 * One SMTP client session (RFC 5321) on a socket: greeting, EHLO, opportunistic
 * STARTTLS, then pipelined commands (RFC 2920) and DATA. Replies are matched to
 * commands in order; every way a session can end becomes a SessionLost for whoever
 * waits. It knows nothing about messages or recipients (transaction.ts does).
 */
export class SmtpSession {
  private readonly extensions = new Map<string, string>();
  private readonly replies: Reply[] = [];
  private readonly waiting: Array<{ resolve: (reply: Reply) => void; reject: (error: Error) => void }> = [];
  private partial: string[] = [];
  /** The name the primary gave in its greeting (for a DSN's Remote-MTA). */
  peerName: string | undefined;
  private buffered = '';
  private lost: SessionLost | undefined;

  private constructor(private readonly stream: Duplex) {
    stream.setEncoding('utf8'); // a byte that is not UTF-8 becomes U+FFFD, a sequence split across reads is joined
    stream.on('data', (text: string) => this.read(text));
    stream.on('error', (error: Error) => this.end(`${(error as NodeJS.ErrnoException).code ?? 'error'}: ${error.message}`));
    stream.on('close', () => this.end('connection closed by the primary'));
    stream.on('end', () => this.end('connection closed by the primary'));
  }

  /** Connects, reads the greeting, says EHLO, and starts TLS when offered (retrying in clear if the handshake fails). */
  static async open(address: HostPort, options: SessionOptions): Promise<SmtpSession> {
    try {
      return await SmtpSession.openOnce(address, options, true);
    } catch (error) {
      if (!(error instanceof TlsFailed) || options.verify) throw error;
      return SmtpSession.openOnce(address, options, false); // opportunistic TLS (RFC 7435), as Postfix's "may" level
    }
  }

  private static async openOnce(address: HostPort, options: SessionOptions, tryTls: boolean): Promise<SmtpSession> {
    const socket = netConnect({ host: address.host, port: address.port, noDelay: true }); // each write is a whole step: never wait for an ACK (Nagle)
    watchTimeout(socket, options.connectTimeout);
    const session = await SmtpSession.start(socket, options).catch((error: Error) => {
      socket.destroy();
      throw error instanceof PrimaryUnreachable ? error : new PrimaryUnreachable(error.message);
    });
    const { verify } = options;
    const refuse = (why: string) => {
      socket.destroy();
      return new PrimaryUnreachable(`${why}, and primary.tls requires a verified TLS session`);
    };
    if (!tryTls || !session.offers('STARTTLS')) {
      if (verify) throw refuse('no STARTTLS offered');
      return session.ready(socket, options);
    }
    const answer = await session.command('STARTTLS').catch(() => undefined);
    if (answer?.code !== 220) {
      if (verify) throw refuse(`STARTTLS answered ${answer?.text ?? 'nothing'}`);
      if (!session.usable) throw new PrimaryUnreachable('connection lost after STARTTLS');
      return session.ready(socket, options);
    }
    socket.removeAllListeners('data');
    const servername = options.servername ?? (/^[\d.:]+$/.test(address.host) ? undefined : address.host);
    const secure = tlsConnect({
      socket,
      host: servername ?? address.host, // what the certificate must name (an IP address too)
      servername,
      // A pinned fingerprint is checked below instead of the chain; a CA file replaces the system's.
      rejectUnauthorized: Boolean(verify && !verify.fingerprint),
      ...(verify?.ca ? { ca: readFileSync(verify.ca) } : {}),
    });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', (error) => reject(verify ? new PrimaryUnreachable(`TLS: ${error.message}`) : new TlsFailed(error.message)));
    }).catch((error: Error) => {
      secure.destroy();
      throw error;
    });
    const fingerprint = secure.getPeerCertificate().fingerprint256;
    if (verify?.fingerprint && fingerprint?.toUpperCase() !== verify.fingerprint.toUpperCase()) {
      secure.destroy();
      throw new PrimaryUnreachable(`TLS: the primary's certificate ${fingerprint} is not the pinned ${verify.fingerprint}`);
    }
    watchTimeout(secure, options.connectTimeout);
    const encrypted = new SmtpSession(secure);
    encrypted.peerName = session.peerName;
    await encrypted.hello(options.name).catch((error: Error) => {
      secure.destroy();
      throw new PrimaryUnreachable(error.message);
    });
    return encrypted.ready(secure, options);
  }

  /** A session over any stream (tests script a primary on one): greeting and EHLO. */
  static async start(stream: Duplex, options: Pick<SessionOptions, 'name'>): Promise<SmtpSession> {
    const session = new SmtpSession(stream);
    const greeting = await session.reply();
    if (greeting.code !== 220) {
      session.close();
      throw new PrimaryUnreachable(`greeting: ${greeting.text}`);
    }
    session.peerName = /^[A-Za-z0-9.-]+$/.test(greeting.lines[0]?.split(' ')[0] ?? '') ? greeting.lines[0].split(' ')[0] : undefined;
    await session.hello(options.name);
    return session;
  }

  private ready(socket: Socket, options: SessionOptions): SmtpSession {
    watchTimeout(socket, options.commandTimeout);
    return this;
  }

  private async hello(name: string): Promise<void> {
    let reply = await this.command(`EHLO ${name}`);
    if (reply.code >= 500 && reply.code !== 521) reply = await this.command(`HELO ${name}`);
    if (reply.code !== 250) throw new PrimaryUnreachable(`EHLO: ${reply.text}`);
    this.extensions.clear();
    for (const line of reply.lines.slice(1)) {
      const [keyword, ...params] = line.split(' ');
      this.extensions.set(keyword.toUpperCase(), params.join(' '));
    }
  }

  /** Whether the primary's EHLO reply lists this keyword (PIPELINING, SIZE, DSN, SMTPUTF8, 8BITMIME, STARTTLS). */
  offers(keyword: string): boolean {
    return this.extensions.has(keyword);
  }

  /** The primary's SIZE limit from EHLO (RFC 1870); undefined when it gave none (or 0: no limit). */
  get sizeLimit(): number | undefined {
    const limit = Number(this.extensions.get('SIZE'));
    return Number.isInteger(limit) && limit > 0 ? limit : undefined;
  }

  get usable(): boolean {
    return !this.lost;
  }

  /** Sends one command and waits for its reply. */
  async command(line: string): Promise<Reply & { lines: string[] }> {
    this.write(commandBytes([line]));
    return this.reply();
  }

  /** Sends commands in one write (PIPELINING) and resolves with their replies, in order. */
  async pipeline(lines: readonly string[]): Promise<Reply[]> {
    this.write(commandBytes(lines));
    const replies: Reply[] = [];
    for (let i = 0; i < lines.length; i++) replies.push(await this.reply());
    return replies;
  }

  /**
   * Sends the message after a 354: dot-stuffed, then the final dot; resolves with the
   * reply to it. A failure to read the body (the spool) ends the session without the
   * final dot, so the primary never takes a truncated message, and is thrown as it is.
   */
  async data(body: Readable): Promise<Reply> {
    const stuff = dotStuffer();
    let held: Buffer | undefined; // the last chunk goes out with the final dot: a small message is one write
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        if (this.lost) throw this.lost;
        if (held && !this.stream.write(held)) await this.drained();
        held = stuff(chunk);
      }
    } catch (error) {
      body.destroy();
      if (!(error instanceof SessionLost)) this.close();
      throw error;
    }
    this.write(held ? Buffer.concat([held, stuff.end()]) : stuff.end());
    return this.reply();
  }

  /** QUIT when the session is healthy; the socket closes either way. */
  quit(): void {
    if (this.lost) return this.close();
    this.write(commandBytes(['QUIT']));
    this.stream.end();
    this.end('closed by us');
    setTimeout(() => this.stream.destroy(), 1000).unref();
  }

  close(): void {
    this.end('closed by us');
    this.stream.destroy();
  }

  private write(bytes: Buffer): void {
    if (this.lost) return; // the next reply() rejects with the reason
    this.stream.write(bytes);
  }

  private drained(): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.stream.off('drain', done);
        this.stream.off('close', done);
        resolve();
      };
      this.stream.on('drain', done);
      this.stream.on('close', done);
    });
  }

  private reply(): Promise<Reply & { lines: string[] }> {
    const ready = this.replies.shift();
    if (ready) return Promise.resolve(ready as Reply & { lines: string[] });
    if (this.lost) return Promise.reject(this.lost);
    return new Promise((resolve, reject) => this.waiting.push({ resolve: resolve as (reply: Reply) => void, reject }));
  }

  private read(text: string): void {
    this.buffered += text;
    for (let end = this.buffered.indexOf('\n'); end !== -1; end = this.buffered.indexOf('\n')) {
      const line = this.buffered.slice(0, end).replace(/\r$/, '');
      this.buffered = this.buffered.slice(end + 1);
      const match = /^(\d{3})([ -])(.*)$/.exec(line) ?? (/^\d{3}$/.test(line) ? [line, line, ' ', ''] : null);
      if (!match || (this.partial.length > 0 && !this.partial[0].startsWith(match[1]))) {
        return this.end(`not an SMTP reply: ${JSON.stringify(line.slice(0, 100))}`);
      }
      this.partial.push(line);
      if (match[2] === '-') continue;
      const lines = this.partial.map((l) => l.slice(4));
      this.partial = [];
      const reply = { code: Number(match[1]), text: `${match[1]} ${lines.join(' ')}`.trimEnd(), lines };
      const waiter = this.waiting.shift();
      if (waiter) waiter.resolve(reply);
      else this.replies.push(reply);
      if (reply.code === 421) this.end(reply.text); // the primary closes the session (RFC 5321 §3.8)
    }
    if (this.buffered.length > MAX_REPLY_BYTES) this.end('reply line too long');
  }

  private end(reason: string): void {
    if (this.lost) return;
    this.lost = new SessionLost(reason);
    for (const waiter of this.waiting.splice(0)) waiter.reject(this.lost);
    if (reason !== 'closed by us') this.stream.destroy();
  }
}

class TlsFailed extends PrimaryUnreachable {}

/** Ends the socket when the primary stays silent this many seconds (while we wait for it, or it for our data). */
function watchTimeout(socket: Socket, seconds: number): void {
  socket.setTimeout(seconds * 1000);
  socket.removeAllListeners('timeout');
  socket.on('timeout', () => socket.destroy(Object.assign(new Error(`no answer from the primary for ${seconds} s`), { code: 'ETIMEDOUT' })));
}
