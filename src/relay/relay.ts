import { EventEmitter, once } from 'node:events';
import type { Logger } from 'pino';
import type { Config, HostPort } from '../config/schema.js';
import { Notifier } from '../dsn/notifier.js';
import type { Envelope, Recipient } from '../spool/envelope.js';
import type { Spool } from '../spool/spool.js';
import { PrimaryConnection, PrimaryUnreachable, type RecipientReply } from './connection.js';
import { MinHeap } from './heap.js';
import { mailHosts, NoMailDomain } from './mx.js';
import type { Metrics } from '../control/metrics.js';

/** What one attempt did with one message's recipients for one primary. */
export interface AttemptOutcome {
  id: string;
  primary: string;
  delivered: number;
  deferred: number;
  failed: number;
  /** The primary could not be reached; nothing was decided. */
  unreachable: boolean;
  /** Another process holds the message (a concurrent flush). */
  busy: boolean;
}

export interface FlushFilter {
  id?: string;
  domain?: string;
}

export interface FlushReport {
  messages: number;
  delivered: number;
  deferred: number;
  failed: number;
  unreachable: number;
  busy: number;
}

interface Entry {
  id: string;
  /** Epoch ms before which the message is not attempted. */
  due: number;
  /** Epoch ms of arrival. */
  arrival: number;
  /** Epoch ms: arrival + relay.queueLifetime. */
  expires: number;
  /** Epoch ms of the delay notice; Infinity when none is due (off, or sent). */
  warnAt: number;
  held: boolean;
  /** Primaries ("host:port") that still have pending recipients of this message. */
  primaries: Set<string>;
  /** Recipient domains, for `flush --domain`. */
  domains: Set<string>;
  /** When its timer fires (due, delay notice or expiry); Infinity when none is set. */
  timerAt: number;
  /** Primaries whose ready queue holds it. */
  readyFor: Set<string>;
}

interface Timer {
  at: number;
  entry: Entry;
}

interface PrimaryState {
  key: string;
  address: HostPort;
  /** A sender domain reached through its MX hosts (DSNs without dsn.relay): never marked down. */
  mxDomain?: string;
  up: boolean;
  workers: number;
  probe: NodeJS.Timeout | undefined;
}

const keyOf = (primary: HostPort) => `${primary.host}:${primary.port}`;

/**
 * The scheduler and delivery agent: replays the spool to the primaries. It keeps
 * an index of queued messages; workers (up to relay.concurrency per primary) each
 * hold one connection and deliver due messages oldest first. A primary that cannot
 * be reached is marked down and probed every relay.probeInterval; when a probe
 * succeeds, replay starts at once. 4xx replies back off (minBackoff doubling to
 * maxBackoff). Every decision is written to the envelope before the next step.
 *
 * Scheduling never scans the whole index (it holds the spool, 100,000s of messages
 * while a primary is down): a timer heap holds each message's next event (due,
 * delay notice, expiry), and each primary has a ready heap of due messages, oldest
 * first. Heap items go stale when a message is re-indexed or taken; they are
 * recognised and dropped when popped.
 */
export class Relay extends EventEmitter {
  private readonly entries = new Map<string, Entry>();
  private readonly primaries = new Map<string, PrimaryState>();
  private readonly inFlight = new Set<string>();
  private readonly timers = new MinHeap<Timer>((a, b) => a.at < b.at);
  private readonly ready = new Map<string, MinHeap<Entry>>();
  private wake: NodeJS.Timeout | undefined;
  private wakeAt = Infinity;
  private stopped = false;
  private readonly notifier: Notifier;

  constructor(
    private config: Config,
    private readonly spool: Spool,
    private readonly log: Logger,
    /** A daemon probes down primaries and retries on its own; a one-shot `flush` does not. */
    private readonly daemon: boolean,
    private readonly metrics?: Metrics,
  ) {
    super();
    this.notifier = new Notifier(config, spool, log, (dsn) => this.add(dsn), (envelope, recipient) => this.destinationFor(envelope, recipient).address.host);
  }

  /** Indexes the spool; call once before anything else. */
  async load(): Promise<void> {
    const recovered = this.spool.takeRecovered();
    const { envelopes, unreadable } = recovered ? { envelopes: recovered, unreadable: [] } : await this.spool.list();
    for (const { id, reason } of unreadable) this.log.error({ queueId: id, reason }, 'unreadable envelope, not delivered');
    for (const envelope of envelopes) {
      if (envelope.notice) await this.locked(envelope.id, (current) => this.notifier.resume(current));
      else this.index(envelope);
    }
    this.log.info({ messages: this.entries.size }, 'relay: queue indexed');
  }

