import { existsSync, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { isMap, isSeq, parseDocument, stringify, type Document } from 'yaml';
import type { ZodError } from 'zod';
import { EX_CONFIG } from '../exit-codes.js';
import { configSchema, type Config, type HostPort } from './schema.js';
import { isLoopbackHost } from '../net/ip.js';

export class ConfigError extends Error {
  readonly exitCode = EX_CONFIG;
}

export interface LoadedConfig {
  /** Absolute path of the file the config came from. */
  file: string;
  config: Config;
}

/** The lookup order: --config, $SECONDARYMX_CONFIG, ./config/secondarymx.yaml, /etc. */
export function findConfigFile(explicit: string | undefined, env = process.env): string {
  if (explicit) return resolve(explicit);
  if (env.SECONDARYMX_CONFIG) return resolve(env.SECONDARYMX_CONFIG);
  const candidates = [resolve('config/secondarymx.yaml'), '/etc/secondarymx/secondarymx.yaml'];
  const found = candidates.find((candidate) => existsSync(candidate));
  if (!found) {
    throw new ConfigError(
      `no config file: tried ${candidates.join(' and ')}; pass --config FILE or set SECONDARYMX_CONFIG ` +
        '(config/secondarymx.example.yaml is a documented starting point)',
    );
  }
  return found;
}

export function loadConfig(explicit?: string, env = process.env): LoadedConfig {
  const file = findConfigFile(explicit, env);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(`${file}: cannot read: ${(error as Error).message}`);
  }
  return { file, config: parseConfig(text, file) };
}

export function parseConfig(text: string, file: string): Config {
  const document = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (document.errors.length > 0) {
    const first = document.errors[0];
    const where = first.linePos ? `:${first.linePos[0].line}:${first.linePos[0].col}` : '';
    throw new ConfigError(`${file}${where}: invalid YAML: ${first.message.split('\n')[0]}`);
  }
  const raw: unknown = document.toJS() ?? {};
  const result = configSchema.safeParse(raw);
  if (!result.success) throw new ConfigError(describeIssues(result.error, file, document, text));
  return resolvePaths(result.data, dirname(file));
}

function describeIssues(error: ZodError, file: string, document: Document, text: string): string {
  const lines = error.issues.map((issue) => {
    const keys = issue.code === 'unrecognized_keys' ? issue.keys.map((key) => [...issue.path, key]) : [issue.path];
    return keys
      .map((path) => {
        const key = formatKeyPath(path) || '(top level)';
        const line = lineOf(document, text, path);
        const message = issue.code === 'unrecognized_keys' ? 'unknown key' : issue.message;
        return `${file}${line ? `:${line}` : ''}: ${key}: ${message}`;
      })
      .join('\n');
  });
  return lines.join('\n');
}

function formatKeyPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((text, part) => {
    if (typeof part === 'number') return `${text}[${part}]`;
    return text ? `${text}.${String(part)}` : String(part);
  }, '');
}

/** Line number of a key in the YAML source, for error messages; undefined when absent. */
function lineOf(document: Document, text: string, path: readonly PropertyKey[]): number | undefined {
  let node: unknown = document.contents;
  let range: [number, number, number] | undefined;
  for (const part of path) {
    if (isMap(node)) {
      const pair = node.items.find((item) => (item.key as { value?: unknown })?.value === part);
      if (!pair) break;
      range = (pair.key as { range?: [number, number, number] }).range;
      node = pair.value;
    } else if (isSeq(node) && typeof part === 'number') {
      node = node.items[part];
      range = (node as { range?: [number, number, number] } | undefined)?.range;
    } else {
      break;
    }
  }
  if (!range) return undefined;
  return text.slice(0, range[0]).split('\n').length;
}

function resolvePaths(config: Config, base: string): Config {
  const primary = <T extends HostPort | undefined>(hostPort: T): T =>
    hostPort?.tls?.ca ? { ...hostPort, tls: { ...hostPort.tls, ca: resolve(base, hostPort.tls.ca) } } : hostPort;
  return {
    ...config,
    spool: resolve(base, config.spool),
    primary: primary(config.primary),
    sources: config.sources.map((source) => {
      const withPrimary = { ...source, ...(source.primary ? { primary: primary(source.primary) } : {}) };
      if (withPrimary.type === 'file') return { ...withPrimary, path: resolve(base, withPrimary.path) };
      if (withPrimary.type === 'mysql' && typeof withPrimary.ssl === 'object') return { ...withPrimary, ssl: { ca: resolve(base, withPrimary.ssl.ca) } };
      return withPrimary;
    }),
    dsn: { ...config.dsn, ...(config.dsn.relay ? { relay: primary(config.dsn.relay) } : {}) },
    tls: config.tls && { ...config.tls, key: resolve(base, config.tls.key), cert: resolve(base, config.tls.cert) },
  };
}

/** Keys whose values are secrets: password, pass, secret, and camelCase ones ending so (not passTtl). */
const SECRET_KEY = /^(?:pass(?:word)?|secret)$|(?:Password|Secret)$/i;

/** The effective config as YAML with every secret replaced, for `check`. */
export function describeConfig(config: Config): string {
  return stringify(maskSecrets(config));
}

function maskSecrets(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(maskSecrets);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([key, inner]) => [key, SECRET_KEY.test(key) ? '********' : maskSecrets(inner)]));
  }
  if (typeof value === 'string') return maskUrl(value);
  return value;
}

/** A URL with the password of its user information masked (scheme://user:********@host…). */
export function maskUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*:)[^@/]*@/i, '$1********@');
}

/**
 * Sources whose credentials and lists travel in clear: an http:// mxlist, a MySQL
 * without TLS beyond loopback. A man in the middle reads the password and can add
 * domains (an open relay for them): said at every start and by `check`.
 */
export function insecureSources(config: Config): string[] {
  const warnings: string[] = [];
  for (const source of config.sources) {
    if (source.type === 'mxlist' && source.url.startsWith('http://')) {
      warnings.push(
        `source ${source.name}: ${maskUrl(source.url)} is plain http: its password and domain list travel in clear, and a man in the middle can add domains; use https`,
      );
    }
    if (source.type === 'mysql' && source.ssl === false) {
      const host = source.host ?? new URL(source.url!.replace(/^mysql:/, 'http:')).hostname;
      if (!isLoopbackHost(host)) {
        warnings.push(`source ${source.name}: MySQL at ${host} without TLS: its password and rows travel in clear; set ssl: true (or ssl: { ca: FILE })`);
      }
    }
  }
  return warnings;
}
