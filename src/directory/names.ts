import { domainToASCII } from 'node:url';

/** A label as AlternC's checkfqdn accepts it: letters, digits and hyphens, and it may start with "_" (`_mail.example.net`). */
const LABEL = /^[a-z0-9_](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * A mail domain as the directory stores it: lowercase ASCII, IDNs as punycode.
 * Undefined when it is not a plain host name of at least two labels (address
 * literals, trailing dots, empty labels and over-long names are refused).
 */
export function normalizeDomain(domain: string): string | undefined {
  if (domain.length === 0 || domain.length > 255 || domain.endsWith('.')) return undefined;
  // domainToASCII applies IDNA (UTS #46) mapping and lowercases; it returns '' when invalid.
  const ascii = domainToASCII(domain);
  if (!ascii || ascii.length > 253) return undefined;
  const labels = ascii.split('.');
  if (labels.length < 2 || !labels.every((label) => LABEL.test(label))) return undefined;
  if (/^[0-9]+$/.test(labels[labels.length - 1])) return undefined; // an IPv4 address is no domain
  return ascii;
}

/** RFC 5321 atext plus dots and UTF-8 (RFC 6531); quoted local parts are not accepted. */
const LOCAL_PART = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\uFFFF-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\uFFFF-]+)*$/;

/** Case-folded local part (AlternC's MySQL collation compares them case-insensitively). */
export function normalizeLocalPart(local: string): string | undefined {
  if (local.length === 0 || Buffer.byteLength(local) > 64 || !LOCAL_PART.test(local)) return undefined;
  return local.toLowerCase();
}

/** Splits at the last "@"; an address literal or source route never gets past the callers. */
export function splitAddress(address: string): { local: string; domain: string } | undefined {
  const at = address.lastIndexOf('@');
  if (at <= 0 || at === address.length - 1) return undefined;
  return { local: address.slice(0, at), domain: address.slice(at + 1) };
}

/** An address with its domain in punycode where it converts (smtp-server hands IDNs over in Unicode). */
export function asciiAddress(address: string): string {
  const parts = splitAddress(address);
  if (!parts) return address;
  return `${parts.local}@${domainToASCII(parts.domain) || parts.domain}`;
}