  /** A message the receiver just queued: due now. */
  add(envelope: Envelope): void {
    this.index(envelope);
    this.kick();
  }

  /** Fires the timers that are due, starts workers for the ready messages, arms the next wake-up. */
  kick(): void {
    if (this.stopped) return;
    const now = Date.now();
    for (let timer = this.timers.peek(); timer && timer.at <= now; timer = this.timers.peek()) {
      this.timers.pop();
      const { entry } = timer;
      if (this.entries.get(entry.id) !== entry || entry.timerAt !== timer.at) continue; // superseded
      entry.timerAt = Infinity;
      this.examine(entry, now);
    }
    for (const [key, queue] of this.ready) {
      const primary = this.primaries.get(key);
      while (primary?.up && queue.size > 0 && primary.workers < Math.min(this.config.relay.concurrency, queue.size)) {
        primary.workers++;
        void this.work(primary).finally(() => {
          primary.workers--;
          this.emit('progress');
        });
      }
    }
    this.armWake();
  }

  /** Decides what a message needs now: expiry, its delay notice, a place in the ready queues, or a timer. */
  private examine(entry: Entry, now: number): void {
    if (entry.held || this.inFlight.has(entry.id)) return; // a release or the end of its job re-examines it
    if (now >= entry.expires) return this.maintain(entry, 'expire');
    if (now >= entry.warnAt) return this.maintain(entry, 'warn');
    if (entry.due > now) return this.setTimer(entry, Math.min(entry.due, entry.warnAt, entry.expires));
    this.setTimer(entry, Math.min(entry.warnAt, entry.expires)); // it may wait for a down primary that long
    for (const key of entry.primaries) {
      if (entry.readyFor.has(key)) continue;
      entry.readyFor.add(key);
      let queue = this.ready.get(key);
      if (!queue) this.ready.set(key, (queue = new MinHeap<Entry>((a, b) => a.id < b.id))); // ids sort by arrival
      queue.push(entry);
    }
  }

  private setTimer(entry: Entry, at: number): void {
    if (at === Infinity || at >= entry.timerAt) return; // the earlier timer re-examines it anyway
    entry.timerAt = at;
    this.timers.push({ at, entry });
    if (at < this.wakeAt) this.armWake();
  }

  private armWake(): void {
    const next = this.timers.peek()?.at ?? Infinity;
    if (!this.daemon || this.stopped || next === this.wakeAt) return;
    clearTimeout(this.wake);
    this.wakeAt = next;
    if (next < Infinity) this.wake = setTimeout(() => {
      this.wakeAt = Infinity;
      this.kick();
    }, Math.min(Math.max(0, next - Date.now()) + 10, 2 ** 31 - 1));
  }

  /** Ends a job on a message: one that was not re-indexed by it is examined again. */
  private release(entry: Entry): void {
    this.inFlight.delete(entry.id);
    if (this.entries.get(entry.id) === entry) this.examine(entry, Date.now());
  }

  /** Expiry (pending recipients fail with 4.4.7) or the one delay notice, under the message lock. */
  private maintain(entry: Entry, job: 'expire' | 'warn'): void {
    this.inFlight.add(entry.id);
    if (job === 'warn') entry.warnAt = Infinity;
    void this.locked(entry.id, async (envelope) => {
      const pending = envelope.recipients.filter((r) => r.state === 'pending');
      if (job === 'warn') {
        if (!envelope.delayWarned && pending.length > 0) await this.notifier.notify(envelope, pending, 'delayed');
        return;
      }
      for (const recipient of pending) {
        recipient.state = 'failed';
        recipient.status = '4.4.7';
      }
      this.log.info({ queueId: envelope.id, to: pending.map((r) => r.address), lifetime: this.config.relay.queueLifetime }, 'status=expired');
    })
      .then((done) => {
        if (done) return;
        // Another process holds the message: look again in a second, not in a tight loop.
        if (job === 'expire') entry.expires = Date.now() + 1000;
        else entry.warnAt = Date.now() + 1000;
      })
      .catch((error: unknown) => this.log.error({ err: error, queueId: entry.id, job }, 'queue maintenance failed'))
      .finally(() => {
        this.release(entry);
        this.kick();
      });
  }

