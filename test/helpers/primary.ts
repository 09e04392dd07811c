import { SMTPServer, type SMTPServerSession } from 'smtp-server';
import { createServer } from 'node:net';

export interface Received {
  from: string;
  to: string[];
  data: Buffer;
  /** MAIL FROM parameters as sent (SIZE, BODY, SMTPUTF8, RET, ENVID). */
  mailArgs: Record<string, string | true>;
  /** RCPT TO parameters as sent (NOTIFY, ORCPT), one object per recipient. */
  rcptArgs: Array<Record<string, string | true>>;
}

/** A reply to force: code and text, e.g. [450, '4.2.0 mailbox busy']. */
export type ForcedReply = [number, string];

/** A free loopback port (for a primary that starts later on a known port). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** The primary MX in tests: a real smtp-server that records what it is given. */
export class TestPrimary {
  readonly received: Received[] = [];
  /** Per recipient (lowercase): the RCPT reply to give instead of 250. */
  rcptReplies = new Map<string, ForcedReply>();
  /** Refuse this many connections with a 421 greeting first. */
  greet421 = 0;
  /** Cut this many connections in the middle of DATA first. */
  dropInData = 0;
  /** Wait this long before answering the final dot. */
  dataDelayMs = 0;
  connections = 0;
  /** Every RCPT address asked, in order (RCPT probes included). */
  readonly rcptCommands: string[] = [];
  /** When each of them came (epoch ms). */
  readonly rcptTimes: number[] = [];
  /** Most connections open at once. */
  peakConnections = 0;
  /** Called at each RCPT, before it is answered: a test looks at the sender's state at that moment. */
  onRcpt: ((address: string) => void) | undefined;
  private open = 0;
  private server: SMTPServer | undefined;

  constructor(
    readonly port: number,
    /** keepData: false records envelopes only (the drain benchmark's 10,000 messages). */
    /** tls: PEM key and certificate; STARTTLS is offered only with them. */
    private readonly options: { smtpUtf8?: boolean; dsn?: boolean; keepData?: boolean; size?: number; tls?: { key: Buffer; cert: Buffer } } = {},
  ) {}

  async start(): Promise<void> {
    const server = new SMTPServer({
      name: 'primary.test.example',
      authOptional: true,
      size: this.options.size ?? 50_000_000,
      disabledCommands: this.options.tls ? ['AUTH'] : ['AUTH', 'STARTTLS'],
      ...this.options.tls,
      hideSMTPUTF8: this.options.smtpUtf8 === false,
      hideDSN: !this.options.dsn,
      disableReverseLookup: true,
      logger: false,
      onClose: () => {
        this.open--;
      },
      onConnect: (_session, callback) => {
        this.connections++;
        this.peakConnections = Math.max(this.peakConnections, ++this.open);
        if (this.greet421 > 0) {
          this.greet421--;
          return callback(Object.assign(new Error('4.3.2 try later'), { responseCode: 421 }));
        }
        callback();
      },
      onRcptTo: (address, _session, callback) => {
        this.rcptCommands.push(address.address);
        this.rcptTimes.push(Date.now());
        this.onRcpt?.(address.address);
        const forced = this.rcptReplies.get(address.address.toLowerCase());
        callback(forced ? Object.assign(new Error(forced[1]), { responseCode: forced[0] }) : undefined);
      },
      onData: (stream, session, callback) => {
        const chunks: Buffer[] = [];
        let dropped = false;
        stream.on('data', (chunk: Buffer) => {
          if (this.options.keepData !== false) chunks.push(chunk);
          if (this.dropInData > 0 && !dropped) {
            dropped = true;
            this.dropInData--;
            this.socketOf(session)?.destroy();
          }
        });
        stream.on('end', () => {
          if (dropped) return;
          const envelope = session.envelope;
          this.received.push({
            from: envelope.mailFrom ? envelope.mailFrom.address : '',
            to: envelope.rcptTo.map((r) => r.address),
            data: Buffer.concat(chunks),
            mailArgs: (envelope.mailFrom && envelope.mailFrom.args) || {},
            rcptArgs: envelope.rcptTo.map((r) => r.args || {}),
          });
          setTimeout(() => callback(null, 'queued on primary'), this.dataDelayMs);
        });
        stream.on('error', () => undefined);
      },
    });
    server.on('error', () => undefined); // clients that vanish (a killed daemon) are part of the tests
    await new Promise<void>((resolve) => server.listen(this.port, '127.0.0.1', resolve));
    this.server = server;
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    for (const connection of server.connections) this.socketOfConnection(connection)?.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Message-IDs received, in order. */
  messageIds(): string[] {
    return this.received.map((m) => /^Message-ID: (.*)$/im.exec(m.data.toString('latin1'))?.[1] ?? '?');
  }

  private socketOf(session: SMTPServerSession) {
    for (const connection of this.server?.connections ?? []) {
      if (connection.session.id === session.id) return this.socketOfConnection(connection);
    }
    return undefined;
  }

  /** smtp-server does not expose a connection's socket; cutting one mid-DATA needs it. */
  private socketOfConnection(connection: unknown) {
    return (connection as { _socket?: { destroy(): void } })._socket;
  }
}
