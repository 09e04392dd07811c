import type { Logger } from 'pino';
import type { HostPort } from '../config/schema.js';
import { isAscii } from '../mail/address.js';
import { WindowRate } from '../rate/window.js';
import { PrimaryUnreachable, SessionLost, SmtpSession, type SessionOptions } from '../relay/session.js';
import type { ExpiringStore } from './expiring-store.js';

export interface VerifyOptions {
  /** Seconds a "the primary accepts it" answer is kept (Postfix's address_verify_positive_expire_time: 31 d). */
  positiveTtl: number;
  /** Seconds a "the primary refuses it" answer is kept (address_verify_negative_expire_time: 3 h). */
  negativeTtl: number;
  /** Seconds a probe may wait for its turn and for each reply. */
  timeout: number;
  /** Probe sessions open to one primary at most. */
  concurrency: number;
  /** Probes sent per second to one primary at most. */
  maxPerSecond: number;
  /** Probes one client may cause per minute. */
  perClientPerMinute: number;
}

/** What the primary said about an address: accepted, or refused with its 5xx reply. */
export interface Verdict {
  ok: boolean;
  reply?: string;
}

/** Nobody can tell: the primary is down, did not answer, or the client has used up its probes. */
export interface Unverifiable {
  unverifiable: string;
}

/** A probe session left idle this long is closed (QUIT). */
const IDLE_MS = 5000;

/**
 * Recipient verification for domains without an address list (the mxlist source,
 * domain-only file entries), as Postfix's reject_unverified_recipient: an RCPT probe
 * to the primary with the null sender, its answer cached (persisted) and used while
 * the primary is down. Only a 5xx to the RCPT is a "no"; anything else decides nothing.
 * As verify(8), it never hammers the primary: probes go through a few reused sessions per
 * primary at a bounded rate, one probe answers every RCPT asking the same address
 * meanwhile, and each client has a budget of probes per minute.
 */
export class RecipientVerifier {
  private readonly pools = new Map<string, ProbePool>();
  private readonly inFlight = new Map<string, Promise<Verdict | Unverifiable>>();
  private readonly budget = new WindowRate(60_000);

  constructor(
    private readonly cache: ExpiringStore<Verdict>,
    private readonly options: VerifyOptions,
    private readonly log: Logger,
  ) {}

  /**
   * The cached verdict, else a probe when the primary is thought up. A probe that cannot
   * open a session tells `unreachable`: the primary is down for the relay too.
   */
  async verify(
    address: string,
    primary: HostPort,
    primaryDown: boolean,
    session: SessionOptions,
    client: string,
    unreachable?: (reason: string) => void,
  ): Promise<Verdict | Unverifiable> {
    const key = address.toLowerCase();
    const cached = this.cache.get(key);
    if (cached) return cached;
    if (primaryDown) return { unverifiable: 'the primary MX is down' };
    const asked = this.inFlight.get(key);
    if (asked) return asked;
    if (!this.budget.allow(client, this.options.perClientPerMinute)) {
      this.log.info(
        { event: 'verify_budget', client, to: address, limit: this.options.perClientPerMinute },
        'recipient verification: probes per client used up',
      );
      return { unverifiable: 'too many unverified addresses from your address, try again later' };
    }
    const probe = this.poolFor(primary, session)
      .probe(address)
      .then(
        (verdict): Verdict | Unverifiable => {
          if (!verdict) return { unverifiable: 'the primary MX did not answer' };
          this.cache.set(key, verdict, verdict.ok ? this.options.positiveTtl : this.options.negativeTtl);
          return verdict;
        },
        (error: unknown): Unverifiable => {
          this.log.info({ event: 'verify_unavailable', to: address, reason: (error as Error).message }, 'recipient verification: primary did not answer');
          if (error instanceof PrimaryUnreachable) unreachable?.(error.message);
          return { unverifiable: 'the primary MX did not answer' };
        },
      )
      .finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, probe);
    return probe;
  }

  /** Closes the probe sessions (a reload or a stop). */
  close(): void {
    for (const pool of this.pools.values()) pool.close();
    this.pools.clear();
  }

  private poolFor(primary: HostPort, session: SessionOptions): ProbePool {
    const key = `${primary.host}:${primary.port}`;
    let pool = this.pools.get(key);
    if (!pool) this.pools.set(key, (pool = new ProbePool(primary, session, this.options)));
    return pool;
  }
}

interface Job {
  address: string;
  resolve: (verdict: Verdict | undefined) => void;
  reject: (error: unknown) => void;
  /** Epoch ms after which it is not started: unverifiable. */
  deadline: number;
}

/** The probe sessions to one primary: at most `concurrency`, reused, probes sent at most `maxPerSecond`. */
export class ProbePool {
  private readonly idle: Array<{ session: SmtpSession; timer: NodeJS.Timeout }> = [];
  private readonly queue: Job[] = [];
  /** Sessions open or being opened. */
  private sessions = 0;
  /** Epoch ms before which no probe is sent. */
  private nextSend = 0;
  private wake: NodeJS.Timeout | undefined;
  private closed = false;
  /** Most sessions open at once (for the benchmark). */
  peakSessions = 0;