  /**
   * Runs `change` on a message's envelope under its lock, then settles it: failed
   * recipients get their DSN, and the message leaves the spool once every recipient
   * is delivered or reported. Resolves false when another process holds the lock.
   */
  private async locked(id: string, change: (envelope: Envelope) => Promise<void> | void): Promise<boolean> {
    if (!(await this.spool.lockMessage(id))) return false;
    try {
      let envelope: Envelope;
      try {
        envelope = await this.spool.readEnvelope(id);
      } catch {
        this.entries.delete(id); // delivered or deleted by another process
        return true;
      }
      await change(envelope);
      const unreported = envelope.recipients.filter((r) => r.state === 'failed' && !r.reported);
      if (unreported.length > 0) await this.notifier.notify(envelope, unreported, 'failed');
      const settled = envelope.recipients.every((r) => r.state === 'delivered' || (r.state === 'failed' && r.reported));
      if (settled) await this.spool.remove(envelope.id);
      else await this.spool.updateEnvelope(envelope);
      this.index(settled ? { ...envelope, recipients: [] } : envelope);
      return true;
    } finally {
      await this.spool.unlockMessage(id);
    }
  }

  /**
   * Attempts the matching messages now, whatever their backoff (postqueue -f / -s / -i),
   * probing down primaries first; resolves when each has had its attempt or cannot have one.
   */
  async flush(filter: FlushFilter = {}): Promise<FlushReport> {
    const matching = this.matching(filter);
    const waiting = new Set(matching.map((entry) => entry.id));
    const report: FlushReport = { messages: waiting.size, delivered: 0, deferred: 0, failed: 0, unreachable: 0, busy: 0 };
    const onAttempt = (outcome: AttemptOutcome) => {
      if (!waiting.delete(outcome.id)) return;
      if (outcome.unreachable) report.unreachable++;
      else if (outcome.busy) report.busy++;
      else {
        report.delivered += outcome.delivered;
        report.deferred += outcome.deferred;
        report.failed += outcome.failed;
      }
    };
    this.on('attempt', onAttempt);
    try {
      for (const entry of matching) {
        entry.due = 0;
        this.examine(entry, Date.now());
      }
      const keys = new Set(matching.flatMap((entry) => [...entry.primaries]));
      await Promise.all([...keys].map((key) => this.primaries.get(key)!).filter((p) => !p.up).map((p) => this.probe(p)));
      this.kick();
      while (waiting.size > 0) {
        for (const id of waiting) {
          if (this.inFlight.has(id)) continue; // its outcome is on the way
          const entry = this.entries.get(id);
          const reachable = entry && [...entry.primaries].some((key) => this.primaries.get(key)!.up);
          if (!entry || !reachable || entry.held) {
            if (entry && !reachable && !entry.held) report.unreachable++;
            waiting.delete(id);
          }
        }
        if (waiting.size === 0 || this.stopped) break;
        this.kick();
        await Promise.race([once(this, 'progress'), new Promise((resolve) => setTimeout(resolve, 200))]);
      }
    } finally {
      this.off('attempt', onAttempt);
    }
    return report;
  }

  /** Starts a flush without waiting for it (ETRN); returns how many messages it covers. */
  flushInBackground(filter: FlushFilter): number {
    const count = this.matching(filter).length;
    this.flush(filter).catch((error: unknown) => this.log.error({ err: error, filter }, 'flush failed'));
    return count;
  }

  /** Stops scheduling; resolves when the workers have finished their current message. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.wake);
    for (const primary of this.primaries.values()) clearTimeout(primary.probe);
    while ([...this.primaries.values()].some((p) => p.workers > 0)) await once(this, 'progress');
  }

  private matching(filter: FlushFilter): Entry[] {
    return [...this.entries.values()].filter(
      (entry) => !entry.held && (!filter.id || entry.id === filter.id) && (!filter.domain || entry.domains.has(filter.domain.toLowerCase())),
    );
  }

  /** Primary states and queue counts, for `status`. */
  summary(): { primaries: Array<{ primary: string; up: boolean }>; indexed: number; oldestArrival: number | undefined } {
    let oldestArrival: number | undefined;
    for (const entry of this.entries.values()) oldestArrival = Math.min(oldestArrival ?? Infinity, entry.arrival);
    return { primaries: [...this.primaries.values()].map((p) => ({ primary: p.key, up: p.up })), indexed: this.entries.size, oldestArrival };
  }

