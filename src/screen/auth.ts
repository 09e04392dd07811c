import type { Readable } from 'node:stream';
import { authenticate, spf, type DNSResolver } from 'mailauth';
import { SmtpReply } from '../receive/replies.js';
import { unmapped } from '../net/ip.js';

/** What a result leads to: refused (5xx), deferred (4xx), or accepted with the result in Authentication-Results. */
export type AuthAction = 'reject' | 'defer' | 'tag';

export interface AuthPolicy {
  /** Per SPF result at MAIL FROM (RFC 7208 §8): fail, softfail, neutral, none, temperror, permerror. */
  spf: Partial<Record<string, AuthAction>>;
  /** Per DMARC policy of a message that fails DMARC: reject, quarantine, none. */
  dmarc: Partial<Record<string, AuthAction>>;
}

export interface SpfCheck {
  /** pass, fail, softfail, neutral, none, temperror, permerror */
  result: string;
  /** The refusal or deferral the policy asks for. */
  reply?: SmtpReply;
}

export interface ContentCheck {
  /** Authentication-Results (RFC 8601, our host name as authserv-id) and Received-SPF, CRLF-terminated. */
  headers: string;
  spf: string;
  dkim: string[];
  dmarc: string | undefined;
  reply?: SmtpReply;
}

/** RFC 7372 codes: X.7.23 SPF validation failed, X.7.24 SPF validation error, X.7.26 multiple authentication checks failed (DMARC). */
function spfReply(result: string, action: AuthAction | undefined, domain: string): SmtpReply | undefined {
  if (action === undefined || action === 'tag') return undefined;
  const permanent = action === 'reject';
  const code = result === 'temperror' || result === 'permerror' ? '7.24' : '7.23';
  const text = `SPF ${result}: ${domain || 'the sender domain'} does not designate this client as a permitted sender`;
  return new SmtpReply(permanent ? 550 : 451, `${permanent ? 5 : 4}.${code}`, result === 'temperror' ? `SPF check failed temporarily for ${domain}` : text);
}

/**
 * Sender authentication with mailauth: SPF when MAIL FROM comes in (a forged sender is
 * refused before any data), SPF, DKIM and DMARC once the message is in, with the
 * Authentication-Results header for the primary to trust.
 */
export class SenderAuth {
  constructor(
    private readonly policy: AuthPolicy,
    private readonly hostname: string,
    private readonly resolver: DNSResolver,
  ) {}

  async checkSpf(sender: string, ip: string, helo: string): Promise<SpfCheck> {
    const checked = await spf({ sender: sender || undefined, ip: unmapped(ip), helo, mta: this.hostname, resolver: this.resolver });
    const result = checked.status.result;
    return { result, reply: spfReply(result, this.policy.spf[result], checked.domain) };
  }

  async checkMessage(message: Readable, sender: string, ip: string, helo: string): Promise<ContentCheck> {
    const checked = await authenticate(message, {
      sender,
      ip: unmapped(ip),
      helo,
      mta: this.hostname,
      resolver: this.resolver,
      disableBimi: true, // a logo for a mail client: nothing the backup MX decides on
    });
    const spfResult = checked.spf ? checked.spf.status.result : 'none';
    const dmarc = checked.dmarc ? checked.dmarc : undefined;
    let reply = spfReply(spfResult, this.policy.spf[spfResult], checked.spf ? checked.spf.domain : '');
    if (!reply && dmarc && dmarc.status.result === 'fail') {
      const action = this.policy.dmarc[dmarc.policy];
      if (action === 'reject') reply = new SmtpReply(550, '5.7.26', `DMARC policy of ${dmarc.domain} rejects this unauthenticated message`);
      if (action === 'defer') reply = new SmtpReply(451, '4.7.26', `DMARC check of ${dmarc.domain} failed, try again later`);
    }
    return {
      headers: checked.headers.replace(/\r?\n/g, '\r\n'),
      spf: spfResult,
      dkim: checked.dkim.results.map((result) => result.status.result),
      dmarc: dmarc ? dmarc.status.result : undefined,
      reply,
    };
  }
}
