import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import type { Metrics } from '../control/metrics.js';
import { SenderAuth } from './auth.js';
import { DnsblScreen, parseDnsblSite } from './dnsbl.js';
import { ExpiringStore } from './expiring-store.js';
import { cachingResolve, screenResolver } from './resolver.js';
import { RecipientVerifier, type Verdict } from './verify.js';

/**
 * The edge defences the SMTP side consults (postscreen's DNS lists and greeting pass,
 * sender authentication, recipient verification); rspamd is called per message
 * (rspamd.ts). Built from the config; the caches live in the spool folder.
 */
export class EdgeScreens {
  dnsbl!: DnsblScreen;
  auth: SenderAuth | undefined;
  verifier!: RecipientVerifier;
  readonly passes: ExpiringStore<true>;
  private readonly verdicts: ExpiringStore<Verdict>;

  constructor(
    config: Config,
    spoolDir: string,
    private readonly log: Logger,
    private readonly metrics?: Metrics,
  ) {
    this.passes = new ExpiringStore(spoolDir, 'greeting-passes', log);
    this.verdicts = new ExpiringStore(spoolDir, 'verified-recipients', log);
    this.updateConfig(config);
  }

  /** A reloaded config (SIGHUP): lists, policies and timeouts change; the caches stay. */
  updateConfig(config: Config): void {
    const { screen, auth, verify, dns } = config;
    this.dnsbl = new DnsblScreen(
      screen.dnsblSites.map((site) => parseDnsblSite(site)!),
      screenResolver(dns.servers, screen.dnsTimeout),
      screen.dnsTimeout * 1000,
      {
        listError: (site, reply, first) => {
          this.metrics?.dnsblListErrors.inc({ list: site.domain });
          if (first)
            this.log.warn(
              { event: 'dnsbl_list_error', list: site.spec, reply },
              `DNS list ${site.domain} answers with its error code ${reply}: it lists nobody until it answers properly (is it queried through a public resolver?)`,
            );
        },
      },
    );
    this.auth = auth.enabled ? new SenderAuth(auth, config.hostname, cachingResolve(screenResolver(dns.servers, auth.dnsTimeout))) : undefined;
    this.verifier?.close(); // its probe sessions: the new one opens its own, with the new settings
    this.verifier = new RecipientVerifier(this.verdicts, verify, this.log);
  }

  /** Closes the probe sessions and writes the caches (at shutdown). */
  async save(): Promise<void> {
    this.verifier.close();
    await Promise.all([this.passes.save(), this.verdicts.save()]);
  }
}
