import { EventEmitter, once } from 'node:events';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import type { PrimaryState } from '../receive/server.js';
import type { Metrics } from '../control/metrics.js';
import { Notifier } from '../dsn/notifier.js';
import { CorruptEnvelopeError, deliveredSize, type Envelope, type Recipient } from '../spool/envelope.js';
import { probeStorage } from '../spool/probe.js';
import type { Spool } from '../spool/spool.js';
import { onQueuedMessage, type Change, type QueuedOutcome } from '../spool/transaction.js';
import { isInternalAddress, mailHosts, NoMailDomain } from './mx.js';
import { Routes, type Route } from './routes.js';
import { backoff, hasPendingIn, Schedule, type Chore, type Scheduled } from './schedule.js';
import { PrimaryUnreachable, SmtpSession } from './session.js';
import { sendMessage, type OutgoingMessage, type RecipientResult } from './transaction.js';

/** What one attempt did with one message's recipients for one route. */
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

/** How long a flush keeps trying a message another process holds before it reports it busy. */
const BUSY_PATIENCE_MS = 3000;

/** Delivery stopped because the spool cannot record what happened (full, read-only, I/O errors). */
export class SpoolFaultError extends Error {}

/**
 * The delivery agent: replays the spool to the primaries. The schedule says which
 * message is due where; workers (up to relay.concurrency per route) each hold one
 * session and deliver due messages oldest first, one transaction per message. A
 * primary that cannot be connected to is marked down and probed every
 * relay.probeInterval; when a probe succeeds, replay starts at once.
 *
 * Every change to a message goes through one spool transaction (lock, read, change,
 * save, unlock). What can go wrong with one message is contained to it: a message
 * that cannot be processed is held with the reason, never retried in a loop. What is
 * our own fault (the spool cannot be written) stops all delivery until a probe of
 * the spool succeeds: attempts whose outcome cannot be recorded would repeat forever.
 */
export class Relay extends EventEmitter {
  private readonly schedule: Schedule;
  private readonly routes: Routes;
  private readonly notifier: Notifier;
  private choresRunning = 0;
  private wake: NodeJS.Timeout | undefined;
  private wakeAt = Infinity;
  private primaryWatch: NodeJS.Timeout | undefined;
  private stopped = false;
  private fault: { reason: string; probe: NodeJS.Timeout | undefined } | undefined;
  /** Storage faults since the last attempt that could be recorded: the spool probe backs off with it. */
  private faultStreak = 0;
  /**
   * Final answers (delivered, failed) the spool could not record, by queue id: applied
   * before the message is tried again, so a 250 whose removal failed is not sent twice.
   * In memory, as the backoff of an unrecorded deferral is: a restart forgets them.
   */
  private readonly unrecorded = new Map<string, RecipientResult[]>();
  /**
   * DSNs written in a transaction on their original, indexed once that transaction saved it
   * (settled, its notice cleared): delivered and removed before, a crash would leave the
   * notice recorded and no DSN in the spool, and the restart would send it again.
   */
  private readonly noticesOf = new Map<string, Envelope[]>();
  /** The spool's file system was found full (ENOSPC) and nothing could be written since. */
  private full = false;
  /**
   * The schedule's clock: the wall clock at start, advanced by the monotonic one. A step of
   * the wall clock (NTP, an admin, a VM resumed) moves no retry; wall time is for what is
   * shown and stored (arrival, nextAttempt), converted when an envelope is indexed.
   */
  private readonly clock = () => performance.timeOrigin + performance.now();

  constructor(
    private config: Config,
    private readonly spool: Spool,
    private readonly log: Logger,
    /** A daemon probes down primaries and retries on its own; a one-shot `flush` does not. */
    private readonly daemon: boolean,
    private readonly metrics?: Metrics,
  ) {
    super();
    this.routes = new Routes(config);
    this.schedule = new Schedule(config.relay, (kind, recipient) => this.routes.keyFor(kind, recipient));
    this.notifier = new Notifier(
      config,
      spool,
      log,
      (dsn, original) => this.noticesOf.set(original.id, [...(this.noticesOf.get(original.id) ?? []), dsn]),
      (envelope, recipient) => this.routes.resolve(envelope.kind, recipient).address.host,
      metrics,
    );
  }

