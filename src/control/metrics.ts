import { Counter, Gauge, Registry } from 'prom-client';

/** Why a recipient or a message was refused, from the enhanced status code of the reply. */
const REASONS: Record<string, string> = {
  '5.7.1': 'relay_denied',
  '5.1.1': 'unknown_user',
  '5.1.3': 'bad_address',
  '4.5.3': 'too_many_recipients',
  '4.3.0': 'directory_incomplete',
  '5.3.4': 'too_big',
  '5.6.0': 'bad_data',
  '5.4.6': 'mail_loop',
  '4.3.1': 'storage',
  '5.6.7': 'smtputf8',
  '5.7.23': 'spf',
  '4.7.23': 'spf',
  '4.7.24': 'spf',
  '5.7.24': 'spf',
  '5.7.26': 'dmarc',
  '4.7.26': 'dmarc',
  '4.7.1': 'deferred_by_policy',
};

export function refusalReason(enhancedCode: string): string {
  return REASONS[enhancedCode] ?? 'other';
}

/** What the daemon counts; the gauges are read when Prometheus scrapes. */
export interface MetricsSources {
  spool(): Promise<{ messages: number; bytes: number; oldestArrival: number | undefined }>;
  primaries(): Array<{ primary: string; up: boolean }>;
  sources(): Array<{ name: string; lastSuccess?: string; domains: number; addresses: number; skipped?: number; condition: string }>;
  sessions(): number;
  /** Bytes free for the spool (Infinity when unknown). */
  spoolFree(): number;
  /** The check threads: answering, and busy (a long check holds them); none while auth is off. */
  checkThreads(): { answering: number; busy: number } | undefined;
}

