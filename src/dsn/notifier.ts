import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import type { Envelope, Recipient } from '../spool/envelope.js';
import { newQueueId } from '../spool/queue-id.js';
import type { Spool } from '../spool/spool.js';
import type { Metrics } from '../control/metrics.js';
import { domainOf, isAscii } from '../mail/address.js';
import { WindowRate } from '../rate/window.js';
import { ExpiringStore } from '../screen/expiring-store.js';
import { composeNotice, type NoticeAction, type NoticeInput } from './compose.js';

/**
 * Turns failed (or long-delayed) recipients into a DSN queued in the spool, only
 * when one is allowed: never for the null sender or for a DSN (never bounce a
 * bounce), and as NOTIFY asks. The caller holds the message lock and persists
 * the envelope afterwards.
 */
export class Notifier {
  /** DSNs sent per sender domain in the last hour, kept in SPOOL/dsn-rate.json across restarts. */
  private readonly sent: ExpiringStore<number[]>;
  private readonly rate: WindowRate;

  constructor(
    private config: Config,
    private readonly spool: Spool,
    private readonly log: Logger,
    /** A DSN is in the spool, written for `original` (whose transaction has not saved it yet). */
    private readonly queued: (dsn: Envelope, original: Envelope) => void,
    private readonly remoteMta: (envelope: Envelope, recipient: Recipient) => string | undefined,
    private readonly metrics?: Metrics,
  ) {
    this.sent = new ExpiringStore(spool.root, 'dsn-rate', log);
    this.rate = new WindowRate(3600_000, this.sent);
  }

  /** Writes the DSN counts now (at stop). */
  save(): Promise<void> {
    return this.sent.save();
  }

  updateConfig(config: Config): void {
    this.config = config;
  }

  /**
   * Settles `recipients`: failed ones become reported, a delay marks the message
   * warned. The notice is recorded in the envelope before it is written, so a
   * crash in between yields exactly one notice (see resume).
   */
  async notify(envelope: Envelope, recipients: Recipient[], action: NoticeAction): Promise<void> {
    const owed = this.owed(envelope, recipients, action);
    if (owed.length > 0) {
      envelope.notice = { id: newQueueId(), action, recipients: owed.map((r) => r.address) };
      await this.spool.updateEnvelope(envelope);
      await this.write(envelope);
    }
    this.settle(envelope, recipients, action);
  }

  /** Finishes a notice that a crash interrupted between recording and settling it. */
  async resume(envelope: Envelope): Promise<void> {
    const notice = envelope.notice;
    if (!notice) return;
    await this.write(envelope);
    this.settle(
      envelope,
      envelope.recipients.filter((r) => notice.recipients.includes(r.address)),
      notice.action,
    );
  }

  private owed(envelope: Envelope, recipients: Recipient[], action: NoticeAction): Recipient[] {
    const owed = this.asked(envelope, recipients, action);
    if (owed.length === 0) return owed;
    const suppressed = envelope.noBounce ?? (this.rate.allow(domainOf(envelope.sender), this.config.dsn.maxPerDomainPerHour) ? undefined : 'rate');
    if (!suppressed) return owed;
    // Backscatter: a DSN to a sender that is likely forged lands on an innocent third party.
    this.metrics?.dsnSuppressed.inc({ reason: suppressed });
    this.log.info(
      { event: 'dsn_suppressed', queueId: envelope.id, to: envelope.sender, recipients: owed.map((r) => r.address), action, reason: suppressed },
      suppressed === 'rate' ? 'no DSN: dsn.maxPerDomainPerHour reached for this sender domain' : `no DSN: the sender is likely forged (${suppressed})`,
    );
    return [];
  }

  /** The recipients a DSN is asked for: none for the null sender or a DSN, else as NOTIFY says. */
  private asked(envelope: Envelope, recipients: Recipient[], action: NoticeAction): Recipient[] {
    if (envelope.sender === '' || envelope.kind === 'dsn') {
      this.log.info(
        { event: 'dsn_not_owed', queueId: envelope.id, to: recipients.map((r) => r.address), action, kind: envelope.kind ?? 'bounce' },
        action === 'failed' ? 'no DSN for a message from the null sender: failed recipients dropped' : 'no delay notice for a message from the null sender',
      );
      return [];
    }
    const wanted = action === 'failed' ? 'FAILURE' : 'DELAY';
    const owed = recipients.filter((r) => !r.notify || r.notify.includes(wanted));
    const skipped = recipients.filter((r) => !owed.includes(r));
    if (skipped.length > 0)
      this.log.info(
        { event: 'dsn_not_owed', queueId: envelope.id, to: skipped.map((r) => r.address), action, notify: skipped[0].notify },
        'no DSN: NOTIFY does not ask for it',
      );
    return owed;
  }

  private settle(envelope: Envelope, recipients: Recipient[], action: NoticeAction): void {
    if (action === 'failed') for (const recipient of recipients) recipient.reported = true;
    else envelope.delayWarned = true;
    delete envelope.notice;
  }

  private async write(envelope: Envelope): Promise<void> {
    const notice = envelope.notice!;
    const recipients = envelope.recipients.filter((r) => notice.recipients.includes(r.address));
    const input: NoticeInput = {
      hostname: this.config.hostname,
      envelope,
      recipients,
      action: notice.action,
      openOriginal: () => this.spool.openMessage(envelope),
      maxReturnSize: this.config.limits.messageSize,
      remoteMta: (recipient) => this.remoteMta(envelope, recipient),
      willRetryUntil: new Date(Date.parse(envelope.arrival) + this.config.relay.queueLifetime * 1000),
    };
    const data = await composeNotice(input).catch((error: unknown) => {
      if ((error as NodeJS.ErrnoException).syscall) throw error; // reading the spool failed: not the message's fault
      // A message the parser cannot read (a header of 17,000 lines) still gets its notice, without the original.
      this.log.warn(
        { event: 'notice_without_original', queueId: envelope.id, reason: (error as Error).message },
        'the original cannot be read: notice sent without it',
      );
      return composeNotice({ ...input, withoutOriginal: 'they could not be read' });
    });
    const dsn = await this.spool.enqueue(notice.id, data, {
      arrival: new Date().toISOString(),
      sender: '',
      recipients: [{ address: envelope.sender, state: 'pending' }],
      bodyType: envelope.bodyType,
      smtpUtf8: !isAscii(envelope.sender), // to a UTF-8 sender, the notice goes with SMTPUTF8 too
      client: { address: '127.0.0.1', helo: this.config.hostname },
      kind: 'dsn',
    });
    // The backscatter that remains by the operator's choice (verify.unverifiable: accept, SPF tagged): counted.
    if (envelope.senderSpf !== 'pass') this.metrics?.dsnUnauthenticated.inc();
    this.log.info(
      { event: 'dsn_queued', queueId: envelope.id, dsnId: dsn.id, action: notice.action, to: envelope.sender, recipients: notice.recipients },
      `DSN queued (${notice.action})`,
    );
    this.queued(dsn, envelope);
  }
}