  /**
   * Indexes the spool; call once before anything else. Interrupted notices are finished as
   * chores, not here; a notice a crash left written but not settled waits for that chore
   * (which indexes it when it finds it queued): delivered and removed first, it would be
   * written again by the chore, and sent twice.
   */
  async load(): Promise<void> {
    const recovered = this.spool.takeRecovered();
    const { envelopes, unreadable } = recovered ? { envelopes: recovered, unreadable: [] } : await this.spool.list();
    for (const { id, reason } of unreadable) this.log.error({ queueId: id, reason }, 'unreadable envelope, not delivered');
    const unsettledNotices = new Set(envelopes.flatMap((envelope) => (envelope.notice ? [envelope.notice.id] : [])));
    for (const envelope of envelopes) if (!unsettledNotices.has(envelope.id)) this.index(envelope);
    this.log.info({ messages: this.schedule.size }, 'relay: queue indexed');
    this.watchPrimaries();
  }

  /** A message the receiver just queued: due now. */
  add(envelope: Envelope): void {
    this.index(envelope);
    this.kick();
  }

  /** (Re)indexes a message: its stored wall times read on the schedule's clock. */
  private index(envelope: Envelope): void {
    this.schedule.index(envelope, this.clock(), Date.now());
  }

  /** Fires the timers that are due, starts chores and workers, arms the next wake-up. */
  kick(): void {
    if (this.stopped) return;
    this.schedule.advance(this.clock());
    if (!this.fault) {
      this.startChores();
      for (const key of this.schedule.readyRoutes()) {
        const route = this.routes.get(key);
        while (route?.up && route.workers < Math.min(this.config.relay.concurrency, this.schedule.readyCount(key))) {
          route.workers++;
          this.work(route)
            .catch((error: unknown) => this.log.error({ err: error, primary: route.key }, 'relay worker failed'))
            .finally(() => {
              route.workers--;
              this.routes.sweep((k) => this.schedule.uses(k));
              this.emit('progress');
            });
        }
      }
    }
    this.armWake();
  }

  private armWake(): void {
    const next = this.schedule.nextWake();
    if (!this.daemon || this.stopped || next === this.wakeAt) return;
    clearTimeout(this.wake);
    this.wakeAt = next;
    if (next < Infinity) {
      this.wake = setTimeout(
        () => {
          this.wakeAt = Infinity;
          this.kick();
        },
        Math.min(Math.max(0, next - this.clock()) + 10, 2 ** 31 - 1),
      );
    }
  }

  /** Expiries, delay notices and interrupted notices, at most relay.concurrency at a time. */
  private startChores(): void {
    while (this.choresRunning < this.config.relay.concurrency) {
      const next = this.schedule.nextChore();
      if (!next) return;
      this.choresRunning++;
      this.schedule.take(next.entry);
      this.chore(next.chore, next.entry)
        .catch((error: unknown) => this.log.error({ err: error, queueId: next.entry.id, chore: next.chore }, 'queue chore failed'))
        .finally(() => {
          this.choresRunning--;
          this.schedule.finish(next.entry, this.clock());
          this.emit('progress');
          this.kick();
        });
    }
  }

  private async chore(chore: Chore, entry: Scheduled): Promise<void> {
    if (chore === 'warn') entry.warnAt = Infinity;
    await this.onMessage(entry, async (envelope) => {
      const pending = envelope.recipients.filter((r) => r.state === 'pending');
      if (chore === 'warn' && !envelope.delayWarned && pending.length > 0) await this.notifier.notify(envelope, pending, 'delayed');
      if (chore === 'expire') {
        for (const recipient of pending) {
          recipient.state = 'failed';
          recipient.status = '4.4.7';
        }
        this.log.info(
          { event: 'expired', queueId: envelope.id, to: pending.map((r) => r.address), lifetime: this.config.relay.queueLifetime },
          'status=expired',
        );
      }
      return this.settle(envelope);
    });
  }

