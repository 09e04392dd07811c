import { chmod, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import type { Logger } from 'pino';

export type Route = (query: URLSearchParams) => Promise<unknown>;

export function controlSocketPath(spoolRoot: string): string {
  return join(spoolRoot, 'control.sock');
}

/**
 * The local control endpoint: HTTP with JSON bodies on a Unix socket in the spool
 * directory (mode 0600, so only the service user and root can use it). Never on
 * a network address.
 */
export class ControlServer {
  private readonly server: Server;

  constructor(
    private readonly path: string,
    private readonly routes: Record<string, Route>,
    private readonly log: Logger,
  ) {
    this.server = createServer((request, response) => {
      this.handle(request, response).catch((error: unknown) => this.log.error({ err: error }, 'control request failed'));
    });
  }

  async listen(): Promise<void> {
    await rm(this.path, { force: true }); // left by a daemon that died; we hold the spool lock
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.path, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    await chmod(this.path, 0o600);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(request.url ?? '/', 'http://control');
    const route = this.routes[`${request.method} ${url.pathname}`];
    const reply = (status: number, body: unknown) => {
      response.writeHead(status, { 'content-type': 'application/json' });
      response.end(JSON.stringify(body));
    };
    if (!route) return reply(404, { error: `no such control request: ${request.method} ${url.pathname}` });
    try {
      reply(200, await route(url.searchParams));
    } catch (error) {
      this.log.error({ err: error, request: `${request.method} ${url.pathname}` }, 'control request failed');
      reply(500, { error: (error as Error).message });
    }
  }
}
