import { isIP } from 'node:net';
import libmime from 'libmime';
import { spf, type DNSResolver, type SPFResult } from 'mailauth';
import { PastDeadline, ThreadLost, type ThreadPool } from '../threads/pool.js';
import { sourceInput, type MessageSource } from '../spool/message-source.js';
import type { CheckTask } from './check-thread.js';
import { checkMessage as checkContent, resultHeaders, type MessageCheckResult } from './message-checks.js';
import { SmtpReply } from '../receive/replies.js';
import { unmapped } from '../net/ip.js';

/** What a result leads to: refused (5xx), deferred (4xx), or accepted with the result in Authentication-Results. */
export type AuthAction = 'reject' | 'defer' | 'tag';

export interface AuthPolicy {
  /** Per SPF result at MAIL FROM (RFC 7208 §8): fail, softfail, neutral, none, temperror, permerror. */
  spf: Partial<Record<string, AuthAction>>;
  /** Per DMARC policy of a message that fails DMARC: reject, quarantine, none. */
  dmarc: Partial<Record<string, AuthAction>>;
  /** DKIM-Signature fields verified per message (screen/dkim.ts). */
  maxSignatures: number;
}

export interface SpfCheck {
  /** pass, fail, softfail, neutral, none, temperror, permerror */
  result: string;
  /** The refusal or deferral the policy asks for. */
  reply?: SmtpReply;
  /** mailauth's result, for the message's Authentication-Results: SPF is evaluated once per MAIL FROM. */
  checked: SPFResult;
}

export interface ContentCheck {
  /** Authentication-Results (RFC 8601, our host name as authserv-id) and Received-SPF, CRLF-terminated. */
  headers: string;
  spf: string;
  dkim: string[];
  dmarc: string | undefined;
  reply?: SmtpReply;
  /** Why the checks have no result (past the deadline, the check thread lost): the message is tagged temperror. */
  unfinished?: string;
}

/** Header blocks without signatures up to this size are checked on the SMTP thread (DMARC's header parsing only). */
const INLINE_HEADER_BYTES = 16 * 1024;

/** `work`, or PastDeadline after `ms`. */
function withDeadline<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new PastDeadline(`not done within ${Math.round(ms)} ms`)), ms)));
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

/** RFC 7372 codes: X.7.23 SPF validation failed, X.7.24 SPF validation error, X.7.26 multiple authentication checks failed (DMARC). */
function spfReply(result: string, action: AuthAction | undefined, domain: string): SmtpReply | undefined {
  if (action === undefined || action === 'tag') return undefined;
  const permanent = action === 'reject';
  const code = result === 'temperror' || result === 'permerror' ? '7.24' : '7.23';
  const text = `SPF ${result}: ${domain || 'the sender domain'} does not designate this client as a permitted sender`;
  return new SmtpReply(permanent ? 550 : 451, `${permanent ? 5 : 4}.${code}`, result === 'temperror' ? `SPF check failed temporarily for ${domain}` : text);
}

/** Text for inside an RFC 5322 comment: one line, and "\\", "(" and ")" as quoted pairs. */
export function commentText(value: string): string {
  return value
    .replace(/[\x00-\x1f]+/g, ' ')
    .replace(/\s+/g, ' ')
    .trim()
    .replace(/[\\()]/g, (c) => `\\${c}`);
}

/**
 * mailauth quotes "\\" and ")" in the comment it writes, not "(": a sender with an
 * unbalanced "(" ("a(b"@example.org) opened a comment that swallowed the rest of the field.
 * The comment (which names the sender) goes in as commentText(); the rest is mailauth's.
 */
function commentsEscaped(checked: SPFResult): SPFResult {
  const comment = checked.status.comment;
  if (typeof comment !== 'string' || !comment) return checked;
  const asMailauth = `(${comment
    .replace(/[\x00-\x1f]+/g, ' ')
    .replace(/\s+/g, ' ')
    .trim()
    .replace(/[\\)]/g, (c) => `\\${c}`)})`;
  const ours = `(${commentText(comment)})`;
  const clientIp = (checked as unknown as Record<string, string>)['client-ip'];
  return {
    ...checked,
    header: libmime.foldLines(`Received-SPF: ${checked.status.result} ${ours} client-ip=${clientIp};`, 160),
    info: checked.info.split(asMailauth).join(ours),
  };
}