  /**
   * Runs `change` in a spool transaction on the message and re-indexes what it left.
   * Another process holding it: look again in a second. Anything thrown is handled
   * here (storage fault, or a message that cannot be processed), never passed on.
   */
  private async onMessage(
    entry: Scheduled,
    change: (envelope: Envelope, bytes?: Buffer) => Promise<Change<Envelope>>,
  ): Promise<QueuedOutcome<Envelope> | undefined> {
    try {
      const outcome = await onQueuedMessage(this.spool, entry.id, async (envelope, bytes) => {
        if (envelope.notice) await this.notifier.resume(envelope); // finish what a crash or a fault interrupted first
        return change(envelope, bytes);
      });
      if (outcome.kind === 'busy') entry.blockedUntil = this.clock() + 1000;
      else if (outcome.kind === 'gone') this.schedule.delete(entry.id);
      else this.index(outcome.value); // only once saved: a change that could not be saved is not taken for done
      for (const dsn of this.noticesOf.get(entry.id) ?? []) this.add(dsn); // its original is saved: the DSN may go
      this.noticesOf.delete(entry.id);
      if (this.full && outcome.kind === 'done' && outcome.value.recipients.length > 0) {
        this.full = false; // an envelope was written: there is room again
        this.log.info({ event: 'spool_full_cleared', queueId: entry.id }, 'spool has room again');
      }
      this.faultStreak = 0;
      return outcome;
    } catch (error) {
      this.noticesOf.delete(entry.id); // not saved: its notice is still recorded, and finishing it queues its DSN again
      await this.failed(entry, error);
      return undefined;
    }
  }

  /** Settles a message: failed recipients get their DSN; it leaves the spool once every recipient is delivered or reported. */
  private async settle(envelope: Envelope): Promise<Change<Envelope>> {
    const unreported = envelope.recipients.filter((r) => r.state === 'failed' && !r.reported);
    if (unreported.length > 0 && envelope.kind === 'dsn') return this.holdUndeliverable(envelope, unreported);
    if (unreported.length > 0) await this.notifier.notify(envelope, unreported, 'failed');
    const settled = envelope.recipients.every((r) => r.state === 'delivered' || (r.state === 'failed' && r.reported));
    return settled ? { save: 'remove', value: { ...envelope, recipients: [] } } : { save: 'update', value: envelope };
  }

  /**
   * A notice that cannot be delivered either (its recipient, the original sender, refused it
   * or it expired): no notice about a notice is ever sent, and dropping it would lose the
   * last trace of the original message. It is held with the reason, for a human.
   */
  private holdUndeliverable(envelope: Envelope, failed: Recipient[]): Change<Envelope> {
    envelope.held = true;
    envelope.heldReason = `undeliverable notice: ${failed.map((r) => `${r.address}: ${r.reply ?? `status ${r.status ?? 'unknown'}`}`).join('; ')}`;
    for (const recipient of failed) recipient.reported = true; // this hold is its report: a release does not hold it again
    this.metrics?.undeliverableHeld.inc();
    this.log.warn(
      { event: 'undeliverable_held', queueId: envelope.id, to: failed.map((r) => r.address), reason: envelope.heldReason },
      'notice undeliverable: held (see "queue list"; "queue delete" once read)',
    );
    return { save: 'update', value: envelope };
  }

