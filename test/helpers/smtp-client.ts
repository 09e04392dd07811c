import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';

export interface Reply {
  code: number;
  /** The enhanced status code of the last line, '' when there is none. */
  enhanced: string;
  /** Every line of the reply, as received. */
  lines: string[];
  /** Text of the last line after the code (and enhanced code). */
  text: string;
}

/** A raw SMTP client: sends exactly the bytes a test gives it, reads replies line by line. */
export class SmtpClient {
  private buffer = '';
  private readonly waiting: Array<() => void> = [];
  private closed = false;

  private constructor(private socket: Socket) {
    socket.setNoDelay(true);
    this.listen(socket);
  }

  private listen(socket: Socket): void {
    socket.setEncoding('latin1');
    socket.on('data', (data: string) => {
      this.buffer += data;
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  /** STARTTLS; resolves with the server's TLS socket (certificate, protocol) once the handshake is done. */
  async startTls(options: ConnectionOptions = {}): Promise<TLSSocket> {
    const reply = await this.command('STARTTLS');
    if (reply.code !== 220) throw new Error(`STARTTLS: ${reply.lines.join(' | ')}`);
    this.socket.removeAllListeners('data');
    this.socket.removeAllListeners('close');
    const secure = tlsConnect({ socket: this.socket, rejectUnauthorized: false, ...options });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    this.socket = secure;
    this.listen(secure);
    return secure;
  }

  static async connect(port: number, host = '127.0.0.1'): Promise<SmtpClient> {
    const socket = connect(port, host);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new SmtpClient(socket);
  }

  /** Connects and reads the greeting, then says EHLO; returns the EHLO reply. */
  static async session(port: number, ehlo = 'client.example'): Promise<{ client: SmtpClient; ehlo: Reply }> {
    const client = await SmtpClient.connect(port);
    const greeting = await client.reply();
    if (greeting.code !== 220) throw new Error(`greeting: ${greeting.lines.join(' | ')}`);
    return { client, ehlo: await client.command(`EHLO ${ehlo}`) };
  }

  private wake(): void {
    for (const resolve of this.waiting.splice(0)) resolve();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  async command(line: string): Promise<Reply> {
    this.write(`${line}\r\n`);
    return this.reply();
  }

  /** Sends a message body (already dot-stuffed, without the final dot) and ends DATA. */
  async data(body: string | Buffer): Promise<Reply> {
    // One write, as MTAs do: a separate small write for the dot would wait for the
    // server's delayed ACK (Nagle), adding 40 ms to every message.
    this.write(Buffer.concat([Buffer.from(body), Buffer.from('.\r\n')]));
    return this.reply();
  }

  /** MAIL, RCPT(s) and DATA pipelined (RFC 2920), then the body; throws unless every step before the body succeeded. */
  async sendMail(from: string, to: string[], body: string | Buffer): Promise<Reply> {
    const commands = [`MAIL FROM:<${from}>`, ...to.map((rcpt) => `RCPT TO:<${rcpt}>`), 'DATA'];
    this.write(commands.map((command) => `${command}\r\n`).join(''));
    const steps: Reply[] = [];
    for (let i = 0; i < commands.length; i++) steps.push(await this.reply());
    const failed = steps.find((reply, i) => (i === steps.length - 1 ? reply.code !== 354 : reply.code !== 250));
    if (failed) throw new Error(`transaction failed: ${failed.lines.join(' | ')}`);
    return this.data(body);
  }

  async reply(timeoutMs = 10_000): Promise<Reply> {
    const deadline = Date.now() + timeoutMs;
    const lines: string[] = [];
    for (;;) {
      const end = this.buffer.indexOf('\r\n');
      if (end !== -1) {
        const line = this.buffer.slice(0, end);
        this.buffer = this.buffer.slice(end + 2);
        lines.push(line);
        if (line[3] !== '-') return parseReply(lines);
        continue;
      }
      if (this.closed) throw new Error(`connection closed while waiting for a reply (got ${JSON.stringify(lines)})`);
      if (Date.now() >= deadline) throw new Error(`no reply within ${timeoutMs} ms (got ${JSON.stringify(lines)})`);
      await this.nextEvent(deadline);
    }
  }

  /** Waits for data, close, or the deadline, whichever comes first. */
  private nextEvent(deadline: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
      this.waiting.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Resolves when the server has closed the connection. */
  async closedByServer(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() >= deadline) throw new Error('server did not close the connection');
      await this.nextEvent(deadline);
    }
  }

  async quit(): Promise<void> {
    if (!this.closed) {
      await this.command('QUIT').catch(() => undefined);
      this.socket.destroy();
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}

function parseReply(lines: string[]): Reply {
  const last = lines[lines.length - 1];
  const code = Number(last.slice(0, 3));
  const match = /^\d{3}[ -]([245]\.\d{1,3}\.\d{1,3}) /.exec(last);
  return { code, enhanced: match?.[1] ?? '', lines, text: last.slice(4).replace(/^[245]\.\d{1,3}\.\d{1,3} /, '') };
}

/** A small RFC 5322 message with CRLF line ends. */
export function message(subject: string, body = 'Hello.', extraHeaders: string[] = []): string {
  return [
    'From: Sender <sender@remote.example>',
    'To: someone@d1.example',
    `Subject: ${subject}`,
    `Message-ID: <${subject.replace(/\W/g, '')}@remote.example>`,
    ...extraHeaders,
    '',
    body,
    '',
  ].join('\r\n');
}

/** One session: MAIL (with `mailParameters`, which must get 250), then each RCPT one by one; the RCPT replies. */
export async function rcptReplies(port: number, from: string, to: string[], mailParameters = ''): Promise<Reply[]> {
  const { client } = await SmtpClient.session(port);
  try {
    const mail = await client.command(`MAIL FROM:<${from}>${mailParameters ? ` ${mailParameters}` : ''}`);
    assert.equal(mail.code, 250, mail.text);
    const replies: Reply[] = [];
    for (const address of to) replies.push(await client.command(`RCPT TO:<${address}>`));
    return replies;
  } finally {
    await client.quit();
  }
}

/**
 * One message, MAIL and the RCPTs pipelined (a thousand recipients are one write); resolves
 * with the first reply that is not a 250, else with the reply to DATA or to the final dot.
 */
export async function attempt(port: number, from: string, to: string[], body: string): Promise<Reply> {
  const { client } = await SmtpClient.session(port);
  try {
    client.write([`MAIL FROM:<${from}>`, ...to.map((rcpt) => `RCPT TO:<${rcpt}>`)].map((line) => `${line}\r\n`).join(''));
    for (let i = 0; i <= to.length; i++) {
      const reply = await client.reply();
      if (reply.code !== 250) return reply;
    }
    const data = await client.command('DATA');
    if (data.code !== 354) return data;
    return await client.data(body);
  } finally {
    await client.quit();
  }
}

/** Sends raw commands (to set RFC 3461 parameters) and the body; returns the queue id. */
export async function sendRaw(port: number, commands: string[], body: string): Promise<string> {
  const { client } = await SmtpClient.session(port);
  try {
    for (const command of commands) {
      const reply = await client.command(command);
      assert.ok(reply.code === 250 || reply.code === 354, `${command}: ${reply.lines.join(' | ')}`);
    }
    const reply = await client.data(body);
    assert.equal(reply.code, 250, reply.lines.join(' | '));
    return queuedId(reply.text);
  } finally {
    await client.quit();
  }
}

/** The queue id in a 250 reply to DATA ("250 2.0.0 Ok: queued as <ID>"); throws when there is none. */
export function queuedId(text: string): string {
  const id = /queued as (\w+)/.exec(text)?.[1];
  if (!id) throw new Error(`no queue id in ${JSON.stringify(text)}`);
  return id;
}

/** A reply's code and enhanced status code, to compare with [550, '5.7.1']. */
export function pick(reply: { code: number; enhanced: string }): [number, string] {
  return [reply.code, reply.enhanced];
}