/** Prometheus metrics (prom-client), named by its conventions: secondarymx_*, _total, _seconds, _bytes. */
export class Metrics {
  readonly registry = new Registry();
  /** How late the event loop runs a 50 ms timer (what one message's checks on it cost everybody else). */
  private readonly loopDelay = new LoopDelay(50);
  readonly accepted = new Counter({ name: 'secondarymx_messages_accepted_total', help: 'Messages queued (answered 250)', registers: [this.registry] });
  readonly refused = new Counter({
    name: 'secondarymx_refused_total',
    help: 'Recipients and messages refused, by reason',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  readonly deliveries = new Counter({
    name: 'secondarymx_deliveries_total',
    help: 'Recipient delivery outcomes: sent, deferred, bounced',
    labelNames: ['status'],
    registers: [this.registry],
  });

  readonly screened = new Counter({
    name: 'secondarymx_screen_decisions_total',
    help: 'Edge screen decisions: screen (dnsbl, spf, dmarc, rspamd, verify, primary_up) and decision (reject, defer, tag, pass, allow, unavailable)',
    labelNames: ['screen', 'decision'],
    registers: [this.registry],
  });
  readonly dsnSuppressed = new Counter({
    name: 'secondarymx_dsn_suppressed_total',
    help: 'DSNs not sent, by reason: spf-fail, spam (likely forged sender), rate (over dsn.maxPerDomainPerHour)',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  readonly dsnUnauthenticated = new Counter({
    name: 'secondarymx_dsn_unauthenticated_total',
    help: 'DSNs queued to a sender whose SPF did not pass (or was not checked): possible backscatter, sent with headers only',
    registers: [this.registry],
  });
  readonly relayHeld = new Counter({
    name: 'secondarymx_relay_held_total',
    help: 'Messages the relay held because it could not process them (see "queue list"; release once fixed)',
    registers: [this.registry],
  });
  readonly rspamdFailures = new Counter({
    name: 'secondarymx_rspamd_failures_total',
    help: 'Checks rspamd gave no verdict for, by failure: unreachable, timeout, http_error, bad_answer (wrong shape, not JSON, over 1 MiB)',
    labelNames: ['failure'],
    registers: [this.registry],
  });
  readonly dnsblListErrors = new Counter({
    name: 'secondarymx_dnsbl_list_errors_total',
    help: 'Answers of a DNS list with its error code (127.255.255.252-255): the list refuses our queries and lists nobody',
    labelNames: ['list'],
    registers: [this.registry],
  });
  readonly undeliverableHeld = new Counter({
    name: 'secondarymx_undeliverable_held_total',
    help: 'Notices (DSNs) that could not be delivered either, held with the reason instead of dropped (see "queue list")',
    registers: [this.registry],
  });
  readonly contentChecks = new Gauge({
    name: 'secondarymx_content_checks_running',
    help: 'Messages whose content checks (DKIM, ARC, DMARC, rspamd) are running now, before their reply',
    registers: [this.registry],
  });
  readonly spoolFault = new Gauge({
    name: 'secondarymx_spool_fault',
    help: '1 while delivery is stopped because the spool cannot record outcomes (full, read-only, I/O errors)',
    registers: [this.registry],
  });

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    // One look at the spool per scrape, shared by its three gauges: prom-client starts every
    // collect() of a scrape before any resolves. Each gauge sets only itself, in its own
    // collect(), so none is serialised before it is set (one scrape behind).
    let looking: ReturnType<MetricsSources['spool']> | undefined;
    const spoolNow = () =>
      (looking ??= sources.spool().finally(() => {
        looking = undefined;
      }));
    const spoolGauge = (name: string, help: string, value: (spool: Awaited<ReturnType<MetricsSources['spool']>>) => number) =>
      new Gauge({
        name,
        help,
        registers,
        async collect() {
          this.set(value(await spoolNow()));
        },
      });
    spoolGauge('secondarymx_spool_messages', 'Messages in the spool', (spool) => spool.messages);
    spoolGauge('secondarymx_spool_bytes', 'Bytes of the messages in the spool', (spool) => spool.bytes);
    spoolGauge('secondarymx_oldest_message_age_seconds', 'Age of the oldest undelivered message (0 when none)', (spool) =>
      spool.oldestArrival === undefined ? 0 : (Date.now() - spool.oldestArrival) / 1000,
    );
    new Gauge({
      name: 'secondarymx_primary_up',
      help: '1 when the primary answers, 0 while it is down and probed',
      labelNames: ['primary'],
      registers,
      collect() {
        this.reset(); // only the primaries known now
        for (const { primary, up } of sources.primaries()) this.set({ primary }, up ? 1 : 0);
      },
    });
    const perSource = (name: string, help: string, value: (source: ReturnType<MetricsSources['sources']>[number]) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['source'],
        registers,
        collect() {
          for (const source of sources.sources()) this.set({ source: source.name }, value(source));
        },
      });
    perSource('secondarymx_sync_last_success_timestamp_seconds', 'Unix time of the last successful pull per source (0: never)', (source) =>
      source.lastSuccess ? Date.parse(source.lastSuccess) / 1000 : 0,
    );
    perSource('secondarymx_sync_domains', 'Domains in use per source', (source) => source.domains);
    perSource('secondarymx_sync_addresses', 'Addresses in use per source', (source) => source.addresses);
    perSource('secondarymx_sync_skipped_rows', 'Rows of the last pull left out as not valid, per source', (source) => source.skipped ?? 0);
    new Gauge({
      name: 'secondarymx_sync_source_state',
      help: '1 for the condition each source is in: ok, held (removals held back), failing, stale',
      labelNames: ['source', 'state'],
      registers,
      collect() {
        for (const source of sources.sources()) {
          for (const state of ['ok', 'held', 'failing', 'stale']) this.set({ source: source.name, state }, source.condition === state ? 1 : 0);
        }
      },
    });
    new Gauge({
      name: 'secondarymx_spool_free_bytes',
      help: 'Bytes free on the spool filesystem; below 1.5 x limits.messageSize MAIL gets 452 4.3.1',
      registers,
      collect() {
        const free = sources.spoolFree();
        if (Number.isFinite(free)) this.set(free);
      },
    });
    new Gauge({
      name: 'secondarymx_smtp_sessions',
      help: 'SMTP sessions open',
      registers,
      collect() {
        this.set(sources.sessions());
      },
    });
    new Gauge({
      name: 'secondarymx_check_threads',
      help: 'Check threads (auth.threads): answering, or busy (a long check holds them; new checks go to the others)',
      labelNames: ['state'],
      registers,
      collect() {
        const states = sources.checkThreads();
        this.reset();
        if (states) for (const [state, count] of Object.entries(states)) this.set({ state }, count);
      },
    });
    // prom-client's own names, read at scrape time. Not its collectDefaultMetrics(): the
    // PerformanceObserver it keeps on every garbage collection cost accept B 8-10 % in
    // bench:postfix (interleaved rounds); the event-loop lag is ours, below.
    new Counter({
      name: 'process_cpu_seconds_total',
      help: 'User and system CPU time of the daemon (all its threads), in seconds',
      registers,
      collect() {
        const { user, system } = process.cpuUsage();
        this.reset();
        this.inc((user + system) / 1e6);
      },
    });
    new Gauge({
      name: 'process_resident_memory_bytes',
      help: 'Resident memory of the daemon, in bytes',
      registers,
      collect() {
        this.set(process.memoryUsage.rss());
      },
    });
    new Gauge({
      name: 'nodejs_heap_size_used_bytes',
      help: 'V8 heap in use on the SMTP thread, in bytes',
      registers,
      collect() {
        this.set(process.memoryUsage().heapUsed);
      },
    });
    const loop = this.loopDelay;
    new Gauge({
      name: 'secondarymx_event_loop_delay_seconds',
      help: 'How late the event loop ran a 50 ms timer since the last scrape (p50, p99, max): sessions and the relay waited that long',
      labelNames: ['quantile'],
      registers,
      collect() {
        const figures = loop.take();
        if (figures) for (const [quantile, seconds] of Object.entries(figures)) this.set({ quantile }, seconds);
      },
    });
  }

  /** Seconds the event loop was held (late) in the last minute: what /healthz reports when it stays high. */
  loopHeldLastMinute(): number {
    return this.loopDelay.heldWithin(60_000, performance.now());
  }

  /** Stops sampling the event loop (the daemon stops). */
  close(): void {
    this.loopDelay.stop();
  }
}

/**
 * The event loop's delay: a timer every `intervalMs` notes how late it ran (a blocked loop
 * makes it late by the whole block). node:perf_hooks' monitorEventLoopDelay missed a 300 ms
 * block that followed a reset() and an await here, so this measures it directly.
 */
export class LoopDelay {
  private samples: number[] = [];
  /** [time, delay] in ms, the last minute or so: how long the loop was held lately. */
  private recent: Array<[number, number]> = [];
  private last = performance.now();
  private readonly timer: NodeJS.Timeout | undefined;

  constructor(private readonly intervalMs: number) {
    if (intervalMs > 0) this.timer = setInterval(() => this.record(performance.now()), intervalMs).unref();
  }

  /** A tick of the timer at `now` (performance.now()): it ran this much later than asked. */
  record(now: number): void {
    const delay = Math.max(0, now - this.last - this.intervalMs);
    this.last = now;
    if (this.samples.length < 10_000) this.samples.push(delay / 1000);
    if (delay > 0) this.recent.push([now, delay]);
    while (this.recent.length > 0 && this.recent[0][0] < now - 120_000) this.recent.shift();
  }

  /** Milliseconds of the last `windowMs` the loop was held, as seconds (a block that began before the window counts only its part within). */
  heldWithin(windowMs: number, now: number): number {
    const since = now - windowMs;
    let held = 0;
    for (const [at, delay] of this.recent) held += Math.max(0, at - Math.max(since, at - delay));
    return held / 1000;
  }

  /** p50, p99 and max (seconds) since the last take; undefined when no sample came. */
  take(): Record<'0.5' | '0.99' | 'max', number> | undefined {
    if (this.samples.length === 0) return undefined;
    const sorted = this.samples.sort((a, b) => a - b);
    this.samples = [];
    const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
    return { '0.5': at(0.5), '0.99': at(0.99), max: sorted[sorted.length - 1] };
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