  /** A job on a message threw: our storage (stop delivery until it works), a corrupt envelope, or a message we cannot process (hold it). */
  private async failed(entry: Scheduled, error: unknown): Promise<void> {
    if (isStorageError(error)) return this.storageFault(error, entry);
    try {
      if (error instanceof CorruptEnvelopeError) {
        this.schedule.delete(entry.id);
        return await this.spool.quarantine(entry.id, error.message, this.log);
      }
      const reason = `cannot process this message: ${(error as Error).message}`;
      const outcome = await onQueuedMessage(this.spool, entry.id, (envelope) => {
        envelope.held = true;
        envelope.heldReason = reason;
        return { save: 'update', value: envelope };
      });
      if (outcome.kind === 'busy') entry.blockedUntil = this.clock() + 1000;
      if (outcome.kind !== 'done') return;
      this.index(outcome.value);
      this.metrics?.relayHeld.inc();
      this.log.error(
        { event: 'message_held', queueId: entry.id, err: error },
        'message held: the relay cannot process it (release it with "queue release" once fixed)',
      );
    } catch (second) {
      if (isStorageError(second)) return this.storageFault(second, entry);
      this.schedule.delete(entry.id);
      this.log.error({ event: 'message_set_aside', queueId: entry.id, err: error }, 'message set aside until restart: it can be neither processed nor held');
    }
  }

  /**
   * The spool cannot record an outcome. Attempting more would deliver messages again
   * and again (a 250 we cannot record) or hammer the primary (a 4xx we cannot back
   * off): everything stops, and a probe of the spool resumes delivery once it works.
   * Except a full disk (below), where stopping is what would keep it full.
   */
  private storageFault(error: NodeJS.ErrnoException, entry: Scheduled): void {
    const { code, syscall, path } = error;
    const reason = `${code} on ${syscall}${path ? ` ${path}` : ''}`;
    if (code !== 'ENOSPC') return this.suspend(reason, { queueId: entry.id, err: error });
    // A full disk is the exception: delivering is what frees space (a delivered message is
    // removed, which needs none), so delivery goes on. What could not be written (an update,
    // a notice) waits in memory as above; this message is looked at again after a probe interval.
    entry.due = Math.max(entry.due, this.clock() + this.config.relay.probeInterval * 1000);
    if (this.full) return;
    this.full = true;
    this.log.warn(
      { event: 'spool_full', queueId: entry.id, reason },
      'spool full: delivery goes on (each delivered message frees space), outcomes that need writing wait in memory',
    );
  }

  /** Stops delivery until a probe of the spool succeeds (also when the spool's folder was replaced under the daemon). */
  suspend(reason: string, details: Record<string, unknown> = {}): void {
    if (this.fault || this.stopped) return;
    this.fault = { reason, probe: undefined };
    this.metrics?.spoolFault.set(1);
    this.log.error({ event: 'spool_fault', ...details, reason }, 'spool cannot record delivery outcomes: delivery stopped until it can');
    this.emit('progress');
    this.probeSpoolLater();
  }

  private probeSpoolLater(): void {
    if (!this.daemon || this.stopped || !this.fault) return;
    const { probeInterval, maxBackoff } = this.config.relay;
    const delay = backoff(++this.faultStreak, probeInterval, Math.max(probeInterval, maxBackoff));
    this.fault.probe = setTimeout(() => {
      probeStorage(this.spool).then(
        () => {
          this.log.info({ event: 'spool_fault_cleared', reason: this.fault?.reason }, 'spool writable again: delivery resumed');
          this.fault = undefined;
          this.metrics?.spoolFault.set(0);
          this.kick();
        },
        (error: unknown) => {
          this.log.debug({ err: error }, 'spool probe failed');
          this.probeSpoolLater();
        },
      );
    }, delay * 1000);
  }

  /** Why delivery is stopped by the spool, if it is. */
  get storageProblem(): string | undefined {
    return this.fault?.reason;
  }

