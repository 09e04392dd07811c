import { normalizeDomain, normalizeLocalPart, splitAddress } from '../directory/names.js';
import type { DirectorySnapshot } from '../directory/snapshot.js';
import { SmtpReply } from './replies.js';

export interface AcceptedRecipient {
  /** The local part as sent, the domain in punycode: what the primary will be given. */
  address: string;
  /** The directory source that owns the domain. */
  source: string;
  /** false: the source lists no addresses for the domain (mxlist, a domain-only entry): any local part was accepted. */
  recipientCheck: boolean;
}

/**
 * The RCPT TO decision. Mail is accepted only for a domain of the directory, and
 * there only for a known address (or a catch-all, or a domain without an address
 * list). Every refusal happens here, at RCPT time, so this MX never has to bounce
 * mail it should not have taken (no backscatter), and nothing that could route mail
 * elsewhere (address literals, %-hack, bang paths, subdomains) gets through.
 */
export function checkRecipient(address: string, directory: DirectorySnapshot, delimiter = '+'): AcceptedRecipient {
  const { local, asciiDomain, localKey } = parseRecipient(address);
  let lookup = directory.lookup(localKey, asciiDomain);
  const base = baseOf(localKey, delimiter);
  if (lookup.verdict === 'unknown-address' && base) lookup = directory.lookup(base, asciiDomain);
  switch (lookup.verdict) {
    case 'unknown-domain':
      // A source that never loaded may own this domain: a 5xx could bounce real mail.
      if (!directory.complete) throw new SmtpReply(451, '4.3.0', `<${address}>: directory not fully loaded yet, try again later`);
      throw new SmtpReply(550, '5.7.1', `<${address}>: relay access denied`);
    case 'unknown-address':
      throw new SmtpReply(550, '5.1.1', `<${address}>: recipient address rejected: user unknown`);
    case 'accept':
      return { address: `${local}@${asciiDomain}`, source: lookup.source, recipientCheck: lookup.recipientCheck };
  }
}

/** The form a recipient accepted at RCPT is spooled in. */
export function normalizeRecipient(address: string): string {
  const { local, asciiDomain } = parseRecipient(address);
  return `${local}@${asciiDomain}`;
}

/**
 * The address without its extension, as Postfix's recipient_delimiter has it: the
 * local part up to the first delimiter character (alice+news → alice,
 * list-confirm+token → list-confirm); undefined when there is none.
 */
function baseOf(local: string, delimiter: string): string | undefined {
  if (!delimiter) return undefined;
  const at = [...delimiter].map((character) => local.indexOf(character)).filter((index) => index > 0);
  return at.length ? local.slice(0, Math.min(...at)) : undefined;
}

/** Syntax and anti-routing checks that need no directory. */
function parseRecipient(address: string): { local: string; asciiDomain: string; localKey: string } {
  const parts = splitAddress(address);
  if (!parts) throw new SmtpReply(550, '5.1.1', `<${address}>: no local delivery on this backup MX`);
  // As the primary's Postfix does: one trailing dot of the domain is dropped, a needlessly quoted local part unquoted.
  const domain = parts.domain.endsWith('.') && !parts.domain.endsWith('..') ? parts.domain.slice(0, -1) : parts.domain;
  const local = unquote(parts.local);
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

/** "alice" → alice when what is inside is a plain dot-atom; anything else stays as it is (and is refused as syntax). */
function unquote(local: string): string {
  if (local.length < 2 || !local.startsWith('"') || !local.endsWith('"')) return local;
  const inner = local.slice(1, -1).replace(/\\(.)/g, '$1');
  return normalizeLocalPart(inner) ? inner : local;
}
