import { readFile } from 'node:fs/promises';
import { EmptySourceError, SourceError, SourceListBuilder, type Pulled } from '../source-list.js';

/**
 * Reads a domain list: one entry a line, `#` starts a comment.
 *   example.org        a domain; with no address lines it accepts any local part
 *   user@example.org   an address (declares the domain, which is then recipient-checked)
 *   @example.org       the domain's catch-all
 * A line that is not valid is left out and reported (file:line), the rest applies.
 */
export async function pullFile(path: string): Promise<Pulled> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new SourceError(`${path}: cannot read: ${(error as Error).message}`);
  }
  return parseDomainList(text, path);
}

export function parseDomainList(text: string, path: string): Pulled {
  const builder = new SourceListBuilder();
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.replace(/(^|\s)#.*$/, '').trim();
    if (!line) return;
    const where = `${path}:${index + 1}: ${JSON.stringify(raw.trim())}`;
    const at = line.lastIndexOf('@');
    if (/\s/.test(line)) builder.skip(where, 'one entry per line expected');
    else if (at === -1) builder.domain(line, where);
    else if (at === 0) builder.catchAll(line.slice(1), where);
    else if (line.indexOf('@') !== at) builder.skip(where, 'not a valid address');
    else builder.address(line.slice(0, at), line.slice(at + 1), where);
  });
  try {
    return builder.build();
  } catch (error) {
    const Kind = error instanceof EmptySourceError ? EmptySourceError : SourceError;
    throw new Kind(`${path}: ${(error as Error).message}`);
  }
}
