import { readFile } from 'node:fs/promises';
import type { SourceList } from '../snapshot.js';
import { SourceError, SourceListBuilder } from '../source-list.js';

/**
 * Reads a domain list: one entry a line, `#` starts a comment.
 *   example.org        a domain; with no address lines it accepts any local part
 *   user@example.org   an address (declares the domain, which is then recipient-checked)
 *   @example.org       the domain's catch-all
 * Any bad line rejects the whole file: a half-read list is never applied.
 */
export async function pullFile(path: string): Promise<SourceList> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new SourceError(`${path}: cannot read: ${(error as Error).message}`);
  }
  return parseDomainList(text, path);
}

export function parseDomainList(text: string, path: string): SourceList {
  const builder = new SourceListBuilder();
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.replace(/(^|\s)#.*$/, '').trim();
    if (!line) return;
    try {
      if (/\s/.test(line)) throw new SourceError('one entry per line expected');
      const at = line.lastIndexOf('@');
      if (at === -1) builder.domain(line);
      else if (at === 0) builder.catchAll(line.slice(1));
      else if (line.indexOf('@') !== at) throw new SourceError('not a valid address');
      else builder.address(line.slice(0, at), line.slice(at + 1));
    } catch (error) {
      if (!(error instanceof SourceError)) throw error;
      throw new SourceError(`${path}:${index + 1}: ${error.message.replace(/: ".*"$/, '')}: ${JSON.stringify(raw.trim())}`);
    }
  });
  try {
    return builder.build();
  } catch (error) {
    throw new SourceError(`${path}: ${(error as Error).message}`);
  }
}
