import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseListenAddress } from '../config/schema.js';
import type { Metrics } from './metrics.js';

/**
 * Why the daemon cannot serve (503), or what is degraded while it serves (200
 * "degraded: …": a source failing, held back or stale; mail is still taken and
 * relayed, from the last good list); neither when all is well (200 "ok").
 */
export type HealthCheck = () => Promise<{ problem?: string; degraded?: string[] }>;

/**
 * The loopback HTTP endpoint for monitoring: GET /metrics (Prometheus text format)
 * and GET /healthz (200 "ok", or 503 with the reason) for a load balancer or Nagios.
 */
export class MonitoringServer {
  private readonly server: Server;

  constructor(
    private readonly listenOn: string,
    metrics: Metrics,
    health: HealthCheck,
  ) {
    const listenHost = parseListenAddress(listenOn)!.host.toLowerCase();
    this.server = createServer((request, response) => {
      const reply = (status: number, type: string, body: string) => {
        response.writeHead(status, { 'content-type': type });
        response.end(body);
      };
      const path = new URL(request.url ?? '/', 'http://monitoring').pathname;
      const answer = !hostAllowed(request.headers.host, listenHost)
        ? Promise.resolve(reply(421, 'text/plain', 'Host not served here: use the control.listen address or localhost\n'))
        : request.method !== 'GET'
          ? Promise.resolve(reply(405, 'text/plain', 'GET only\n'))
          : path === '/metrics'
            ? metrics.registry.metrics().then((text) => reply(200, metrics.registry.contentType, text))
            : path === '/healthz'
              ? health().then(({ problem, degraded = [] }) =>
                  problem
                    ? reply(503, 'text/plain', `${problem}\n`)
                    : reply(200, 'text/plain', degraded.length ? `degraded: ${degraded.join('; ')}\n` : 'ok\n'),
                )
              : Promise.resolve(reply(404, 'text/plain', 'not found: try /metrics or /healthz\n'));
      answer.catch((error: unknown) => reply(500, 'text/plain', `${(error as Error).message}\n`));
    });
  }

  async listen(): Promise<AddressInfo> {
    const { host, port } = parseListenAddress(this.listenOn)!;
    await new Promise<void>((resolve, reject) => {
      const failed = (error: Error) => reject(new Error(`cannot listen on control.listen ${this.listenOn}: ${error.message}`));
      this.server.once('error', failed);
      this.server.listen(port, host, () => {
        this.server.off('error', failed);
        resolve();
      });
    });
    return this.server.address() as AddressInfo;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/**
 * A browser sends the name it was given: a page on a host name that an attacker rebinds to
 * 127.0.0.1 (DNS rebinding) names the attacker's host. Only the listen address and
 * localhost are served (a client without Host, not a browser, too).
 */
function hostAllowed(host: string | undefined, listenHost: string): boolean {
  if (host === undefined) return true;
  const name = host
    .toLowerCase()
    .replace(/:\d+$/, '')
    .replace(/^\[(.*)\]$/, '$1');
  return name === 'localhost' || name === listenHost.replace(/^\[(.*)\]$/, '$1');
}
