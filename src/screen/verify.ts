import type { Logger } from 'pino';
import type { HostPort } from '../config/schema.js';
import { SmtpSession, type SessionOptions } from '../relay/session.js';
import type { ExpiringStore } from './expiring-store.js';

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

  /** The cached verdict, else a probe when the primary is thought up; undefined: nobody knows. */
  async verify(address: string, primary: HostPort, primaryDown: boolean, session: SessionOptions): Promise<Verdict | undefined> {
    const key = address.toLowerCase();
    const cached = this.cache.get(key);
    if (cached || primaryDown) return cached;
    const verdict = await probe(address, primary, session).catch((error: unknown) => {
      this.log.info({ event: 'verify_unavailable', to: address, reason: (error as Error).message }, 'recipient verification: primary did not answer');
      return undefined;
    });
    if (verdict) this.cache.set(key, verdict, verdict.ok ? this.options.positiveTtl : this.options.negativeTtl);
    return verdict;
  }
}

async function probe(address: string, primary: HostPort, options: SessionOptions): Promise<Verdict | undefined> {
  const session = await SmtpSession.open(primary, options);
  try {
    const [mail, rcpt] = session.offers('PIPELINING')
      ? await session.pipeline(['MAIL FROM:<>', `RCPT TO:<${address}>`])
      : [await session.command('MAIL FROM:<>'), await session.command(`RCPT TO:<${address}>`)];
    if (mail.code !== 250) return undefined;
    if (rcpt.code >= 200 && rcpt.code < 300) return { ok: true };
    if (rcpt.code >= 500) return { ok: false, reply: rcpt.text };
    return undefined;
  } finally {
    session.quit();
  }
}
