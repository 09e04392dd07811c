import { createHash } from 'node:crypto';
import { maskUrl } from '../../config/load.js';
import type { MxlistSourceConfig } from '../../config/schema.js';
import { SourceError, SourceListBuilder, type Pulled } from '../source-list.js';

/**
 * The panel's admin/mxlist.php: the domains with gesmx = 1, over HTTP Basic auth.
 * Asked with ?json=1 ({"integrity": md5 of the domains concatenated, "items": [...]});
 * a panel that answers with the plain form (one domain a line, each ending in "\n")
 * is read as such. Domains only: none of them can be recipient-checked.
 */
export async function pullMxlist(source: MxlistSourceConfig): Promise<Pulled> {
  const url = new URL(source.url);
  url.searchParams.set('json', '1');
  url.username = ''; // credentials go in the header only (login, password); never in a message or a log
  url.password = '';
  const shown = maskUrl(source.url);
  let response: Response;
  try {
    response = await fetch(url, {
      headers: { authorization: `Basic ${Buffer.from(`${source.login}:${source.password}`).toString('base64')}` },
      redirect: 'error',
      signal: AbortSignal.timeout(source.timeout * 1000),
    });
  } catch (error) {
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    throw new SourceError(`cannot fetch ${shown}: ${cause?.code ?? cause?.message ?? (error as Error).message}`);
  }
  if (response.status === 401) throw new SourceError(`${shown}: 401 Unauthorized: check login and password (the panel's "Secondary MX" account)`);
  if (!response.ok) throw new SourceError(`${shown}: HTTP ${response.status} ${response.statusText}`);
  return parseMxlist(await boundedText(response, source.maxBytes, shown));
}

/** The body, refused past `maxBytes`: an endless or huge answer must not take the daemon's memory. */
async function boundedText(response: Response, maxBytes: number, shown: string): Promise<string> {
  const chunks: Uint8Array[] = [];
  let bytes = 0;
  for await (const chunk of response.body ?? []) {
    bytes += chunk.length;
    if (bytes > maxBytes) {
      await response.body?.cancel().catch(() => undefined);
      throw new SourceError(`${shown}: answer over ${maxBytes} bytes (the source's maxBytes): refused`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

export function parseMxlist(body: string): Pulled {
  const builder = new SourceListBuilder();
  for (const domain of domainsOf(body)) builder.domain(domain);
  return builder.build();
}

function domainsOf(body: string): string[] {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    return plainDomains(body);
  }
  const { integrity, items } = (json ?? {}) as { integrity?: unknown; items?: unknown };
  const list = Array.isArray(items) ? items : items && typeof items === 'object' ? Object.values(items) : undefined;
  if (typeof integrity !== 'string' || !list || !list.every((item) => typeof item === 'string')) {
    throw new SourceError('JSON answer without "integrity" and "items"');
  }
  const digest = createHash('md5').update(list.join('')).digest('hex');
  if (digest !== integrity.toLowerCase()) throw new SourceError(`integrity check failed: md5 of the items is ${digest}, the panel says ${integrity}`);
  return list as string[];
}

function plainDomains(body: string): string[] {
  if (body.length > 0 && !body.endsWith('\n')) throw new SourceError('plain answer does not end with a newline: truncated?');
  return body
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => line.trim());
}
