import { authservId, type HeaderField } from './header-fields.js';

/** A byte range of the stored file, [start, end). */
export type ByteRange = [number, number];

/** Header fields only our screens write, when they run: auth (Received-SPF), rspamd (X-Spam, X-Spam-*, X-Rspamd-*). */
export interface OwnedHeaders {
  spf: boolean;
  spam: boolean;
  /** The names of the fields we add to this message (lower case). */
  added: ReadonlySet<string>;
}

/**
 * The fields a client sent that claim to be ours, as byte ranges the primary is never sent:
 * every Authentication-Results and ARC-Authentication-Results with our authserv-id
 * (RFC 8601 §5: "MUST remove or rename"; removed, so that no filter downstream can read the
 * forged verdict under another name), and the fields our screens own when they run.
 */
export function untrustedHeaders(fields: readonly HeaderField[], hostname: string, owned: OwnedHeaders): ByteRange[] {
  const ours = hostname.toLowerCase().replace(/\.$/, '');
  return fields
    .filter(({ name, value }) => {
      if (name === 'authentication-results') return authservId(value) === ours;
      if (name === 'arc-authentication-results') return authservId(value, true) === ours;
      if (owned.spf && name === 'received-spf') return true;
      if (owned.spam && (name === 'x-spam' || name.startsWith('x-spam-') || name.startsWith('x-rspamd-'))) return true;
      return owned.added.has(name);
    })
    .map(({ start, end }): ByteRange => [start, end]);
}

/** Names of the header fields in a CRLF-terminated block of them (the ones we add). */
export function fieldNames(lines: string): Set<string> {
  return new Set([...lines.matchAll(/^([^\s:]+):/gm)].map((match) => match[1].toLowerCase()).filter((name) => name !== 'authentication-results'));
}