  constructor(
    private readonly primary: HostPort,
    private readonly sessionOptions: SessionOptions,
    private readonly options: Pick<VerifyOptions, 'concurrency' | 'maxPerSecond' | 'timeout'>,
  ) {}

  /** The primary's answer about `address`; undefined when it gave none in time. */
  probe(address: string): Promise<Verdict | undefined> {
    return new Promise((resolve, reject) => {
      this.queue.push({ address, resolve, reject, deadline: Date.now() + this.options.timeout * 1000 });
      this.pump();
    });
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.wake);
    for (const { session, timer } of this.idle.splice(0)) {
      clearTimeout(timer);
      session.quit();
    }
    for (const job of this.queue.splice(0)) job.resolve(undefined);
  }

  private pump(): void {
    clearTimeout(this.wake);
    while (this.queue.length > 0 && (this.idle.length > 0 || this.sessions < this.options.concurrency)) {
      const now = Date.now();
      const job = this.queue[0];
      if (job.deadline <= now) {
        this.queue.shift();
        job.resolve(undefined); // waited its whole timeout for a turn
        continue;
      }
      this.queue.shift();
      this.run(job).catch((error: unknown) => job.reject(error)); // run() settles the job itself; this is for its own faults
    }
    const first = this.queue[0];
    if (first) this.wake = setTimeout(() => this.pump(), Math.max(0, first.deadline - Date.now())); // expire it even if no session frees up
  }

  private async run(job: Job): Promise<void> {
    let reused = this.idle.pop();
    if (reused) clearTimeout(reused.timer);
    else this.sessions++;
    this.peakSessions = Math.max(this.peakSessions, this.sessions);
    let session: SmtpSession | undefined = reused?.session;
    try {
      session ??= await SmtpSession.open(this.primary, this.sessionOptions);
      let verdict: { verdict: Verdict | undefined; clean: boolean };
      try {
        verdict = await this.paced(session, job);
      } catch (error) {
        if (!(error instanceof SessionLost) || !reused) throw error;
        // The primary closed a session that sat idle: one fresh session gets the question.
        reused = undefined;
        session = await SmtpSession.open(this.primary, this.sessionOptions);
        verdict = await this.paced(session, job);
      }
      job.resolve(verdict.verdict);
      if (verdict.clean && session.usable && !this.closed) return this.keep(session);
      session.close();
    } catch (error) {
      session?.close();
      job.reject(error);
    }
    this.sessions--;
    this.pump();
  }

  /**
   * The probe on `session` once its turn comes: turns are spaced 1/maxPerSecond apart when
   * the probe is sent, not when its session was asked for (a session's opening takes
   * varying time, and two probes spaced at their start reached the primary 1 ms apart).
   */
  private async paced(session: SmtpSession, job: Job): Promise<{ verdict: Verdict | undefined; clean: boolean }> {
    const now = Date.now();
    const at = Math.max(now, this.nextSend);
    if (at >= job.deadline) return { verdict: undefined, clean: true }; // its turn would come too late
    this.nextSend = at + 1000 / this.options.maxPerSecond + 1; // 1 ms to spare: a ceiling, even with the loopback's jitter
    if (at > now) await new Promise((resolve) => setTimeout(resolve, at - now));
    return probeOn(session, job.address);
  }

  private keep(session: SmtpSession): void {
    const timer = setTimeout(() => {
      const at = this.idle.findIndex((entry) => entry.session === session);
      if (at !== -1) this.idle.splice(at, 1);
      this.sessions--;
      session.quit();
    }, IDLE_MS);
    timer.unref();
    this.idle.push({ session, timer });
    this.pump();
  }
}

/** MAIL FROM:<>, RCPT, RSET on an open session; `clean`: the RSET left it ready for the next probe. */
async function probeOn(session: SmtpSession, address: string): Promise<{ verdict: Verdict | undefined; clean: boolean }> {
  // A non-ASCII address needs SMTPUTF8 (RFC 6531 §3.4); a primary without it cannot be asked.
  const utf8 = !isAscii(address);
  if (utf8 && !session.offers('SMTPUTF8')) return { verdict: undefined, clean: true };
  const commands = [utf8 ? 'MAIL FROM:<> SMTPUTF8' : 'MAIL FROM:<>', `RCPT TO:<${address}>`, 'RSET'];
  const [mail, rcpt, rset] = session.offers('PIPELINING')
    ? await session.pipeline(commands)
    : [await session.command(commands[0]), await session.command(commands[1]), await session.command(commands[2])];
  const clean = rset.code === 250;
  if (mail.code !== 250) return { verdict: undefined, clean };
  if (rcpt.code >= 200 && rcpt.code < 300) return { verdict: { ok: true }, clean };
  if (rcpt.code >= 500) return { verdict: { ok: false, reply: rcpt.text }, clean };
  return { verdict: undefined, clean };
}
