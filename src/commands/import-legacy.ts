import { readFileSync } from 'node:fs';
import { stringify } from 'yaml';

import { EX_DATAERR } from '../exit-codes.js';

export class LegacyConfigError extends Error {
  readonly exitCode = EX_DATAERR;
}

const KNOWN = new Set(['HOST', 'LOGIN', 'PASSWORD', 'MASTERIP', 'PROTOCOL', 'URL']);

/**
 * Reads an old alternc-secondarymx / alternc-slavedns shell-style config
 * (HOST=, LOGIN=, PASSWORD=, MASTERIP=, PROTOCOL=, URL=) and returns the equivalent
 * `sources:` entry: the panel's mxlist.php, with MASTERIP as the source's primary.
 */
export function importLegacy(path: string): { yaml: string; warnings: string[] } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new LegacyConfigError(`${path}: cannot read: ${(error as Error).message}`);
  }
  const values = new Map<string, string>();
  const warnings: string[] = [];
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    const match = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!match) throw new LegacyConfigError(`${path}:${index + 1}: expected KEY=value: ${JSON.stringify(line)}`);
    const key = match[1].toUpperCase();
    const value = match[2].trim().replace(/^"(.*)"$|^'(.*)'$/, (_all, double?: string, single?: string) => double ?? single ?? '');
    if (!KNOWN.has(key)) warnings.push(`${path}:${index + 1}: ${key} is not used by secondarymx, ignored`);
    values.set(key, value);
  });
  const host = values.get('HOST');
  const protocol = (values.get('PROTOCOL') || 'https').toLowerCase();
  if (protocol !== 'http' && protocol !== 'https') throw new LegacyConfigError(`${path}: PROTOCOL must be http or https, not ${JSON.stringify(protocol)}`);
  const url = values.get('URL') || (host ? `${protocol}://${host}/admin/mxlist.php` : undefined);
  if (!url) throw new LegacyConfigError(`${path}: neither URL nor HOST is set: cannot tell where the panel is`);
  const login = values.get('LOGIN');
  if (!login) throw new LegacyConfigError(`${path}: LOGIN is not set (the panel's "Secondary MX" account)`);
  const name = (host ?? new URL(url).hostname).replace(/[^A-Za-z0-9_.-]/g, '-');
  const master = values.get('MASTERIP');
  const source = {
    name,
    type: 'mxlist',
    url,
    login,
    password: values.get('PASSWORD') ?? '',
    ...(master ? { primary: { host: master, port: 25 } } : {}),
  };
  return { yaml: stringify({ sources: [source] }), warnings };
}
