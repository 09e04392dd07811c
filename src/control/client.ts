import { request } from 'node:http';
import { controlSocketPath } from './server.js';

/** Asks the running daemon; resolves undefined when no daemon listens on the spool's control socket. */
export function callDaemon<T>(spoolRoot: string, method: 'GET' | 'POST', path: string): Promise<T | undefined> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: controlSocketPath(spoolRoot), method, path }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => {
        const parsed = JSON.parse(body) as T & { error?: string };
        if (response.statusCode !== 200) reject(new Error(`daemon: ${parsed.error ?? `HTTP ${response.statusCode}`}`));
        else resolve(parsed);
      });
    });
    req.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT' || error.code === 'ECONNREFUSED') resolve(undefined);
      else reject(error);
    });
    req.end();
  });
}