  /** A reloaded config (SIGHUP): concurrency, backoff, lifetimes, primaries apply from now on. */
  updateConfig(config: Config): void {
    this.config = config;
    this.notifier.updateConfig(config);
    for (const entry of this.entries.values()) entry.primaries.clear();
    void this.spool.list().then(({ envelopes }) => {
      for (const envelope of envelopes) if (this.entries.has(envelope.id)) this.index(envelope);
      this.kick();
    });
  }

  /** Reflects a message edited outside the relay (hold, release, delete). */
  refresh(id: string, envelope: Envelope | undefined): void {
    this.entries.delete(id);
    if (envelope) this.index(envelope);
    this.kick();
  }

  private index(envelope: Envelope): void {
    const pending = envelope.recipients.filter((r) => r.state === 'pending');
    if (pending.length === 0) {
      this.entries.delete(envelope.id);
      return;
    }
    const arrival = Date.parse(envelope.arrival);
    const { queueLifetime, delayWarning } = this.config.relay;
    const entry: Entry = {
      id: envelope.id,
      due: envelope.nextAttempt ? Date.parse(envelope.nextAttempt) : 0,
      arrival,
      expires: arrival + queueLifetime * 1000,
      warnAt: delayWarning > 0 && !envelope.delayWarned && envelope.kind !== 'dsn' ? arrival + delayWarning * 1000 : Infinity,
      held: Boolean(envelope.held),
      primaries: new Set(pending.map((r) => this.destinationFor(envelope, r).key)),
      domains: new Set(pending.map((r) => domainOf(r.address))),
      timerAt: Infinity,
      readyFor: new Set(),
    };
    this.entries.set(envelope.id, entry);
    this.setTimer(entry, Math.min(entry.due, entry.warnAt, entry.expires));
  }

  /**
   * Where a recipient goes: its source's primary (else the global one); a DSN goes to
   * dsn.relay, else to the MX hosts of the sender's domain.
   */
  private destinationFor(envelope: Envelope, recipient: Recipient): PrimaryState {
    if (envelope.kind === 'dsn' && !this.config.dsn.relay) {
      const domain = domainOf(recipient.address);
      return this.state(`mx:${domain}`, { host: domain, port: this.config.dsn.port }, domain);
    }
    const source = this.config.sources.find((s) => s.name === recipient.source);
    const address = envelope.kind === 'dsn' ? this.config.dsn.relay! : (source?.primary ?? this.config.primary);
    return this.state(keyOf(address), address);
  }

  private state(key: string, address: HostPort, mxDomain?: string): PrimaryState {
    let state = this.primaries.get(key);
    if (!state) {
      state = { key, address, mxDomain, up: true, workers: 0, probe: undefined };
      this.primaries.set(key, state);
    }
    return state;
  }

  /** The oldest ready message for this primary; stale queue items are dropped on the way. */
  private nextFor(primary: PrimaryState): Entry | undefined {
    const queue = this.ready.get(primary.key);
    const now = Date.now();
    for (let entry = queue?.pop(); entry; entry = queue?.pop()) {
      entry.readyFor.delete(primary.key);
      if (this.entries.get(entry.id) !== entry || !entry.primaries.has(primary.key)) continue;
      if (entry.held || entry.due > now || this.inFlight.has(entry.id)) continue; // its timer or job brings it back
      return entry;
    }
    return undefined;
  }

  private async work(primary: PrimaryState): Promise<void> {
    let connection: PrimaryConnection | undefined;
    try {
      while (primary.up && !this.stopped) {
        const entry = this.nextFor(primary); // taken off its ready queue: release() puts it back if need be
        if (!entry) break;
        this.inFlight.add(entry.id);
        try {
          if (!connection?.usable) {
            connection?.quit();
            connection = await this.connect(primary);
          }
          const outcome = await this.attempt(entry, primary, connection);
          this.emit('attempt', outcome);
          if (!outcome.busy && connection.usable && outcome.delivered === 0) await connection.reset();
        } catch (error) {
          if (!(error instanceof PrimaryUnreachable) && !(error instanceof NoMailDomain)) throw error;
          if (primary.mxDomain) {
            // A sender's MX is not ours to probe: this message backs off like a 4xx (or fails for good).
            this.emit('attempt', await this.unreachableMx(entry, primary, error));
            break;
          }
          this.emit('attempt', { id: entry.id, primary: primary.key, delivered: 0, deferred: 0, failed: 0, unreachable: true, busy: false });
          this.markDown(primary, error.message);
        } finally {
          this.release(entry);
          this.kick();
        }
      }
    } catch (error) {
      this.log.error({ err: error, primary: primary.key }, 'relay worker failed');
    } finally {
      connection?.quit();
    }
  }