  /**
   * Attempts the matching messages now, whatever their backoff (postqueue -f / -s / -i),
   * probing down primaries first; resolves when each has had its attempt or cannot have one.
   */
  async flush(filter: FlushFilter = {}): Promise<FlushReport> {
    const matching = this.matching(filter);
    const waiting = new Set(matching.map((entry) => entry.id));
    const report: FlushReport = { messages: waiting.size, delivered: 0, deferred: 0, failed: 0, unreachable: 0, busy: 0 };
    const started = this.clock();
    const onAttempt = (outcome: AttemptOutcome) => {
      // Another process has it (a second flush delivering it): look again in a second, a few times, before calling it busy.
      if (outcome.busy && this.clock() - started < BUSY_PATIENCE_MS) return;
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
      const now = this.clock();
      for (const entry of matching) {
        entry.due = 0;
        entry.blockedUntil = 0;
        this.schedule.touch(entry, now);
      }
      const keys = new Set(matching.flatMap((entry) => entry.routes));
      const down = [...keys].map((key) => this.routes.get(key)).filter((route): route is Route => Boolean(route && !route.up && !route.mxDomain));
      await Promise.all(down.map((route) => this.probe(route)));
      this.kick();
      while (waiting.size > 0) {
        if (this.fault) throw new SpoolFaultError(`delivery stopped: the spool cannot be written (${this.fault.reason})`);
        for (const id of waiting) {
          if (this.schedule.isBusy(id)) continue; // its outcome is on the way
          const entry = this.schedule.get(id);
          const reachable = entry && entry.routes.some((key) => this.routes.get(key)?.up);
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

  /** Stops scheduling; resolves when the workers and chores have finished their current message. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.wake);
    clearTimeout(this.primaryWatch);
    clearTimeout(this.fault?.probe);
    for (const route of this.routes.all()) clearTimeout(route.probe);
    while ([...this.routes.all()].some((r) => r.workers > 0) || this.choresRunning > 0) await once(this, 'progress');
    await this.notifier.save();
  }

  private matching(filter: FlushFilter): Scheduled[] {
    return [...this.schedule.values()].filter(
      (entry) => !entry.held && (!filter.id || entry.id === filter.id) && (!filter.domain || hasPendingIn(entry, filter.domain.toLowerCase())),
    );
  }

  /** Primary states and queue counts, for `status` and metrics. */
  summary(): { primaries: Array<{ primary: string; up: boolean }>; indexed: number; bytes: number; oldestArrival: number | undefined } {
    let oldestArrival: number | undefined;
    for (const entry of this.schedule.values()) oldestArrival = Math.min(oldestArrival ?? Infinity, entry.arrival);
    return { primaries: this.routes.primaries(), indexed: this.schedule.size, bytes: this.schedule.bytes, oldestArrival };
  }

  /** A reloaded config (SIGHUP): concurrency, backoff, lifetimes, primaries apply from now on. */
  updateConfig(config: Config): void {
    this.config = config;
    this.notifier.updateConfig(config);
    this.routes.updateConfig(config);
    this.schedule.reconfigure(config.relay, (kind, recipient) => this.routes.keyFor(kind, recipient), this.clock());
    this.watchPrimaries();
    this.kick();
  }

  /** Reflects a message edited outside the relay (hold, release, delete). */
  refresh(id: string, envelope: Envelope | undefined): void {
    if (envelope) this.index(envelope);
    else this.schedule.delete(id);
    this.kick();
  }

  private async work(route: Route): Promise<void> {
    let session: SmtpSession | undefined;
    try {
      while (route.up && !this.stopped && !this.fault) {
        const entry = this.schedule.next(route.key, this.clock());
        if (!entry) break;
        this.schedule.take(entry);
        try {
          if (!session?.usable) {
            session = await this.connect(route);
            if (!route.mxDomain) this.seen(route, session);
          }
          const outcome = await this.attempt(entry, route, session);
          if (outcome) this.emit('attempt', outcome);
        } catch (error) {
          if (!(error instanceof PrimaryUnreachable) && !(error instanceof NoMailDomain)) throw error;
          if (route.mxDomain) {
            // A sender's MX is not ours to probe: this message backs off like a 4xx (or fails for good).
            const outcome = await this.unreachableMx(entry, route, error);
            if (outcome) this.emit('attempt', outcome);
            break;
          }
          this.emit('attempt', { id: entry.id, primary: route.key, delivered: 0, deferred: 0, failed: 0, unreachable: true, busy: false });
          this.markDown(route, error.message);
        } finally {
          this.schedule.finish(entry, this.clock());
          this.kick();
        }
      }
    } finally {
      session?.quit(); // what else is thrown is logged by kick(), which started this worker
    }
  }

  /** A session with a primary, or with the first MX host of a sender domain that answers. */
  private async connect(route: Route): Promise<SmtpSession> {
    if (!route.mxDomain) return SmtpSession.open(route.address, this.sessionOptions(route));
    const found = await mailHosts(route.mxDomain, this.config.dns.servers).catch((error: unknown) => {
      if (error instanceof NoMailDomain) throw error;
      throw new PrimaryUnreachable(`MX lookup for ${route.mxDomain} failed: ${(error as Error).message}`);
    });
    const hosts = this.config.dsn.allowInternal ? found : found.filter((host) => !isInternalAddress(host.address));
    if (hosts.length === 0 && found.length > 0) {
      const internal = found.map((host) => `${host.name}[${host.address}]`).join(', ');
      throw new NoMailDomain(`${route.mxDomain}: its mail hosts are on internal networks (${internal}): no DSN sent there (dsn.allowInternal)`);
    }
    const failures: string[] = [];
    for (const host of hosts) {
      try {
        return await SmtpSession.open({ host: host.address, port: route.address.port }, { ...this.sessionOptions(), servername: host.name });
      } catch (error) {
        failures.push(`${host.name}[${host.address}]: ${(error as Error).message}`);
      }
    }
    throw new PrimaryUnreachable(failures.length ? failures.join('; ') : `no address for the mail hosts of ${route.mxDomain}`);
  }

  private sessionOptions(route?: Route) {
    const { hostname, relay } = this.config;
    const verify = route?.address.tls;
    return { name: hostname, connectTimeout: relay.connectTimeout, commandTimeout: relay.commandTimeout, ...(verify ? { verify } : {}) };
  }

  private async unreachableMx(entry: Scheduled, route: Route, error: Error): Promise<AttemptOutcome | undefined> {
    const permanent = error instanceof NoMailDomain;
    const reply = permanent ? `550 5.1.2 ${error.message}` : `451 4.4.1 ${error.message}`;
    return this.attemptWith(entry, route, async (recipients) =>
      recipients.map((r) => ({ address: r.address, outcome: permanent ? 'failed' : 'deferred', reply })),
    );
  }

  /** One attempt: this route's pending recipients of one message, in one transaction on the session. */
  private attempt(entry: Scheduled, route: Route, session: SmtpSession): Promise<AttemptOutcome | undefined> {
    return this.attemptWith(entry, route, async (recipients, envelope, bytes) => {
      const result = await sendMessage(session, this.outgoing(envelope, recipients, bytes));
      if (!result.reusable) session.close();
      return result.recipients;
    });
  }

  private async attemptWith(
    entry: Scheduled,
    route: Route,
    deliver: (recipients: Recipient[], envelope: Envelope, bytes?: Buffer) => Promise<RecipientResult[]>,
  ): Promise<AttemptOutcome | undefined> {
    const counts: AttemptOutcome = { id: entry.id, primary: route.key, delivered: 0, deferred: 0, failed: 0, unreachable: false, busy: false };
    let retryAt: number | undefined;
    let attempted: { envelope: Envelope; results: RecipientResult[]; attemptMs: number } | undefined;
    const earlier = this.unrecorded.get(entry.id) ?? [];
    const outcome = await this.onMessage(entry, async (envelope, bytes) => {
      this.applyUnrecorded(envelope, earlier);
      const recipients = envelope.recipients.filter((r) => r.state === 'pending' && this.routes.keyFor(envelope.kind, r) === route.key);
      if (envelope.held || recipients.length === 0) return this.settle(envelope);
      const started = this.clock();
      const results = await deliver(recipients, envelope, bytes);
      attempted = { envelope, results, attemptMs: this.clock() - started };
      this.record(envelope, recipients, results, counts);
      retryAt = envelope.nextAttempt === undefined ? undefined : this.clock() + Date.parse(envelope.nextAttempt) - Date.now();
      return this.settle(envelope);
    });
    // Logged once the outcome is saved (or failed to be), so a status= line never runs ahead of the spool.
    if (attempted) this.logAttempt(attempted.envelope, route, attempted.results, attempted.attemptMs, outcome !== undefined);
    if (outcome) this.unrecorded.delete(entry.id);
    else {
      // Not recorded (storage fault): keep the final answers and the backoff in memory.
      const final = (attempted?.results ?? []).filter((result) => result.outcome !== 'deferred');
      if (final.length > 0) this.unrecorded.set(entry.id, [...earlier, ...final]);
      if (retryAt !== undefined) entry.due = Math.max(entry.due, retryAt);
    }
    if (!outcome) return undefined;
    return outcome.kind === 'busy' ? { ...counts, busy: true } : counts;
  }

  private outgoing(envelope: Envelope, recipients: Recipient[], bytes?: Buffer): OutgoingMessage {
    return {
      sender: envelope.sender,
      recipients: recipients.map(({ address, notify, orcpt }) => ({ address, notify, orcpt })),
      size: deliveredSize(envelope),
      eightBit: envelope.bodyType === '8bitmime',
      smtpUtf8: envelope.smtpUtf8,
      ret: envelope.dsn?.ret,
      envid: envelope.dsn?.envid,
      body: () => this.spool.openMessage(envelope, bytes),
    };
  }

  /** The final answers an earlier attempt got but could not record, on the recipients still pending. */
  private applyUnrecorded(envelope: Envelope, results: RecipientResult[]): void {
    for (const result of results) {
      const recipient = envelope.recipients.find((r) => r.address === result.address && r.state === 'pending');
      if (!recipient) continue;
      recipient.state = result.outcome === 'delivered' ? 'delivered' : 'failed';
      recipient.reply = result.reply;
      if (result.remoteMta) recipient.remoteMta = result.remoteMta;
    }
  }

  /** Applies the results to the recipients, and the backoff when any was deferred. */
  private record(envelope: Envelope, recipients: Recipient[], results: RecipientResult[], counts: AttemptOutcome): void {
    for (const result of results) {
      const recipient = recipients.find((r) => r.address === result.address)!;
      recipient.reply = result.reply;
      if (result.remoteMta) recipient.remoteMta = result.remoteMta;
      if (result.outcome === 'delivered') recipient.state = 'delivered';
      else if (result.outcome === 'failed') recipient.state = 'failed';
      counts[result.outcome]++;
    }
    envelope.lastAttempt = new Date().toISOString();
    if (counts.deferred > 0) {
      envelope.deferrals = (envelope.deferrals ?? 0) + 1;
      const seconds = backoff(envelope.deferrals, this.config.relay.minBackoff, this.config.relay.maxBackoff);
      envelope.nextAttempt = new Date(Date.now() + seconds * 1000).toISOString();
    }
  }

  /** One line per outcome, like Postfix's status=sent / deferred / bounced. */
  private logAttempt(envelope: Envelope, route: Route, results: RecipientResult[], attemptMs: number, recorded: boolean): void {
    const statusOf = { delivered: 'sent', deferred: 'deferred', failed: 'bounced' } as const;
    for (const outcome of ['delivered', 'deferred', 'failed'] as const) {
      const group = results.filter((r) => r.outcome === outcome);
      if (group.length === 0) continue;
      const status = statusOf[outcome];
      this.metrics?.deliveries.inc({ status }, group.length);
      this.log.info(
        {
          event: 'delivery',
          queueId: envelope.id,
          to: group.map((r) => r.address),
          primary: route.key,
          status,
          reply: group[0].reply,
          delay: (Date.now() - Date.parse(envelope.arrival)) / 1000,
          attemptMs,
          ...(status === 'deferred' ? { nextAttempt: envelope.nextAttempt } : {}),
          ...(recorded ? {} : { recorded: false }),
        },
        `status=${status}`,
      );
    }
  }

  /** The primary of a source as the SMTP side sees it: known down, and for how long sessions have opened (ms). */
  primaryState(source: string): PrimaryState {
    const route = this.routes.primaryOf(source);
    return { address: route.address, down: !route.up, upForMs: route.up && route.seenUpSince !== undefined ? this.clock() - route.seenUpSince : 0 };
  }

  /** The SMTP side could not open a session to a source's primary (an RCPT probe): down, as if a delivery had failed to connect. */
  primaryUnreachable(source: string, reason: string): void {
    this.markDown(this.routes.primaryOf(source), `RCPT probe: ${reason}`);
  }

  /**
   * With screen.deferWhilePrimaryUp, primaries that are up are probed every probeInterval
   * too: "seen up for so long" must come from recent sessions, not from an idle queue.
   */
  private watchPrimaries(): void {
    if (!this.daemon || this.stopped || this.config.screen.deferWhilePrimaryUp <= 0) return;
    clearTimeout(this.primaryWatch);
    this.primaryWatch = setTimeout(() => {
      const probes = [...new Set(this.config.sources.map((source) => this.routes.primaryOf(source.name)))]
        .filter((route) => route.up && route.workers === 0)
        .map((route) => this.probe(route));
      Promise.all(probes)
        .catch((error: unknown) => this.log.error({ err: error }, 'primary watch failed'))
        .finally(() => this.watchPrimaries());
    }, this.config.relay.probeInterval * 1000);
  }

  /** What a primary announced in its EHLO (the SMTP side promises no more: SIZE, SMTPUTF8). */
  private seen(route: Route, session: SmtpSession): void {
    route.seenUpSince ??= this.clock();
    this.emit('primary-capabilities', route.key, { size: session.sizeLimit ?? null, smtpUtf8: session.offers('SMTPUTF8') });
  }

  private markDown(route: Route, reason: string): void {
    route.seenUpSince = undefined;
    if (!route.up) return;
    route.up = false;
    this.log.warn(
      { event: 'primary_down', primary: route.key, reason, probeInterval: this.config.relay.probeInterval },
      'primary is DOWN: delivery stopped, probing',
    );
    this.emit('progress');
    this.scheduleProbe(route);
  }

  private scheduleProbe(route: Route): void {
    if (!this.daemon || this.stopped) return;
    clearTimeout(route.probe);
    route.probe = setTimeout(() => {
      this.probe(route).catch((error: unknown) => this.log.error({ err: error, primary: route.key }, 'probe failed'));
    }, this.config.relay.probeInterval * 1000);
  }

  /** Connect, EHLO, QUIT: the primary is up again when that works. */
  private async probe(route: Route): Promise<void> {
    try {
      const session = await SmtpSession.open(route.address, this.sessionOptions(route));
      this.seen(route, session);
      session.quit();
    } catch (error) {
      this.log.debug({ primary: route.key, reason: (error as Error).message }, 'probe failed');
      if (route.up) return this.markDown(route, (error as Error).message); // a watch probe (watchPrimaries)
      route.seenUpSince = undefined;
      this.scheduleProbe(route);
      return;
    }
    clearTimeout(route.probe);
    if (!route.up) this.log.info({ event: 'primary_up', primary: route.key }, 'primary is UP: replaying the spool');
    route.up = true;
    this.kick();
  }
}

/** System errors that say the spool (or the process's descriptors) cannot be used now, whatever the message. */
const STORAGE_ERRORS = new Set(['ENOSPC', 'EDQUOT', 'EROFS', 'EIO', 'EACCES', 'EPERM', 'EMFILE', 'ENFILE', 'ENOMEM', 'EBUSY', 'ESTALE', 'EAGAIN']);

/** A fault of the storage under the spool, as opposed to a problem with one message (a file that is a directory, say). */
function isStorageError(error: unknown): error is NodeJS.ErrnoException {
  return STORAGE_ERRORS.has((error as NodeJS.ErrnoException | null)?.code ?? '');
}
