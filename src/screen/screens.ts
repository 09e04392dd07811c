import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import type { Metrics } from '../control/metrics.js';
import { availableParallelism } from 'node:os';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ThreadPool } from '../threads/pool.js';
import { SenderAuth } from './auth.js';
import type { CheckTask } from './check-thread.js';
import type { MessageCheckResult } from './message-checks.js';
import { DnsblScreen, parseDnsblSite } from './dnsbl.js';
import { ExpiringStore } from './expiring-store.js';
import { cachingResolve, screenResolver } from './resolver.js';
import { RecipientVerifier, type Verdict } from './verify.js';

/**
 * check-thread.js beside this module. Where the sources run under tsx (the tests), the built
 * one: tsx does not load a worker thread's TypeScript (privatenumber/tsx#354); npm test builds first.
 */
const CHECK_THREAD = new URL(extname(fileURLToPath(import.meta.url)) === '.ts' ? '../../dist/screen/check-thread.js' : './check-thread.js', import.meta.url);
/** A check thread's V8 heap: a message that needs more kills its thread (tagged temperror), not the daemon. */
const CHECK_THREAD_HEAP_MB = 256;

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
  /** The check threads (DKIM, ARC, DMARC), from the first config with auth on. */
  private threads: ThreadPool<CheckTask, MessageCheckResult> | undefined;

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
    this.auth = undefined;
    if (auth.enabled) {
      const threads = auth.threads === 'auto' ? availableParallelism() : auth.threads;
      if (this.threads) this.threads.resize(threads);
      else
        this.threads = new ThreadPool(CHECK_THREAD, {
          threads,
          maxHeapMb: CHECK_THREAD_HEAP_MB,
          onLost: (reason, tasks) =>
            this.log.error({ event: 'check_thread_lost', reason, tasks }, `a check thread ${reason}: replaced; its ${tasks} message(s) are tagged temperror`),
          onOutput: (level, text) => this.log[level]({ event: 'library_output', text, thread: 'check' }, 'a library wrote to the console'),
        });
      const resolver = cachingResolve(screenResolver(dns.servers, auth.dnsTimeout));
      this.auth = new SenderAuth(auth, config.hostname, resolver, this.threads, {
        ...(dns.servers ? { servers: dns.servers } : {}),
        timeoutSeconds: auth.dnsTimeout,
      });
    }
    this.verifier?.close(); // its probe sessions: the new one opens its own, with the new settings
    this.verifier = new RecipientVerifier(this.verdicts, verify, this.log);
  }

  checkThreads(): { answering: number; busy: number } | undefined {
    return this.threads?.states();
  }

  /** Closes the probe sessions and the check threads, and writes the caches (at shutdown). */
  async save(): Promise<void> {
    this.verifier.close();
    await Promise.all([this.passes.save(), this.verdicts.save(), this.threads?.close()]);
  }
}
