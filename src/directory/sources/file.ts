import { readFile } from 'node:fs/promises';
import { normalizeDomain, normalizeLocalPart, splitAddress } from '../names.js';
import type { DomainEntry, SourceList } from '../snapshot.js';

export class SourceFormatError extends Error {}

/**
 * Reads a domain list: one entry a line, `#` starts a comment.
 *   example.org        a domain; with no address lines it accepts any local part
 *   user@example.org   an address (declares the domain, which is then recipient-checked)
 *   @example.org       the domain's catch-all
 * Any bad line rejects the whole file: a half-read list is never applied.
 */
export async function readFileSource(path: string): Promise<SourceList> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new SourceFormatError(`${path}: cannot read: ${(error as Error).message}`);
  }
  return parseDomainList(text, path);
}

export function parseDomainList(text: string, path: string): SourceList {
  const list: SourceList = new Map();
  const entryFor = (domain: string): DomainEntry => {
    let entry = list.get(domain);
    if (!entry) {
      entry = { recipientCheck: false, catchAll: false, localParts: new Set() };
      list.set(domain, entry);
    }
    return entry;
  };
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, index) => {
    const line = raw.replace(/(^|\s)#.*$/, '').trim();
    if (!line) return;
    const fail = (why: string): never => {
      throw new SourceFormatError(`${path}:${index + 1}: ${why}: ${JSON.stringify(raw.trim())}`);
    };
    if (/\s/.test(line)) fail('one entry per line expected');
    if (!line.includes('@')) {
      const domain = normalizeDomain(line) ?? fail('not a valid domain');
      entryFor(domain);
      return;
    }
    if (line.startsWith('@')) {
      const domain = normalizeDomain(line.slice(1)) ?? fail('not a valid catch-all domain');
      const entry = entryFor(domain);
      entry.recipientCheck = true;
      entry.catchAll = true;
      return;
    }
    const parts = splitAddress(line) ?? fail('not a valid address');
    if (parts.local.includes('@')) fail('not a valid address');
    const domain = normalizeDomain(parts.domain) ?? fail('not a valid domain in address');
    const local = normalizeLocalPart(parts.local) ?? fail('not a valid local part');
    const entry = entryFor(domain);
    entry.recipientCheck = true;
    entry.localParts.add(local);
  });
  return list;
}
