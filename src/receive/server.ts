import { readFileSync } from 'node:fs';
import { BlockList, isIPv4, type AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { SMTPServerDataStream, SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import { parseListenAddress, type Config } from '../config/schema.js';
import type { Directory } from '../directory/directory.js';
import { deliveredSize, type Envelope } from '../spool/envelope.js';
import { ownBuffer } from '../spool/message-source.js';
import type { IncomingMessage, Spool } from '../spool/spool.js';
import type { SpaceReservations, SpoolCondition } from '../spool/watch.js';
import { clientKey } from './client-key.js';
import { MessageInspector } from './inspect.js';
import { fieldNames, untrustedHeaders } from './trust-headers.js';
import { asciiAddress, normalizeDomain } from '../directory/names.js';
import { checkRecipient, normalizeRecipient } from './policy.js';
import { receivedHeader } from './received.js';
import { SmtpReply } from './replies.js';
import { MxServer, type MxOptions } from './mx-server.js';
import { countDataBytes } from './young-gc.js';
import { refusalReason, type Metrics } from '../control/metrics.js';
import type { HostPort } from '../config/schema.js';
import type { EdgeScreens } from '../screen/screens.js';
import type { SpfCheck } from '../screen/auth.js';
import { rspamdCheck, RspamdUnavailable } from '../screen/rspamd.js';
import { unmapped } from '../net/ip.js';
import { isAscii } from '../mail/address.js';

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
  /** Room promised to each transaction from MAIL to the end of DATA (spool/watch.ts); absent: none counted. */
  space?: SpaceReservations;
  /** DNS lists, greeting pass, sender authentication, recipient verification (screen/); absent: none. */
  screens?: EdgeScreens;
  /** The primary that gets a source's mail: whether the relay knows it down, and how long probes have seen it up (ms; 0: not seen). */
  primaryOf?: (source: string) => PrimaryState;
  /** An RCPT probe could not open a session to the primary of a source: the relay marks it down (and probes it). */
  primaryUnreachable?: (source: string, reason: string) => void;
}

export interface PrimaryState {
  address: HostPort;
  down: boolean;
  upForMs: number;
}

/** Bytes left for what a primary adds to a message before its own size check. */
const PRIMARY_SIZE_MARGIN = 4096;

/** What the checks on a whole message decided. */
interface ContentVerdict {
  refusal?: SmtpReply;
  /** The refused_total reason of the refusal. */
  reason?: string;
  addedHeaders?: string;
  noBounce?: Envelope['noBounce'];
  senderSpf?: string;
  /** Results for the message's summary line. */
  report?: Record<string, unknown>;
}

/** What the policy keeps about a session it admitted. */
interface AdmittedSession {
  /** The client it counts for (client-key.ts). */
  client: string;
  /** limits.sessionTimeout */
  timer: NodeJS.Timeout;
  /** In DATA: a graceful stop lets it finish. */
  inData: boolean;
  /** On a DNS allow list (screen.dnsblAllowThreshold): the other screens are skipped. */
  allowListed?: boolean;
  /** The SPF check of the current MAIL FROM, for the message's Authentication-Results. */
  spf?: SpfCheck;
  /** RCPTs accepted in the current transaction, repeats included (smtp-server lets a repeated address past its limit). */
  rcptAccepted: number;
}

/** A screen's decision for its metric and log line: refused (5xx) or deferred (4xx), else passed or tagged. */
function screenDecision(reply: SmtpReply | undefined, passed: boolean): 'reject' | 'defer' | 'pass' | 'tag' {
  if (reply) return reply.responseCode >= 500 ? 'reject' : 'defer';
  return passed ? 'pass' : 'tag';
}

/** Bytes a transaction without SIZE= is promised at MAIL (beside what it writes past that). */
const UNDECLARED_PROMISE = 10_000_000;

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
      greetingPauseFor: (remoteAddress) => this.greetingPause(remoteAddress),
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
      onConnect: (session, callback) => {
        this.admit(session).then(callback, (error: unknown) => callback(this.internalError(error, session)));
      },
      onEtrn: (node, session, reply) => this.etrn(node, session, reply),
      onClose: (session) => this.release(session),
      onMailFrom: (address, session, callback) => {
        const declared = address.args ? Number(address.args.SIZE) || undefined : undefined;
        this.sender(address.address, session, declared).then(callback, (error: unknown) => callback(this.internalError(error, session)));
      },
      onRcptTo: (address, session, callback) => {
        this.recipient(address.address, session).then(callback, (error: unknown) => callback(this.internalError(error, session)));
      },
      onData: (stream, session, callback) => {
        const admitted = this.sessions.get(session.id);
        if (admitted) admitted.inData = true;
        const slow = setTimeout(() => this.cut(session, '4.4.2 DATA took too long, closing connection'), config.limits.dataTimeout * 1000);
        // The client's time: what we take after its final dot (the checks) has limits.checkTimeout.
        stream.once('end', () => clearTimeout(slow));
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

  /**
   * The pause before this client's greeting (ms): none for a client holding a pass (it
   * waited once, within screen.passTtl), limits.greetingPause otherwise. The DNS-list
   * lookups start now, so that they run during the pause.
   */
  private greetingPause(remoteAddress: string): number {
    const screens = this.options.screens;
    if (!screens) return this.options.config.limits.greetingPause * 1000;
    screens.dnsbl.prefetch(remoteAddress);
    const key = clientKey(remoteAddress, this.options.config.limits.clientIpv6Prefix);
    return this.options.config.screen.passTtl > 0 && screens.passes.get(key) ? 0 : this.options.config.limits.greetingPause * 1000;
  }

  /** Connection limits, then the DNS lists (postscreen's dnsbl test): over the threshold, refused; at or under the allow threshold, allow-listed. */
  private async admit(session: SMTPServerSession): Promise<SmtpReply | null> {
    const refusal = this.admitOpen(session);
    const screens = this.options.screens;
    if (refusal || !screens?.dnsbl.enabled) return refusal;
    const { screen, hostname } = this.options.config;
    const verdict = await screens.dnsbl.score(session.remoteAddress);
    const admitted = this.sessions.get(session.id);
    const decision =
      verdict.score >= screen.dnsblThreshold
        ? screen.dnsblAction
        : verdict.score <= screen.dnsblAllowThreshold && screen.dnsblAllowThreshold < 0
          ? 'allow'
          : 'pass';
    this.screened('dnsbl', decision, { client: session.remoteAddress, score: verdict.score, listedBy: verdict.listedBy });
    if (decision === 'allow' && admitted) admitted.allowListed = true;
    if (decision === 'reject')
      return this.refuse(new SmtpReply(554, '5.7.1', `${hostname} Service unavailable; client [${session.remoteAddress}] blocked using DNS lists`), 'dnsbl');
    if (decision === 'defer')
      return this.refuse(
        new SmtpReply(450, '4.7.1', `${hostname} Service unavailable; client [${session.remoteAddress}] listed on DNS lists, try again later`),
        'dnsbl',
      );
    return null;
  }

  /** One log line and one metric per screen decision. */
  private screened(screen: string, decision: string, fields: Record<string, unknown>): void {
    this.options.metrics?.screened.inc({ screen, decision });
    this.options.log.info({ event: 'screen', screen, decision, ...fields }, `${screen}: ${decision}`);
  }

  private refuse(reply: SmtpReply, reason: string): SmtpReply {
    this.options.metrics?.refused.inc({ reason });
    return reply;
  }

  private admitOpen(session: SMTPServerSession): SmtpReply | null {
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
    this.sessions.set(session.id, { client, timer, inData: false, rcptAccepted: 0 });
    this.perClient.set(client, fromClient + 1);
    return null;
  }

  private release(session: SMTPServerSession): void {
    this.options.space?.release(session.id);
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

  /** MAIL FROM: the spool and session limits, then SPF (auth.spf); a client that got here earned its greeting pass. */
  private async sender(address: string, session: SMTPServerSession, declaredSize?: number): Promise<SmtpReply | null> {
    const refusal = this.senderAllowed(address, session) ?? this.roomFor(session, declaredSize);
    const screens = this.options.screens;
    const admitted = this.sessions.get(session.id);
    if (admitted) admitted.rcptAccepted = 0;
    if (refusal || !screens || !admitted) return refusal;
    admitted.spf = undefined; // a new transaction: the last sender's result is not this one's
    const { passTtl } = this.options.config.screen;
    if (passTtl > 0) screens.passes.set(admitted.client, true, passTtl);
    if (!screens.auth || admitted.allowListed) return null;
    const checked = await screens.auth.checkSpf(address, session.remoteAddress, session.hostNameAppearsAs || '');
    admitted.spf = checked;
    const decision = screenDecision(checked.reply, checked.result === 'pass');
    if (!checked.reply) {
      this.options.metrics?.screened.inc({ screen: 'spf', decision }); // the result goes in the message's summary line
      return null;
    }
    this.screened('spf', decision, { client: session.remoteAddress, from: address, result: checked.result });
    return this.refuse(checked.reply, 'spf');
  }

  /**
   * Room in the spool for this transaction, promised until its DATA ends: what it declared
   * (SIZE), else the size limit up to UNDECLARED_PROMISE (what it writes past that still
   * counts as it arrives). The full 100 MB limit for each of 100 senders without SIZE asked
   * 10 GB free, and a 4 GB spool refused smtp-source's 100 sessions.
   */
  private roomFor(session: SMTPServerSession, declaredSize: number | undefined): SmtpReply | null {
    const space = this.options.space;
    if (!space || space.reserve(session.id, Math.min(declaredSize ?? UNDECLARED_PROMISE, this.messageSize))) return null;
    this.options.log.info({ event: 'spool_no_room', client: session.remoteAddress }, 'MAIL deferred: the spool has no room for another message now');
    return STORAGE_FAILURE();
  }

  private senderAllowed(address: string, session: SMTPServerSession): SmtpReply | null {
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

  private async recipient(address: string, session: SMTPServerSession): Promise<SmtpReply | null> {
    try {
      const admitted = this.sessions.get(session.id);
      if (admitted && admitted.rcptAccepted >= this.options.config.limits.recipients) throw new SmtpReply(452, '4.5.3', 'Too many recipients');
      const refusal = needsSmtpUtf8(address, session, this.primaryUtf8);
      if (refusal) throw refusal;
      const accepted = checkRecipient(address, this.options.directory.current, this.options.config.recipientDelimiter);
      await this.screenRecipient(accepted.address, accepted.source, accepted.recipientCheck, session);
      if (admitted) admitted.rcptAccepted++;
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

  /**
   * After the directory said yes: 451 4.7.1 while the primary has been seen up for
   * screen.deferWhilePrimaryUp (opt-in), and for a domain without an address list, the
   * primary's own answer to an RCPT probe (cached; the cache alone while it is down); an
   * address nobody can vouch for is deferred (450 4.1.1) unless verify.unverifiable is accept.
   */
  private async screenRecipient(address: string, source: string, listed: boolean, session: SMTPServerSession): Promise<void> {
    const { screens, primaryOf } = this.options;
    if (!screens || !primaryOf) return;
    const { screen, verify, hostname } = this.options.config;
    const primary = primaryOf(source);
    if (screen.deferWhilePrimaryUp > 0 && primary.upForMs >= screen.deferWhilePrimaryUp * 1000) {
      this.screened('primary_up', 'defer', { client: session.remoteAddress, to: address, upForSeconds: Math.round(primary.upForMs / 1000) });
      throw new SmtpReply(451, '4.7.1', `<${address}>: the primary MX is up, please deliver there`);
    }
    if (listed || !verify.enabled) return;
    const options = {
      name: hostname,
      connectTimeout: verify.timeout,
      commandTimeout: verify.timeout,
      ...(primary.address.tls ? { verify: primary.address.tls } : {}),
    };
    const client = this.sessions.get(session.id)?.client ?? session.remoteAddress;
    const verdict = await screens.verifier.verify(address, primary.address, primary.down, options, client, (reason) =>
      this.options.primaryUnreachable?.(source, reason),
    );
    if ('unverifiable' in verdict) {
      // Postfix's unverified_recipient_tempfail_action: the sender keeps the message and retries.
      const defer = verify.unverifiable === 'defer';
      this.screened('verify', defer ? 'defer' : 'unavailable', { client: session.remoteAddress, to: address, reason: verdict.unverifiable });
      if (defer) throw new SmtpReply(450, '4.1.1', `<${address}>: Recipient address rejected: unverified address: ${verdict.unverifiable}`);
      return;
    }
    this.screened('verify', verdict.ok ? 'pass' : 'reject', { client: session.remoteAddress, to: address });
    if (!verdict.ok) throw new SmtpReply(550, '5.1.1', `<${address}>: recipient address rejected: the primary says: ${verdict.reply ?? 'user unknown'}`);
  }

  /**
   * The checks that need the whole message, before the 250: DKIM, ARC and DMARC (with
   * the SPF result of MAIL FROM, for the Authentication-Results header), then rspamd. Returns a refusal, or the
   * headers to add and whether a DSN to the sender would be backscatter.
   */
  private async checkContent(message: IncomingMessage, inspector: MessageInspector, session: SMTPServerSession, recipients: string[]): Promise<ContentVerdict> {
    const { screens, config, log, metrics } = this.options;
    const admitted = this.sessions.get(session.id);
    if (!screens || admitted?.allowListed) return {};
    // Decisions on a message go in its one summary line (queued or message_refused), not a line each.
    const report: Record<string, unknown> = {};
    const helo = session.hostNameAppearsAs || '';
    const sender = senderOf(session);
    let headers = '';
    let noBounce: Envelope['noBounce'];
    let senderSpf: string | undefined;
    // One deadline for all of them: past it, what is unfinished tags the message (and rspamd.onFailure applies).
    const deadline = Date.now() + config.limits.checkTimeout * 1000;
    if (screens.auth) {
      const spf = admitted?.spf ?? (await screens.auth.checkSpf(sender, session.remoteAddress, helo));
      const header = inspector.unsignedHeader;
      const source = header ? { bytes: ownBuffer([header], header.length) } : await message.contents();
      const checked = await screens.auth.checkMessage(source, sender, spf, deadline - Date.now(), header !== undefined);
      const decision = checked.unfinished ? 'unavailable' : screenDecision(checked.reply, checked.dmarc === 'pass');
      metrics?.screened.inc({ screen: 'dmarc', decision });
      Object.assign(report, {
        spf: checked.spf,
        dkim: checked.dkim,
        dmarc: checked.dmarc,
        ...(checked.unfinished ? { authUnfinished: checked.unfinished } : {}),
      });
      if (checked.reply) return { refusal: checked.reply, reason: refusalReason(checked.reply.enhancedCode), report };
      headers += checked.headers;
      if (checked.spf === 'fail') noBounce = 'spf-fail';
      senderSpf = checked.spf;
    }
    const rspamd = config.rspamd;
    if (rspamd) {
      const envelope = { ip: session.remoteAddress, helo, sender, recipients, queueId: message.id, hostname: config.hostname };
      try {
        const left = (deadline - Date.now()) / 1000;
        if (left <= 0) throw new RspamdUnavailable('timeout', `no time left within limits.checkTimeout (${config.limits.checkTimeout} s)`);
        const verdict = await rspamdCheck({ ...rspamd, timeout: Math.min(rspamd.timeout, left) }, envelope, await message.readBack());
        const decision = screenDecision(verdict.reply, !verdict.spam);
        metrics?.screened.inc({ screen: 'rspamd', decision });
        Object.assign(report, { rspamd: verdict.action, score: verdict.score });
        if (verdict.reply) return { refusal: verdict.reply, reason: 'spam', report };
        headers += verdict.headers;
        if (verdict.spam) noBounce ??= 'spam';
      } catch (error) {
        if (!(error instanceof RspamdUnavailable)) throw error;
        metrics?.screened.inc({ screen: 'rspamd', decision: 'unavailable' });
        metrics?.rspamdFailures.inc({ failure: error.failure });
        report.rspamd = 'unavailable';
        log.warn(
          {
            event: error.failure === 'bad_answer' ? 'rspamd_bad_answer' : 'rspamd_unavailable',
            queueId: message.id,
            failure: error.failure,
            reason: error.message,
            onFailure: rspamd.onFailure,
          },
          error.failure === 'bad_answer' ? 'rspamd gave an answer we cannot read: no verdict' : 'rspamd gave no verdict',
        );
        if (rspamd.onFailure === 'defer') {
          return { refusal: new SmtpReply(451, '4.7.1', 'Content filter unavailable, try again later'), reason: 'filter_unavailable', report };
        }
      }
    }
    return { ...(headers ? { addedHeaders: headers } : {}), ...(noBounce ? { noBounce } : {}), ...(senderSpf ? { senderSpf } : {}), report };
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
        this.options.space?.grow(session.id, inspector.size);
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
    let screened: ContentVerdict = {};
    if (message) {
      this.options.metrics?.contentChecks.inc();
      screened = await this.checkContent(message, inspector, session, recipients)
        .catch(async (error: unknown): Promise<ContentVerdict> => {
          if ((error as NodeJS.ErrnoException).syscall) {
            await dropMessage(error); // reading the temp file back: the spool's fault
            return {};
          }
          await dropMessage();
          log.error({ event: 'content_check_failed', err: error, client: session.remoteAddress }, 'the content checks failed: message not queued');
          return { refusal: new SmtpReply(451, '4.3.0', 'Local error in processing, try again later'), reason: 'internal' };
        })
        .finally(() => this.options.metrics?.contentChecks.dec());
    }
    if (screened.refusal) await dropMessage();
    if (storageError) log.error({ event: 'spool_write_failed', err: storageError, client: session.remoteAddress }, 'spool: cannot write the message');
    const refusal = inspector.problem ?? screened.refusal ?? (message ? undefined : STORAGE_FAILURE());
    if (refusal || !message) {
      log.info(
        {
          event: 'message_refused',
          client: session.remoteAddress,
          from: senderOf(session),
          to: recipients,
          size: inspector.size,
          reply: `${refusal!.responseCode} ${refusal!.message}`,
          ...screened.report,
        },
        'message refused',
      );
      this.options.metrics?.refused.inc({ reason: screened.reason ?? refusalReason(refusal!.enhancedCode) });
      this.options.space?.release(session.id);
      throw refusal;
    }
    const queued = message;
    this.writing.delete(queued); // commit() removes its file itself if it fails
    const removedHeaders = untrustedHeaders(inspector.fields, config.hostname, {
      spf: config.auth.enabled,
      spam: config.rspamd !== undefined,
      added: fieldNames(screened.addedHeaders ?? ''),
    });
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
        ...(screened.addedHeaders ? { addedHeaders: screened.addedHeaders } : {}),
        ...(removedHeaders.length > 0 ? { removedHeaders } : {}),
        ...(screened.noBounce ? { noBounce: screened.noBounce } : {}),
        ...(screened.senderSpf ? { senderSpf: screened.senderSpf } : {}),
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
        size: deliveredSize(envelope),
        messageId: envelope.messageId,
        ...(removedHeaders.length > 0 ? { removedHeaders: removedHeaders.length } : {}),
        ...screened.report,
      },
      'queued',
    );
    this.options.metrics?.accepted.inc();
    this.options.space?.release(session.id, inspector.size); // in the spool now: the next look at the free space shows it
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
  if ((offered && session.envelope.smtpUtf8) || isAscii(local)) return null;
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
  const plain = unmapped(address);
  return list.check(plain, isIPv4(plain) ? 'ipv4' : 'ipv6');
}

/** RFC 3461 MAIL parameters worth keeping (RET, ENVID). */
function dsnParameters(session: SMTPServerSession): { dsn?: { ret?: 'FULL' | 'HDRS'; envid?: string } } {
  const { ret, envid } = session.envelope.dsn ?? { ret: null, envid: null };
  if (!ret && !envid) return {};
  return { dsn: { ...(ret === 'FULL' || ret === 'HDRS' ? { ret } : {}), ...(envid ? { envid } : {}) } };
}
