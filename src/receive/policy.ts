import { normalizeDomain, normalizeLocalPart, splitAddress } from '../directory/names.js';
import type { DirectorySnapshot } from '../directory/snapshot.js';
import { SmtpReply } from './replies.js';

export interface AcceptedRecipient {
  /** The local part as sent, the domain in punycode: what the primary will be given. */
  address: string;
  /** The directory source that owns the domain. */
  source: string;
}

/**
 * The RCPT TO decision. Mail is accepted only for a domain of the directory, and
 * there only for a known address (or a catch-all, or a domain without an address
 * list). Every refusal happens here, at RCPT time, so this MX never has to bounce
 * mail it should not have taken (no backscatter), and nothing that could route mail
 * elsewhere (address literals, %-hack, bang paths, subdomains) gets through.
 */
export function checkRecipient(address: string, directory: DirectorySnapshot): AcceptedRecipient {
  const { local, asciiDomain, localKey } = parseRecipient(address);
  const lookup = directory.lookup(localKey, asciiDomain);
  switch (lookup.verdict) {
    case 'unknown-domain':
      // A source that never loaded may own this domain: a 5xx could bounce real mail.
      if (!directory.complete) throw new SmtpReply(451, '4.3.0', `<${address}>: directory not fully loaded yet, try again later`);
      throw new SmtpReply(550, '5.7.1', `<${address}>: relay access denied`);
    case 'unknown-address':
      throw new SmtpReply(550, '5.1.1', `<${address}>: recipient address rejected: user unknown`);
    case 'accept':
      return { address: `${local}@${asciiDomain}`, source: lookup.source };
  }
}

/** The form a recipient accepted at RCPT is spooled in. */
export function normalizeRecipient(address: string): string {
  const { local, asciiDomain } = parseRecipient(address);
  return `${local}@${asciiDomain}`;
}

/** Syntax and anti-routing checks that need no directory. */
function parseRecipient(address: string): { local: string; asciiDomain: string; localKey: string } {
  const parts = splitAddress(address);
  if (!parts) throw new SmtpReply(550, '5.1.1', `<${address}>: no local delivery on this backup MX`);
  const { local, domain } = parts;
  if (Buffer.byteLength(local) > 64 || Buffer.byteLength(domain) > 255) {
    throw new SmtpReply(501, '5.1.3', 'Bad recipient address syntax: local part over 64 or domain over 255 octets');
  }
  if (domain.startsWith('[')) throw new SmtpReply(550, '5.7.1', `<${address}>: address literals are not accepted: relay access denied`);
  if (/[%!@]/.test(local)) throw new SmtpReply(550, '5.7.1', `<${address}>: source routing is not accepted: relay access denied`);
  const asciiDomain = normalizeDomain(domain);
  if (!asciiDomain) throw new SmtpReply(550, '5.7.1', `<${address}>: relay access denied`);
  const localKey = normalizeLocalPart(local);
  if (!localKey) throw new SmtpReply(501, '5.1.3', 'Bad recipient address syntax');
  return { local, asciiDomain, localKey };
}
