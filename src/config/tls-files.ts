import { readFileSync } from 'node:fs';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import type { Config } from './schema.js';
import { ConfigError } from './load.js';

/**
 * Opens and parses every TLS file the config names: the key and certificate offered
 * with STARTTLS (and that they belong together), and the CA files that verify primaries.
 * A bad one is a config error naming the key and the file, before anything listens.
 */
export function checkTlsFiles(config: Config): void {
  const problems: string[] = [];
  const read = (key: string, path: string): Buffer | undefined => {
    try {
      return readFileSync(path);
    } catch (error) {
      problems.push(`${key}: cannot read ${path}: ${(error as Error).message}`);
      return undefined;
    }
  };
  if (config.tls) {
    const keyPem = read('tls.key', config.tls.key);
    const certPem = read('tls.cert', config.tls.cert);
    let key: ReturnType<typeof createPrivateKey> | undefined;
    let cert: X509Certificate | undefined;
    if (keyPem) key = parse(problems, 'tls.key', config.tls.key, 'a PEM private key', () => createPrivateKey(keyPem));
    if (certPem) cert = parse(problems, 'tls.cert', config.tls.cert, 'a PEM certificate', () => new X509Certificate(certPem));
    if (key && cert && !cert.checkPrivateKey(key)) problems.push(`tls.key: ${config.tls.key} is not the key of the certificate in ${config.tls.cert}`);
    if (cert && Date.parse(cert.validTo) < Date.now()) problems.push(`tls.cert: ${config.tls.cert} expired on ${cert.validTo}`);
  }
  const verified: Array<[string, string | undefined]> = [
    ['primary.tls.ca', config.primary.tls?.ca],
    ['dsn.relay.tls.ca', config.dsn.relay?.tls?.ca],
    ...config.sources.map((source): [string, string | undefined] => [`sources: ${source.name}: primary.tls.ca`, source.primary?.tls?.ca]),
  ];
  for (const [key, path] of verified) {
    const pem = path === undefined ? undefined : read(key, path);
    if (pem && path) parse(problems, key, path, 'a PEM certificate', () => new X509Certificate(pem));
  }
  if (problems.length > 0) throw new ConfigError(problems.join('\n'));
}

function parse<T>(problems: string[], key: string, path: string, what: string, make: () => T): T | undefined {
  try {
    return make();
  } catch (error) {
    problems.push(`${key}: ${path} is not ${what}: ${(error as Error).message}`);
    return undefined;
  }
}
