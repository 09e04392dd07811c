import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

/** A self-signed certificate for `name` (and these openssl -addext extensions), as key.pem and cert.pem in `dir`. */
export function makeCertificate(dir: string, name: string, extensions: string[] = []): { key: string; cert: string } {
  const key = join(dir, 'key.pem');
  const cert = join(dir, 'cert.pem');
  const extra = extensions.flatMap((extension) => ['-addext', extension]);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', `/CN=${name}`, ...extra, '-keyout', key, '-out', cert], {
    stdio: 'ignore',
  });
  return { key, cert };
}
