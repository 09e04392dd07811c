import { readFileSync } from 'node:fs';
import { BlockList, isIPv4, type AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { SMTPServerDataStream, SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import { parseListenAddress, type Config } from '../config/schema.js';
import type { Directory } from '../directory/directory.js';
import type { Envelope } from '../spool/envelope.js';
import type { IncomingMessage, Spool } from '../spool/spool.js';
import type { SpoolCondition } from '../spool/watch.js';
import { clientKey } from './client-key.js';
import { MessageInspector } from './inspect.js';
import { asciiAddress, normalizeDomain } from '../directory/names.js';
import { checkRecipient, normalizeRecipient } from './policy.js';
import { receivedHeader } from './received.js';
import { SmtpReply } from './replies.js';
import { MxServer, type MxOptions } from './mx-server.js';
import { countDataBytes } from './young-gc.js';
import { refusalReason, type Metrics } from '../control/metrics.js';

export interface ReceiveOptions {
  config: Config;
  directory: Directory;
  spool: Spool;
  log: Logger;
  /** Told about every message once it is durably queued (the relay). */
  onQueued?: (envelope: Envelope) => void;
  /** Counters for Prometheus. */
  metrics?: Metrics;
  /** ETRN (RFC 1985) from an allowed client: start delivery for this domain; resolves with the messages waiting. */
  onEtrn?: (domain: string) => number;
  /** Whether the spool can take mail now (spool/watch.ts); absent: always. */
  spoolCondition?: () => SpoolCondition;
}

/** Bytes left for what a primary adds to a message before its own size check. */
const PRIMARY_SIZE_MARGIN = 4096;

/** What the policy keeps about a session it admitted. */
interface AdmittedSession {
  /** The client it counts for (client-key.ts). */
  client: string;
  /** limits.sessionTimeout */
  timer: NodeJS.Timeout;
  /** In DATA: a graceful stop lets it finish. */
  inData: boolean;
}

const STORAGE_FAILURE = () => new SmtpReply(452, '4.3.1', 'Insufficient system storage, try again later');

/**
 * The SMTP side: smtp-server on every `listen` address, with this MX's policy at
 * each step. It answers 250 to DATA only once the spool says the message is durable.
 */
export class ReceiveServer {
  private readonly servers: MxServer[] = [];
  /** Sessions admitted, by session id. */
  private readonly sessions = new Map<string, AdmittedSession>();
  /** Open sessions per client (client-key.ts). */
  private readonly perClient = new Map<string, number>();
  /** Messages being written to tmp/: a shutdown removes those whose session it cut. */
  private readonly writing = new Set<IncomingMessage>();
  private closing = false;
  /** Sessions are served only once the daemon is fully up (and no longer root): until then, 421. */
  private serving = false;
  private bound: AddressInfo[] = [];
  /** The smallest SIZE the primaries announce, less a margin for what they add; undefined until one was seen. */
  private primaryLimit: number | undefined;
  /** Whether the primaries speak SMTPUTF8 (as last seen): it is offered here only then. */
  private primaryUtf8 = true;

  constructor(private readonly options: ReceiveOptions) {}

  /** Starts listening; resolves with the bound addresses (port 0 picks a free one). */
  async listen(): Promise<AddressInfo[]> {
    const { config } = this.options;
    const smtpOptions = this.smtpOptions();
    const bound = this.bound;
    for (const entry of config.listen) {
      const { host, port } = parseListenAddress(entry)!;
      const server = new MxServer(smtpOptions);
      server.on('error', (error) => this.options.log.warn({ err: error }, 'smtp error'));
      this.servers.push(server);
      await new Promise<void>((resolve, reject) => {
        const failed = (error: Error) => reject(new Error(`cannot listen on ${entry}: ${error.message}`));
        server.server.once('error', failed);
        server.listen(port, host, () => {
          server.server.off('error', failed);
          resolve();
        });
      });
      bound.push(server.server.address() as AddressInfo);
    }
    this.options.log.info({ event: 'listening', listen: bound.map((a) => `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`) }, 'listening');
    return bound;
  }

  /** Starts serving sessions (listen() only binds). */
  startServing(): void {
    this.serving = true;
  }

  get isClosing(): boolean {
    return this.closing;
  }

  get openSessions(): number {
    return this.sessions.size;
  }

  get addresses(): readonly AddressInfo[] {
    return this.bound;
  }

  /**
   * Graceful stop: no new connections, sessions not in DATA get 421 now, sessions
   * in DATA get their answer; after `shutdownTimeout` everything left gets 421.
   */
  async close(): Promise<void> {
    this.closing = true;
    const closed = this.servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    for (const server of this.servers) {
      for (const connection of server.connections) {
        if (!this.sessions.get(connection.session.id)?.inData) connection.send(421, '4.3.2 Service shutting down, try again later');
      }
    }
    await Promise.all(closed);
    // Sessions cut in DATA at the end of shutdownTimeout leave their stream unfinished: nothing else removes their files.
    await Promise.all([...this.writing].map((message) => message.discard()));
  }

  private smtpOptions(): SMTPServerOptions & MxOptions {
    const { config } = this.options;
    const tls = config.tls && { ...this.tlsFiles(), minVersion: config.tls.minVersion };
    return {
      name: config.hostname,
      banner: 'alternc-secondarymx',
      size: this.messageSize,
      maxRecipients: config.limits.recipients,
      maxCommandLength: config.limits.commandLength,
      sessionLimits: {
        errorsPerSession: config.limits.errorsPerSession,
        commandsBeforeMail: config.limits.commandsBeforeMail,
        junkCommands: config.limits.junkCommands,
      },
      greetingPause: config.limits.greetingPause * 1000,
      socketTimeout: config.limits.idleTimeout * 1000,
      closeTimeout: config.limits.shutdownTimeout * 1000,
      authOptional: true,
      disabledCommands: tls ? ['AUTH', 'WIZ'] : ['AUTH', 'STARTTLS', 'WIZ'], // WIZ: sendmail's debug leftover, "500 command not recognized"
      hideENHANCEDSTATUSCODES: false,
      hideSMTPUTF8: !this.primaryUtf8,
      hideDSN: false,
      hideREQUIRETLS: true, // the relay to the primary cannot promise TLS end to end
      disableReverseLookup: true,
      // Addresses are judged by our policy (policy.ts), as the primary's Postfix judges them: a
      // trailing dot or a domain label starting with "_" (AlternC's checkfqdn allows it) is not
      // a syntax error there, so smtp-server's stricter check must not refuse it here.
      lenientAddressParsing: true,
      logger: false,
      ...tls,
      onConnect: (session, callback) => callback(this.admit(session)),
      onEtrn: (node, session, reply) => this.etrn(node, session, reply),
      onClose: (session) => this.release(session),
      onMailFrom: (address, session, callback) => callback(this.sender(address.address, session)),
      onRcptTo: (address, session, callback) => callback(this.recipient(address.address, session)),
      onData: (stream, session, callback) => {
        const admitted = this.sessions.get(session.id);
        if (admitted) admitted.inData = true;
        const slow = setTimeout(() => this.cut(session, '4.4.2 DATA took too long, closing connection'), config.limits.dataTimeout * 1000);
        this.receive(stream, session)
          .finally(() => clearTimeout(slow))
          .then(
            (reply) => callback(null, reply),
            (error: unknown) => callback(error instanceof SmtpReply ? error : this.internalError(error, session)),
          )
          .finally(() => {
            if (admitted) admitted.inData = false;
          });
      },
    };
  }

  private admit(session: SMTPServerSession): SmtpReply | null {
    const { limits, hostname } = this.options.config;
    if (this.closing) return shuttingDown();
    if (!this.serving) return new SmtpReply(421, '4.3.2', `${hostname} Service starting, try again in a moment`);
    const client = clientKey(session.remoteAddress, limits.clientIpv6Prefix);
    const fromClient = this.perClient.get(client) ?? 0;
    const refuse = (why: string, limit: number) => {
      this.options.log.warn({ client: session.remoteAddress, limit }, why);
      return new SmtpReply(421, '4.7.0', `${hostname} Too many connections${why.includes('client') ? ' from your address' : ''}, try again later`);
    };
    if (this.sessions.size >= limits.connections) return refuse('connection limit reached', limits.connections);
    if (fromClient >= limits.connectionsPerClient) return refuse('per-client connection limit reached', limits.connectionsPerClient);
    const timer = setTimeout(() => this.cut(session, '4.4.2 Session took too long, closing connection'), limits.sessionTimeout * 1000);
    this.sessions.set(session.id, { client, timer, inData: false });
    this.perClient.set(client, fromClient + 1);
    return null;
  }

  private release(session: SMTPServerSession): void {
    const admitted = this.sessions.get(session.id);
    if (admitted === undefined) return; // refused at connect
    const { client, timer } = admitted;
    this.sessions.delete(session.id);
    clearTimeout(timer);
    const left = (this.perClient.get(client) ?? 1) - 1;
    if (left > 0) this.perClient.set(client, left);
    else this.perClient.delete(client);
  }

  /** Ends a session that overstayed (slow drip): 421, then the connection is closed. */
  private cut(session: SMTPServerSession, text: string): void {
    const connection = this.servers.map((server) => server.connectionOf(session)).find((open) => open !== undefined);
    if (!connection) return;
    this.options.log.info({ client: session.remoteAddress, reason: text }, 'session cut off');
    connection.send(421, text);
  }

  private etrn(node: string, session: SMTPServerSession, reply: (code: number, text: string) => void): void {
    const { config, log, onEtrn } = this.options;
    if (!config.relay.etrnClients.some((range) => inRange(session.remoteAddress, range))) {
      log.info({ client: session.remoteAddress, node }, 'ETRN refused: client not in relay.etrnClients');
      return reply(459, `4.7.1 ${node || 'ETRN'}: not allowed from this client`);
    }
    const domain = normalizeDomain(node.replace(/^@/, ''));
    if (!domain) return reply(501, '5.5.4 Syntax: ETRN domain');
    const waiting = onEtrn?.(domain) ?? 0;
    log.info({ client: session.remoteAddress, domain, waiting }, 'ETRN: flushing domain');
    if (waiting === 0) return reply(251, `2.0.0 OK no messages waiting for node ${domain}`);
    reply(250, `2.0.0 Queuing for node ${domain} started (${waiting} messages)`);
  }

  private sender(address: string, session: SMTPServerSession): SmtpReply | null {
    if (this.closing) return shuttingDown();
    const spool = this.options.spoolCondition?.() ?? 'ok';
    if (spool === 'low') return STORAGE_FAILURE();
    if (spool === 'gone') return new SmtpReply(451, '4.3.0', 'Spool unavailable, try again later');
    if (session.transaction > this.options.config.limits.messagesPerConnection) {
      return new SmtpReply(421, '4.7.0', 'Too many messages on one connection, please reconnect');
    }
    return needsSmtpUtf8(address, session, this.primaryUtf8);
  }

  /** Bytes a message may have here: limits.messageSize, and never more than the primaries will take. */
  get messageSize(): number {
    return Math.min(this.options.config.limits.messageSize, this.primaryLimit ?? Infinity);
  }

  /**
   * Promises senders no more than the primaries take (from their EHLO): their SIZE limit
   * (less a margin for what a primary adds before it counts: its own Received header;
   * Postfix counts envelope records too), and SMTPUTF8 only if they all speak it, so no
   * message is accepted that could only come back as a bounce.
   */
  promise(size: number | undefined, smtpUtf8: boolean): void {
    this.primaryLimit = size === undefined ? undefined : Math.max(1, size - PRIMARY_SIZE_MARGIN);
    this.primaryUtf8 = smtpUtf8;
    for (const server of this.servers) Object.assign(server.options, { size: this.messageSize, hideSMTPUTF8: !smtpUtf8 });
  }

  /** A reloaded config (SIGHUP): limits and policy apply to new commands; TLS files are re-read. */
  updateConfig(config: Config): void {
    const previous = this.options.config;
    this.options.config = config;
    let options: SMTPServerOptions & MxOptions;
    try {
      options = this.smtpOptions(); // reads the TLS files: unreadable ones refuse the whole reload
    } catch (error) {
      this.options.config = previous;
      throw error;
    }
    for (const server of this.servers) {
      for (const key of ['size', 'maxRecipients', 'maxCommandLength', 'socketTimeout', 'closeTimeout', 'sessionLimits', 'minVersion'] as const) {
        (server.options as unknown as Record<string, unknown>)[key] = (options as Record<string, unknown>)[key];
      }
    }
    this.reloadTls();
  }

  /** Re-reads tls.key and tls.cert (SIGHUP): new sessions get them, open ones keep theirs. */
  reloadTls(): void {
    if (!this.options.config.tls) return;
    const files = this.tlsFiles();
    for (const server of this.servers) server.updateSecureContext(files);
    this.options.log.info({ event: 'tls_reloaded', cert: this.options.config.tls.cert }, 'TLS certificate reloaded');
  }

  private tlsFiles(): { key: Buffer; cert: Buffer } {
    const { key, cert } = this.options.config.tls!;
    return { key: readFileSync(key), cert: readFileSync(cert) };
  }

  private recipient(address: string, session: SMTPServerSession): SmtpReply | null {
    try {
      const refusal = needsSmtpUtf8(address, session, this.primaryUtf8);
      if (refusal) throw refusal;
      checkRecipient(address, this.options.directory.current, this.options.config.recipientDelimiter);
      return null;
    } catch (error) {
      if (!(error instanceof SmtpReply)) throw error;
      this.options.log.info(
        { event: 'recipient_refused', client: session.remoteAddress, from: senderOf(session), to: address, reply: `${error.responseCode} ${error.message}` },
        'recipient refused',
      );
      this.options.metrics?.refused.inc({ reason: refusalReason(error.enhancedCode) });
      return error;
    }
  }

  /** Streams DATA into the spool; resolves with the 250 text once the message is durable. */
  private async receive(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<string> {
    const { config, spool, log } = this.options;
    const arrival = new Date();
    const dsnOf = new Map<string, { notify?: string[]; orcpt?: string }>();
    for (const rcpt of session.envelope.rcptTo) {
      const address = normalizeRecipient(rcpt.address);
      if (!dsnOf.has(address))
        dsnOf.set(address, { ...(rcpt.dsn?.notify ? { notify: rcpt.dsn.notify } : {}), ...(rcpt.dsn?.orcpt ? { orcpt: rcpt.dsn.orcpt } : {}) });
    }
    const recipients = [...dsnOf.keys()];
    let message: IncomingMessage | undefined;
    let storageError: unknown;
    const dropMessage = async (error?: unknown) => {
      storageError ??= error;
      if (message) this.writing.delete(message);
      await message?.discard();
      message = undefined;
    };
    let received = 0;
    try {
      message = await spool.receive();
      this.writing.add(message);
      const header = Buffer.from(receivedHeader(session, recipients, config.hostname, message.id, arrival));
      received = header.length;
      await message.write(header);
    } catch (error) {
      await dropMessage(error);
    }
    // The limit counts our Received header: the primary is sent (and told SIZE=) the stored bytes.
    const inspector = new MessageInspector({ ...config.limits, messageSize: this.messageSize }, received);
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        inspector.inspect(chunk);
        countDataBytes(chunk.length);
        if (!message) continue; // refused already: read on to the final dot, keep nothing
        if (inspector.problem) await dropMessage();
        else await message.write(chunk).catch(dropMessage);
      }
    } catch (error) {
      await dropMessage();
      log.info(
        { event: 'data_lost', client: session.remoteAddress, from: senderOf(session), size: inspector.size, reason: (error as Error).message },
        'connection lost during DATA, nothing queued',
      );
      throw new SmtpReply(451, '4.4.2', 'Connection lost during DATA'); // nobody is left to read it
    }
    inspector.finish();
    if (inspector.problem) await dropMessage();
    if (storageError) log.error({ event: 'spool_write_failed', err: storageError, client: session.remoteAddress }, 'spool: cannot write the message');
    const refusal = inspector.problem ?? (message ? undefined : STORAGE_FAILURE());
    if (refusal || !message) {
      log.info(
        {
          event: 'message_refused',
          client: session.remoteAddress,
          from: senderOf(session),
          to: recipients,
          size: inspector.size,
          reply: `${refusal!.responseCode} ${refusal!.message}`,
        },
        'message refused',
      );
      this.options.metrics?.refused.inc({ reason: refusalReason(refusal!.enhancedCode) });
      throw refusal;
    }
    const queued = message;
    this.writing.delete(queued); // commit() removes its file itself if it fails
    const envelope = await queued
      .commit({
        arrival: arrival.toISOString(),
        sender: asciiAddress(senderOf(session)),
        recipients: recipients.map((address) => ({ address, state: 'pending' as const, ...this.sourceOf(address), ...dsnOf.get(address) })),
        ...dsnParameters(session),
        bodyType: session.envelope.bodyType === '8bitmime' ? '8bitmime' : '7bit',
        smtpUtf8: Boolean(session.envelope.smtpUtf8),
        client: { address: session.remoteAddress, helo: session.hostNameAppearsAs || '' },
        ...(inspector.messageId === undefined ? {} : { messageId: inspector.messageId }),
      })
      .catch((error: unknown) => {
        log.error({ err: error, queueId: queued.id }, 'spool: commit failed, message not queued');
        throw STORAGE_FAILURE();
      });
    log.info(
      {
        event: 'queued',
        queueId: envelope.id,
        client: envelope.client.address,
        helo: envelope.client.helo,
        from: envelope.sender,
        to: recipients,
        nrcpt: recipients.length,
        size: envelope.size,
        messageId: envelope.messageId,
      },
      'queued',
    );
    this.options.metrics?.accepted.inc();
    this.options.onQueued?.(envelope);
    return `2.0.0 Ok: queued as ${envelope.id}`;
  }

  /** The source owning the recipient's domain now: it picks the primary the relay uses. */
  private sourceOf(address: string): { source?: string } {
    try {
      return { source: checkRecipient(address, this.options.directory.current, this.options.config.recipientDelimiter).source };
    } catch {
      return {}; // left the directory since RCPT: the global primary gets it
    }
  }

  private internalError(error: unknown, session: SMTPServerSession): SmtpReply {
    this.options.log.error({ err: error, client: session.remoteAddress }, 'internal error while receiving');
    return new SmtpReply(451, '4.3.0', 'Local error in processing, try again later');
  }
}

/**
 * A non-ASCII local part without MAIL ... SMTPUTF8 (RFC 6531 §3.4). Domains are not
 * checked here: smtp-server hands them over in Unicode even when they came as punycode.
 */
function needsSmtpUtf8(address: string, session: SMTPServerSession, offered: boolean): SmtpReply | null {
  const local = address.slice(0, Math.max(0, address.lastIndexOf('@')));
  if ((offered && session.envelope.smtpUtf8) || !/[^\x00-\x7f]/.test(local)) return null;
  return new SmtpReply(553, '5.6.7', offered ? 'Non-ASCII address without SMTPUTF8' : 'Non-ASCII address: the primary does not take them (no SMTPUTF8)');
}

function shuttingDown(): SmtpReply {
  return new SmtpReply(421, '4.3.2', 'Service shutting down, try again later');
}

function senderOf(session: SMTPServerSession): string {
  return session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
}

/** Whether an address is inside a CIDR range ("127.0.0.0/8", "::1/128"). */
function inRange(address: string, range: string): boolean {
  const [network, bits] = range.split('/');
  const family = network.includes(':') ? 'ipv6' : 'ipv4';
  const list = new BlockList();
  list.addSubnet(network, Number(bits ?? (family === 'ipv4' ? 32 : 128)), family);
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1];
  const plain = mapped ?? address;
  return list.check(plain, isIPv4(plain) ? 'ipv4' : 'ipv6');
}

/** RFC 3461 MAIL parameters worth keeping (RET, ENVID). */
function dsnParameters(session: SMTPServerSession): { dsn?: { ret?: 'FULL' | 'HDRS'; envid?: string } } {
  const { ret, envid } = session.envelope.dsn ?? { ret: null, envid: null };
  if (!ret && !envid) return {};
  return { dsn: { ...(ret === 'FULL' || ret === 'HDRS' ? { ret } : {}), ...(envid ? { envid } : {}) } };
}
