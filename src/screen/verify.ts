import type { Logger } from 'pino';
import type { HostPort } from '../config/schema.js';
import { PrimaryUnreachable, SmtpSession, type SessionOptions } from '../relay/session.js';
import type { ExpiringStore } from './expiring-store.js';
import { isAscii } from '../mail/address.js';

export interface VerifyOptions {
  /** Seconds a "the primary accepts it" answer is kept (Postfix's address_verify_positive_expire_time: 31 d). */
  positiveTtl: number;
  /** Seconds a "the primary refuses it" answer is kept (address_verify_negative_expire_time: 3 h). */
  negativeTtl: number;
}

/** What the primary said about an address: accepted, or refused with its 5xx reply. */
export interface Verdict {
  ok: boolean;
  reply?: string;
}

/**
 * Recipient verification for domains without an address list (the mxlist source,
 * domain-only file entries), as Postfix's reject_unverified_recipient: an RCPT probe
 * to the primary with the null sender, its answer cached (persisted) and used while
 * the primary is down. Only a 5xx to the RCPT is a "no"; anything else decides nothing.
 */
export class RecipientVerifier {
  constructor(
    private readonly cache: ExpiringStore<Verdict>,
    private readonly options: VerifyOptions,
    private readonly log: Logger,
  ) {}

  /**
   * The cached verdict, else a probe when the primary is thought up; undefined: nobody knows.
   * A probe that cannot open a session tells `unreachable`: the primary is down for the relay too.
   */
  async verify(
    address: string,
    primary: HostPort,
    primaryDown: boolean,
    session: SessionOptions,
    unreachable?: (reason: string) => void,
  ): Promise<Verdict | undefined> {
    const key = address.toLowerCase();
    const cached = this.cache.get(key);
    if (cached || primaryDown) return cached;
    const verdict = await probe(address, primary, session).catch((error: unknown) => {
      this.log.info({ event: 'verify_unavailable', to: address, reason: (error as Error).message }, 'recipient verification: primary did not answer');
      if (error instanceof PrimaryUnreachable) unreachable?.(error.message);
      return undefined;
    });
    if (verdict) this.cache.set(key, verdict, verdict.ok ? this.options.positiveTtl : this.options.negativeTtl);
    return verdict;
  }
}

async function probe(address: string, primary: HostPort, options: SessionOptions): Promise<Verdict | undefined> {
  const session = await SmtpSession.open(primary, options);
  try {
    // A non-ASCII address needs SMTPUTF8 (RFC 6531 §3.4); a primary without it cannot be asked.
    const utf8 = !isAscii(address);
    if (utf8 && !session.offers('SMTPUTF8')) return undefined;
    const commands = [utf8 ? 'MAIL FROM:<> SMTPUTF8' : 'MAIL FROM:<>', `RCPT TO:<${address}>`];
    const [mail, rcpt] = session.offers('PIPELINING')
      ? await session.pipeline(commands)
      : [await session.command(commands[0]), await session.command(commands[1])];
    if (mail.code !== 250) return undefined;
    if (rcpt.code >= 200 && rcpt.code < 300) return { ok: true };
    if (rcpt.code >= 500) return { ok: false, reply: rcpt.text };
    return undefined;
  } finally {
    session.quit();
  }
}