  /** A connection to a primary, or to the first MX host of a sender domain that answers. */
  private async connect(primary: PrimaryState): Promise<PrimaryConnection> {
    if (!primary.mxDomain) return PrimaryConnection.open(primary.address, this.connectionOptions());
    const hosts = await mailHosts(primary.mxDomain, this.config.dns.servers).catch((error: unknown) => {
      if (error instanceof NoMailDomain) throw error;
      throw new PrimaryUnreachable(`MX lookup for ${primary.mxDomain} failed: ${(error as Error).message}`);
    });
    const failures: string[] = [];
    for (const host of hosts) {
      try {
        return await PrimaryConnection.open({ host: host.address, port: primary.address.port }, { ...this.connectionOptions(), servername: host.name });
      } catch (error) {
        failures.push(`${host.name}[${host.address}]: ${(error as Error).message}`);
      }
    }
    throw new PrimaryUnreachable(failures.length ? failures.join('; ') : `no address for the mail hosts of ${primary.mxDomain}`);
  }

  private async unreachableMx(entry: Entry, primary: PrimaryState, error: Error): Promise<AttemptOutcome> {
    const permanent = error instanceof NoMailDomain;
    const outcome: AttemptOutcome = { id: entry.id, primary: primary.key, delivered: 0, deferred: 0, failed: 0, unreachable: false, busy: false };
    const done = await this.locked(entry.id, (envelope) => {
      const recipients = envelope.recipients.filter((r) => r.state === 'pending' && this.destinationFor(envelope, r).key === primary.key);
      const reply = permanent ? `550 5.1.2 ${error.message}` : `451 4.4.1 ${error.message}`;
      const replies = recipients.map((r) => ({ address: r.address, code: permanent ? 550 : 451, reply }));
      this.record(envelope, recipients, replies, outcome);
      this.logAttempt(envelope, primary, replies, Date.now());
    });
    return done ? outcome : { ...outcome, busy: true };
  }

  private connectionOptions() {
    const { hostname, relay } = this.config;
    return { name: hostname, connectTimeout: relay.connectTimeout, commandTimeout: relay.commandTimeout };
  }

  /** One attempt: this primary's pending recipients of one message, under the message lock. */
  private async attempt(entry: Entry, primary: PrimaryState, connection: PrimaryConnection): Promise<AttemptOutcome> {
    const outcome: AttemptOutcome = { id: entry.id, primary: primary.key, delivered: 0, deferred: 0, failed: 0, unreachable: false, busy: false };
    const done = await this.locked(entry.id, async (envelope) => {
      if (envelope.held) return;
      const recipients = envelope.recipients.filter((r) => r.state === 'pending' && this.destinationFor(envelope, r).key === primary.key);
      const started = Date.now();
      const replies: RecipientReply[] = [];
      for (const group of dsnGroups(recipients)) {
        if (replies.length > 0 && !replies.some((r) => r.code >= 200 && r.code < 300)) await connection.reset();
        replies.push(...(await this.send(envelope, group, connection)));
      }
      this.record(envelope, recipients, replies, outcome);
      this.logAttempt(envelope, primary, replies, started);
    });
    if (!done) {
      entry.due = Date.now() + 1000; // another process delivers or edits it; look again later
      return { ...outcome, busy: true };
    }
    return outcome;
  }

  /** Applies the replies to the recipients, and the backoff when any was deferred. */
  private record(envelope: Envelope, recipients: Recipient[], replies: RecipientReply[], outcome: AttemptOutcome): void {
    for (const reply of replies) {
      const recipient = recipients.find((r) => r.address === reply.address)!;
      recipient.reply = reply.reply;
      if (reply.code >= 200 && reply.code < 300) recipient.state = 'delivered';
      else if (reply.code >= 500) recipient.state = 'failed';
    }
    outcome.delivered = replies.filter((r) => r.code >= 200 && r.code < 300).length;
    outcome.failed = replies.filter((r) => r.code >= 500).length;
    outcome.deferred = replies.length - outcome.delivered - outcome.failed;
    envelope.lastAttempt = new Date().toISOString();
    if (outcome.deferred > 0) {
      envelope.deferrals = (envelope.deferrals ?? 0) + 1;
      const backoff = Math.min(this.config.relay.minBackoff * 2 ** (envelope.deferrals - 1), this.config.relay.maxBackoff);
      envelope.nextAttempt = new Date(Date.now() + backoff * 1000).toISOString();
    }
  }