/**
 * Sender authentication with mailauth: SPF when MAIL FROM comes in (a forged sender is
 * refused before any data), DKIM, ARC and DMARC once the message is in (in a check
 * thread), with the Authentication-Results header for the primary to trust.
 */
export class SenderAuth {
  constructor(
    private readonly policy: AuthPolicy,
    private readonly hostname: string,
    /** SPF's, on this thread. */
    private readonly resolver: DNSResolver,
    private readonly threads: ThreadPool<CheckTask, MessageCheckResult>,
    private readonly dns: CheckTask['dns'],
  ) {}

  async checkSpf(sender: string, ip: string, helo: string): Promise<SpfCheck> {
    const client = unmapped(ip);
    // As mailauth's authenticate(): an address given as HELO (or none) is checked as [address].
    const name = helo || client;
    const checked = commentsEscaped(
      await spf({ sender: sender || undefined, ip: client, helo: isIP(name) ? `[${name}]` : name, mta: this.hostname, resolver: this.resolver }),
    );
    const result = checked.status.result;
    return { result, reply: spfReply(result, this.policy.spf[result], checked.domain), checked };
  }

  /**
   * DKIM, ARC and DMARC on the message (in a check thread: message-checks.ts), with the SPF
   * result of its MAIL FROM. Within `deadlineMs`, or not at all: past it, or if the thread
   * is lost, the message is tagged dkim=temperror and dmarc=temperror, never refused
   * (legitimate mail is not turned away for our own limits; the primary sees the tag).
   * `source` is the header block alone when `unsignedHeader` (the inspector found no
   * signature in it: there is no body to hash); its bytes are moved to the thread.
   */
  async checkMessage(source: MessageSource, sender: string, spfCheck: SpfCheck, deadlineMs: number, unsignedHeader = false): Promise<ContentCheck> {
    const spf = spfCheck.checked;
    const request = { sender, spf, hostname: this.hostname, maxSignatures: this.policy.maxSignatures };
    let checked;
    try {
      // A small header block without signatures costs less to read here than to send to a
      // thread and back (bench:postfix's accept B lost 16 % to that round trip).
      checked =
        unsignedHeader && 'bytes' in source && source.bytes.length <= INLINE_HEADER_BYTES
          ? await withDeadline(checkContent(sourceInput(source), request, this.resolver), deadlineMs)
          : await this.threads.run({ request, source, dns: this.dns }, deadlineMs, 'bytes' in source ? [source.bytes.buffer] : undefined); // moved, not copied
    } catch (error) {
      if (!(error instanceof PastDeadline) && !(error instanceof ThreadLost)) throw error;
      const unfinished =
        error instanceof PastDeadline ? `checks unfinished after ${Math.round(deadlineMs / 100) / 10} s` : `check thread lost: ${error.message}`;
      const results = [`dkim=temperror (${commentText(unfinished)})`, spf.info, `dmarc=temperror (${commentText(unfinished)})`];
      return {
        headers: resultHeaders(spf, this.hostname, results),
        spf: spf.status.result,
        dkim: ['temperror'],
        dmarc: 'temperror',
        reply: spfCheck.reply,
        unfinished,
      };
    }
    let reply = spfCheck.reply;
    const dmarcResult = checked.dmarc;
    if (!reply && dmarcResult?.result === 'fail') {
      const action = this.policy.dmarc[dmarcResult.policy];
      if (action === 'reject') reply = new SmtpReply(550, '5.7.26', `DMARC policy of ${dmarcResult.domain} rejects this unauthenticated message`);
      if (action === 'defer') reply = new SmtpReply(451, '4.7.26', `DMARC check of ${dmarcResult.domain} failed, try again later`);
    }
    return { headers: checked.headers, spf: spf.status.result, dkim: checked.dkim, dmarc: dmarcResult?.result, reply };
  }
}
