import { join } from 'node:path';
import { schedule, type ScheduledTask } from 'node-cron';
import type { Logger } from 'pino';
import { statSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { insecureSources, loadConfig, type LoadedConfig } from './config/load.js';
import type { Config } from './config/schema.js';
import { Metrics } from './control/metrics.js';
import { captureConsole } from './log.js';
import { MonitoringServer } from './control/monitoring.js';
import { ControlServer, controlSocketPath } from './control/server.js';
import type { StatusReport } from './control/status.js';
import { Directory } from './directory/directory.js';
import { directoryStore } from './directory/store.js';
import { Syncer, type SyncReport } from './directory/sync.js';
import { ReceiveServer } from './receive/server.js';
import { EdgeScreens } from './screen/screens.js';
import { PrimaryCapabilities, type Capabilities } from './relay/primary-capabilities.js';
import { Relay } from './relay/relay.js';
import { editMany, editQueued, type QueueEdit } from './spool/edit.js';
import { assumeServiceIdentity, bindAsRoot, dropPrivileges, lookupIdentity } from './privileges.js';
import type { ServeSignals } from './signals.js';
import { Spool } from './spool/spool.js';
import { SpoolWatch } from './spool/watch.js';

/** A running daemon: what tests and the CLI start and stop. */
export interface Daemon {
  server: ReceiveServer;
  directory: Directory;
  spool: Spool;
  syncer: Syncer;
  relay: Relay;
  metrics: Metrics;
  /** Where /metrics and /healthz answer. */
  monitoringPort: number;
  /** The sync run at start (the directory served until then is the persisted one). */
  firstSync: Promise<SyncReport>;
  /** Applies a re-read config (SIGHUP); what needs a restart is logged, not applied. */
  reload(config: Config): Promise<void>;
  stop(): Promise<void>;
}

/** Keys that take effect only at start: the sockets, the spool, the identity. */
const RESTART_KEYS = ['hostname', 'listen', 'spool', 'user', 'group', 'control'] as const;

export async function startDaemon({ file, config }: LoadedConfig, log: Logger): Promise<Daemon> {
  log.info({ config: file, hostname: config.hostname, spool: config.spool }, 'starting');
  warnIfSecretsExposed(file, config, log);
  for (const reason of insecureSources(config)) log.warn({ event: 'insecure_source', reason }, reason);
  const identity = config.user ? lookupIdentity(config.user, config.group) : undefined;
  if (identity) assumeServiceIdentity(identity, config.spool, config.group ? `${config.user}:${config.group}` : config.user!);
  const spool = await Spool.openForServing(config.spool, log);
  const directory = new Directory();
  const store = directoryStore(config.spool);
  const watch = new SpoolWatch(spool, minFree(config), log);
  let running = config;
  const cleanups: Array<() => Promise<void> | void> = [() => spool.unlock(), () => watch.stop()];
  const stop = async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  };
  try {
    await watch.start();
    await store.ensure();
    await store.removeLeftovers();
    const syncer = await Syncer.open(config, store, log, (snapshot) => directory.replace(snapshot));
    cleanups.push(() => syncer.settled());
    const metrics: Metrics = new Metrics({
      // The relay's own counts: a scrape during a long outage allocates nothing per message.
      spool: async (): Promise<{ messages: number; bytes: number; oldestArrival: number | undefined }> => spoolCounts(relay),
      primaries: () => relay.summary().primaries,
      sources: () => syncer.sourceStates(),
      sessions: () => server.openSessions, // read at scrape time, once everything runs
      spoolFree: () => watch.freeBytes,
      checkThreads: () => screens.checkThreads(),
    });
    cleanups.push(() => metrics.close());
    const relay: Relay = new Relay(config, spool, log, true, metrics);
    await relay.load();
    // Reading a big spool leaves every envelope it parsed as garbage: collect it now, before
    // the sessions start, so the heap (and the RSS) is what the index needs (--expose-gc).
    const gc = (globalThis as { gc?: () => void }).gc;
    gc?.();
    gc?.(); // the second moves what the first left scattered, and gives those pages back
    cleanups.push(() => relay.stop());
    watch.on('change', (condition) => {
      if (condition === 'gone') relay.suspend(watch.problem!);
      if (condition === 'ok') spool.reserve.ensure().catch((error: unknown) => log.warn({ err: error }, 'cannot write SPOOL/space.reserve'));
    });
    const screens = new EdgeScreens(config, config.spool, log, metrics);
    cleanups.push(() => screens.save());
    const server = new ReceiveServer({
      config,
      directory,
      spool,
      log,
      metrics,
      screens,
      primaryOf: (source) => relay.primaryState(source),
      primaryUnreachable: (source, reason) => relay.primaryUnreachable(source, reason),
      onQueued: (envelope) => relay.add(envelope),
      spoolCondition: () => watch.state,
      space: watch,
      onEtrn: (domain) => relay.flushInBackground({ domain }),
    });
    cleanups.push(() => server.close());
    const capabilities = new PrimaryCapabilities(config.spool);
    const configuredPrimaries = () =>
      [running.primary, ...running.sources.flatMap((source) => (source.primary ? [source.primary] : []))].map((p) => `${p.host}:${p.port}`);
    const promise = () => server.promise(capabilities.smallestSize(configuredPrimaries()), capabilities.allSmtpUtf8(configuredPrimaries()));
    promise();
    relay.on('primary-capabilities', (primary: string, seen: Capabilities) => {
      const saved = capabilities.record(primary, seen);
      if (!saved) return;
      promise();
      log.info(
        { event: 'primary_capabilities', primary, ...seen, messageSize: server.messageSize },
        'primary capabilities learnt: SIZE and SMTPUTF8 offered here follow them',
      );
      saved.catch((error: unknown) => log.error({ err: error, primary }, 'cannot save the primary capabilities'));
    });
    const bound = await bindAsRoot(identity, () => server.listen());
    if (identity) dropPrivileges(identity, log); // synchronously: no session has been served yet, none is as root
    const listen = bound.map((a) => (a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`));
    const startedAt = new Date().toISOString();
    const status = async (): Promise<StatusReport> => {
      const snapshot = directory.current;
      return {
        daemon: { running: true, pid: process.pid, listen, startedAt },
        directory: {
          domains: snapshot.domainCount,
          addresses: snapshot.addressCount,
          complete: snapshot.complete,
          missingSources: snapshot.missingSources,
          conflicts: snapshot.conflicts,
        },
        sources: syncer.sourceStates(),
        spool: spoolCounts(relay),
        primaries: relay.summary().primaries,
        ...(relay.storageProblem ? { delivery: `stopped: the spool cannot record outcomes (${relay.storageProblem})` } : {}),
      };
    };
    // One id: that message, or an error saying why not. bulk=1 (a selection): counts.
    const edit = (action: QueueEdit) => async (query: URLSearchParams) => {
      if (query.has('bulk')) return editMany(spool, query.getAll('id'), action, (id, envelope) => relay.refresh(id, envelope));
      const id = query.get('id') ?? '';
      const envelope = await editQueued(spool, id, action);
      relay.refresh(id, envelope);
      return { id, action, envelope: envelope ?? null };
    };
    const control = new ControlServer(
      controlSocketPath(config.spool),
      {
        'GET /status': status,
        'POST /sync': (query) => syncer.run({ force: query.get('force') === '1' }),
        'POST /flush': (query) => relay.flush({ id: query.get('id') ?? undefined, domain: query.get('domain') ?? undefined }),
        'POST /queue/hold': edit('hold'),
        'POST /queue/release': edit('release'),
        'POST /queue/delete': edit('delete'),
      },
      log,
    );
    await control.listen();
    cleanups.push(() => control.close());
    const monitoring = new MonitoringServer(config.control.listen, metrics, async () => ({
      problem: await health(config.spool, directory, server, relay, watch),
      degraded: [
        ...syncer
          .sourceStates()
          .filter((source) => source.condition !== 'ok')
          .map((source) => `source ${source.name} ${source.condition}: ${source.lastError ?? source.held ?? `no successful pull since ${source.lastSuccess}`}`),
        ...loopHealth(metrics.loopHeldLastMinute()),
      ],
    }));
    const monitoringAddress = await monitoring.listen();
    cleanups.push(() => monitoring.close());
    log.info({ control: `${monitoringAddress.address}:${monitoringAddress.port}` }, 'monitoring: /metrics and /healthz');
    const firstSync = syncer.run();
    const cronLog = log.child({ component: 'node-cron' });
    const scheduleSync = (expression: string): ScheduledTask =>
      schedule(expression, () => syncer.run(), {
        name: 'directory-sync',
        noOverlap: true,
        // An overlap is expected with a slow source (the Syncer shares the running sync anyway).
        logger: { info: (m) => cronLog.debug(m), warn: (m) => cronLog.debug(m), error: (m) => cronLog.error(m), debug: (m) => cronLog.debug(m) },
      });
    let task = scheduleSync(config.sync.schedule);
    cleanups.push(() => task.destroy());
    server.startServing();
    relay.kick();
    const reload = async (next: Config) => {
      const needRestart = RESTART_KEYS.filter((key) => JSON.stringify(next[key]) !== JSON.stringify(running[key]));
      if (needRestart.length > 0)
        log.warn({ event: 'config_restart_keys', keys: needRestart }, 'config reloaded, but these keys only take effect after a restart');
      const applied = { ...next, ...Object.fromEntries(RESTART_KEYS.map((key) => [key, running[key]])) } as Config;
      server.updateConfig(applied);
      screens.updateConfig(applied);
      relay.updateConfig(applied);
      watch.updateMinFree(minFree(applied));
      await syncer.updateConfig(applied);
      if (next.sync.schedule !== running.sync.schedule) {
        await task.destroy();
        task = scheduleSync(next.sync.schedule);
      }
      running = applied;
      promise();
      log.info({ event: 'config_reloaded' }, 'config reloaded');
      syncer.run().catch((error: unknown) => log.error({ err: error }, 'sync after reload failed'));
    };
    return { server, directory, spool, syncer, relay, metrics, monitoringPort: monitoringAddress.port, firstSync, reload, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** Past this, sessions and the relay wait on the event loop more than they run: /healthz says degraded. */
const LOOP_HELD_DEGRADED_SECONDS = 30;

function loopHealth(heldSeconds: number): string[] {
  if (heldSeconds < LOOP_HELD_DEGRADED_SECONDS) return [];
  return [`event loop held ${Math.round(heldSeconds)} s of the last 60 s: sessions and the relay are waiting (see secondarymx_event_loop_delay_seconds)`];
}

/** /healthz: serving, the spool writable, the directory loaded; else the first reason why not. */
async function health(spoolRoot: string, directory: Directory, server: ReceiveServer, relay: Relay, watch: SpoolWatch): Promise<string | undefined> {
  if (server.isClosing) return 'shutting down';
  await watch.check(); // what MAIL would meet now, not a second ago
  if (watch.problem) return watch.problem;
  const storage = relay.storageProblem;
  if (storage) return `delivery stopped: the spool cannot record outcomes (${storage})`;
  const probe = join(spoolRoot, 'tmp', `.healthz.${process.pid}`);
  try {
    await writeFile(probe, 'ok');
    await rm(probe, { force: true });
  } catch (error) {
    return `spool not writable: ${(error as Error).message}`;
  }
  const snapshot = directory.current;
  if (!snapshot.complete) return `directory incomplete: never loaded: ${snapshot.missingSources.join(', ')}`;
  if (snapshot.domainCount === 0) return 'directory empty';
  return undefined;
}

/** Free space the spool needs to take a message: 1.5 × the size limit, as Postfix's smtpd asks of its queue. */
/** The queued messages and their bytes, as the relay indexed them (a running count, no spool scan). */
function spoolCounts(relay: Relay): { messages: number; bytes: number; oldestArrival: number | undefined } {
  const { indexed, bytes, oldestArrival } = relay.summary();
  return { messages: indexed, bytes, oldestArrival };
}

function minFree(config: Config): number {
  return 1.5 * config.limits.messageSize;
}

/** Passwords in a config anyone on the machine can read deserve a warning at every start. */
function warnIfSecretsExposed(file: string, config: Config, log: Logger): void {
  const secrets = config.sources.some((s) => (s.type === 'mysql' && (s.password || /\/\/[^/@:]+:[^@]+@/.test(s.url ?? ''))) || s.type === 'mxlist');
  if (secrets && (statSync(file).mode & 0o004) !== 0) {
    log.warn({ config: file }, 'the config holds passwords and is world-readable: chmod 640 it (owner root, group of the service user)');
  }
}

/**
 * `secondarymx serve`: runs until SIGTERM or SIGINT, then stops gracefully; SIGHUP re-reads
 * the config and the TLS files (one that came while starting is applied once started).
 */
export async function serve(loaded: LoadedConfig, log: Logger, signals: ServeSignals): Promise<void> {
  captureConsole(log);
  const daemon = await startDaemon(loaded, log);
  const reload = () => {
    // A bad new config (or unreadable TLS files) is refused; the running one stays.
    let next: Config;
    try {
      next = loadConfig(loaded.file).config;
    } catch (error) {
      log.error({ err: error, config: loaded.file }, 'SIGHUP: new config refused, the running one is kept');
      return;
    }
    daemon.reload(next).catch((error: unknown) => log.error({ err: error }, 'SIGHUP: reload failed, the running config is kept'));
  };
  if (signals.onReload(reload)) {
    log.info({ event: 'reload_held' }, 'SIGHUP came while starting: the config is re-read now');
    reload();
  }
  const signal = await signals.stop;
  log.info({ signal, shutdownTimeout: loaded.config.limits.shutdownTimeout }, 'stopping: finishing sessions in DATA');
  await daemon.stop();
  log.info('stopped');
}