  private async send(envelope: Envelope, recipients: Recipient[], connection: PrimaryConnection): Promise<RecipientReply[]> {
    if (envelope.smtpUtf8 && !connection.offersSmtpUtf8) {
      const reply = '550 5.6.7 The primary does not offer SMTPUTF8, which this message needs';
      return recipients.map((r) => ({ address: r.address, code: 550, reply }));
    }
    const [first] = recipients;
    return connection.send({
      sender: envelope.sender,
      recipients: recipients.map((r) => r.address),
      dsn: { ret: envelope.dsn?.ret, envid: envelope.dsn?.envid, notify: first.notify, orcpt: first.orcpt },
      size: envelope.size,
      eightBit: envelope.bodyType === '8bitmime',
      smtpUtf8: envelope.smtpUtf8,
      body: this.spool.openMessage(envelope),
    });
  }

  /** One line per outcome, like Postfix's status=sent / deferred / bounced. */
  private logAttempt(envelope: Envelope, primary: PrimaryState, replies: RecipientReply[], started: number): void {
    const groups: Record<string, RecipientReply[]> = { sent: [], deferred: [], bounced: [] };
    for (const reply of replies) groups[reply.code >= 200 && reply.code < 300 ? 'sent' : reply.code >= 500 ? 'bounced' : 'deferred'].push(reply);
    for (const [status, group] of Object.entries(groups)) {
      if (group.length === 0) continue;
      this.metrics?.deliveries.inc({ status }, group.length);
      this.log.info(
        {
          queueId: envelope.id,
          to: group.map((r) => r.address),
          primary: primary.key,
          status,
          reply: group[0].reply,
          delay: (Date.now() - Date.parse(envelope.arrival)) / 1000,
          attemptMs: Date.now() - started,
          ...(status === 'deferred' ? { nextAttempt: envelope.nextAttempt } : {}),
        },
        `status=${status}`,
      );
    }
  }

  private markDown(primary: PrimaryState, reason: string): void {
    if (!primary.up) return;
    primary.up = false;
    this.log.warn({ primary: primary.key, reason, probeInterval: this.config.relay.probeInterval }, 'primary is DOWN: delivery stopped, probing');
    this.emit('progress');
    this.scheduleProbe(primary);
  }

  private scheduleProbe(primary: PrimaryState): void {
    if (!this.daemon || this.stopped) return;
    clearTimeout(primary.probe);
    primary.probe = setTimeout(() => void this.probe(primary), this.config.relay.probeInterval * 1000);
  }

  /** Connect, EHLO, QUIT: the primary is up again when that works. */
  private async probe(primary: PrimaryState): Promise<void> {
    try {
      const connection = await PrimaryConnection.open(primary.address, this.connectionOptions());
      connection.quit();
    } catch (error) {
      this.log.debug({ primary: primary.key, reason: (error as Error).message }, 'probe failed');
      primary.up = false;
      this.scheduleProbe(primary);
      return;
    }
    clearTimeout(primary.probe);
    if (!primary.up) this.log.info({ primary: primary.key }, 'primary is UP: replaying the spool');
    primary.up = true;
    this.kick();
  }
}

function domainOf(address: string): string {
  return address.slice(address.lastIndexOf('@') + 1).toLowerCase();
}

/**
 * nodemailer sends one NOTIFY and one ORCPT for a whole envelope, so recipients
 * whose RFC 3461 parameters differ go in separate transactions on the same connection.
 */
function dsnGroups(recipients: Recipient[]): Recipient[][] {
  const groups = new Map<string, Recipient[]>();
  for (const recipient of recipients) {
    const key = `${recipient.notify?.join(',') ?? ''}|${recipient.orcpt ?? ''}`;
    groups.set(key, [...(groups.get(key) ?? []), recipient]);
  }
  return [...groups.values()];
}
