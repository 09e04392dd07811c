import type { Config, HostPort } from '../config/schema.js';
import type { Envelope, Recipient } from '../spool/envelope.js';
import { domainOf } from '../mail/address.js';

/** A destination the relay talks to: a primary, or the MX hosts of a DSN's recipient domain. */
export interface Route {
  readonly key: string;
  readonly address: HostPort;
  /** A sender domain reached through its MX hosts (DSNs without dsn.relay): never marked down, never probed. */
  readonly mxDomain?: string;
  up: boolean;
  /** Since when sessions have opened without a failure in between (screen.deferWhilePrimaryUp). */
  seenUpSince?: number;
  /** Workers delivering on it now. */
  workers: number;
  probe: NodeJS.Timeout | undefined;
}

const keyOf = (address: HostPort) => `${address.host}:${address.port}`;

/**
 * The relay's destinations and their state. Primaries (global and per source) are
 * known from the config and kept; routes to sender domains' MX hosts are made for
 * the DSNs that need them and forgotten once no queued message uses them and no
 * worker is on them, so a stream of bounces to new domains leaves nothing behind.
 */
export class Routes {
  private readonly routes = new Map<string, Route>();

  constructor(private config: Config) {}

  updateConfig(config: Config): void {
    this.config = config;
  }

  /** The route key of a pending recipient: its source's primary (else the global one); a DSN goes to dsn.relay or the MX. */
  keyFor(kind: Envelope['kind'], recipient: Pick<Recipient, 'address' | 'source'>): string {
    return this.resolve(kind, recipient).key;
  }

  /** The route of a pending recipient, made if it is new. */
  resolve(kind: Envelope['kind'], recipient: Pick<Recipient, 'address' | 'source'>): Route {
    if (kind === 'dsn' && !this.config.dsn.relay) {
      const domain = domainOf(recipient.address);
      return this.make(`mx:${domain}`, { host: domain, port: this.config.dsn.port }, domain);
    }
    if (kind === 'dsn') return this.make(keyOf(this.config.dsn.relay!), this.config.dsn.relay!);
    return this.primaryOf(recipient.source);
  }

  /** The route of the primary that gets a source's mail (the global primary for an unknown source). */
  primaryOf(source: string | undefined): Route {
    const address = this.config.sources.find((s) => s.name === source)?.primary ?? this.config.primary;
    return this.make(keyOf(address), address);
  }

  get(key: string): Route | undefined {
    return this.routes.get(key);
  }

  /** Forgets the sender-MX routes that no worker is on and no queued message uses. */
  sweep(inUse: (key: string) => boolean): void {
    for (const route of this.routes.values()) {
      if (route.mxDomain && route.workers === 0 && !inUse(route.key)) this.routes.delete(route.key);
    }
  }

  /** The primaries (not the sender-MX routes), for status and metrics. */
  primaries(): Array<{ primary: string; up: boolean }> {
    return [...this.routes.values()].filter((r) => !r.mxDomain).map((r) => ({ primary: r.key, up: r.up }));
  }

  all(): IterableIterator<Route> {
    return this.routes.values();
  }

  private make(key: string, address: HostPort, mxDomain?: string): Route {
    let route = this.routes.get(key);
    if (!route) {
      route = { key, address, mxDomain, up: true, workers: 0, probe: undefined };
      this.routes.set(key, route);
    }
    return route;
  }
}
