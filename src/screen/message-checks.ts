import type { Readable } from 'node:stream';
import libmime from 'libmime';
import { arc, dmarc, type ARCData, type DNSResolver, type SPFResult } from 'mailauth';
import { verifyDkim } from './dkim.js';

/** What a check thread is asked: the SPF result of MAIL FROM comes along (SPF is evaluated once, at MAIL FROM). */
export interface MessageCheckRequest {
  sender: string;
  spf: SPFResult;
  hostname: string;
  maxSignatures: number;
}

/** Its answer: plain data (it crosses from the thread); the SMTP reply is decided by the policy on the main thread. */
export interface MessageCheckResult {
  /** Received-SPF and Authentication-Results (RFC 8601, our host name as authserv-id), CRLF-terminated. */
  headers: string;
  dkim: string[];
  /** The DMARC result, and for a failing message its policy and domain. */
  dmarc?: { result: string; policy: string; domain: string };
}

/**
 * DKIM, ARC and DMARC of one message with the SPF result of its MAIL FROM: what mailauth's
 * authenticate() does, without evaluating SPF a second time. `message` may be the header
 * block alone when the message carries no signature: there is no body to hash. This is
 * the CPU-heavy part of the content checks (body hashes, RSA, header parsing): it runs in
 * a check thread (check-thread.ts).
 */
export async function checkMessage(message: Readable | Buffer, request: MessageCheckRequest, resolver: DNSResolver): Promise<MessageCheckResult> {
  const { spf, sender, hostname, maxSignatures } = request;
  const dkim = await verifyDkim(message, resolver, sender, { maxSignatures });
  const arcResult = await arc(dkim.arc as unknown as ARCData, { resolver });
  const spfResult = spf.status.result;
  const dmarcResult = dkim.headerFrom
    ? (await dmarc({
        headerFrom: dkim.headerFrom,
        spfDomains: spfResult === 'pass' && spf.domain ? [spf.domain] : [],
        dkimDomains: dkim.results
          .filter((result) => result.status.result === 'pass')
          .map((result) => ({ id: result.id, domain: result.signingDomain, aligned: result.status.aligned, underSized: result.status.underSized })),
        arcResult,
        resolver,
      })) || undefined
    : undefined;
  const unverified = dkim.skipped > 0 ? `dkim=neutral (too many signatures, ${dkim.skipped} not verified)` : undefined;
  const results = [...dkim.results.map((result) => result.info), unverified, spf.info, arcResult.info, dmarcResult?.info];
  return {
    headers: resultHeaders(spf, hostname, results),
    dkim: dkim.results.map((result) => result.status.result),
    ...(dmarcResult ? { dmarc: { result: dmarcResult.status.result, policy: dmarcResult.policy, domain: dmarcResult.domain } } : {}),
  };
}

/** Received-SPF and an Authentication-Results of these result items, CRLF-terminated. */
export function resultHeaders(spf: SPFResult, hostname: string, results: Array<string | undefined | false>): string {
  const items = results.filter((info): info is string => !!info);
  const headers = [spf.header, `Authentication-Results: ${hostname};\r\n ${items.map((info) => libmime.foldLines(info, 160)).join(';\r\n ')}`];
  return `${headers.join('\r\n')}\r\n`.replace(/\r?\n/g, '\r\n');
}
