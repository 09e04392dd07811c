import type { Logger } from 'pino';
import type { Config, SourceConfig } from '../config/schema.js';
import { buildSnapshot, countList, type Conflict, type DirectorySnapshot, type SourceList } from './snapshot.js';
import { SourceError, type Pulled } from './source-list.js';
import { pullFile } from './sources/file.js';
import { pullMxlist } from './sources/mxlist.js';
import { pullMysql } from './sources/mysql.js';
import type { DirectoryStore, SourceState } from './store.js';

export interface Counts {
  domains: number;
  addresses: number;
}

export interface SourceReport {
  name: string;
  type: SourceConfig['type'];
  /**
   * updated: the new pull is in use; held: its additions are, its removals are held back
   * by the shrink guard (reason says why); kept: the previous data stays (reason says why).
   */
  result: 'updated' | 'held' | 'kept';
  /** Rows of the pull left out as not valid, each named. */
  skipped?: readonly string[];
  reason?: string;
  /** The data in use after this sync. */
  domains: number;
  addresses: number;
  added: Counts;
  removed: Counts;
  durationMs: number;
}

export interface SyncReport {
  forced: boolean;
  startedAt: string;
  sources: SourceReport[];
  directory: { domains: number; addresses: number; complete: boolean; conflicts: readonly Conflict[] };
}

function pull(source: SourceConfig): Promise<Pulled> {
  switch (source.type) {
    case 'file':
      return pullFile(source.path);
    case 'mysql':
      return pullMysql(source);
    case 'mxlist':
      return pullMxlist(source);
  }
}

/**
 * Keeps the directory current: pulls every source, refuses what looks broken
 * (failed, empty, shrunk by more than sync.maxShrink), keeps each source's last good
 * list, persists it, and hands every new snapshot to `apply`. Runs never overlap.
 */
export class Syncer {
  private readonly lists = new Map<string, SourceList>();
  private state: Record<string, SourceState> = {};
  private running: Promise<SyncReport> | undefined;

  private constructor(
    private config: Config,
    private readonly store: DirectoryStore,
    private readonly log: Logger,
    private readonly apply: (snapshot: DirectorySnapshot) => void,
  ) {}

  /** A reloaded config (SIGHUP): new sources start from their persisted list, removed ones are dropped. */
  async updateConfig(config: Config): Promise<void> {
    await this.settled();
    this.config = config;
    const names = new Set(config.sources.map((source) => source.name));
    for (const name of this.lists.keys()) if (!names.has(name)) this.lists.delete(name);
    await this.loadPersisted();
    this.publish();
  }

  private async loadPersisted(): Promise<void> {
    for (const source of this.config.sources) {
      if (this.lists.has(source.name)) continue;
      try {
        const list = await this.store.loadList(source.name);
        if (list) this.lists.set(source.name, list);
      } catch (error) {
        this.log.error({ source: source.name, err: error }, 'persisted directory of this source is unreadable; waiting for its next pull');
      }
    }
  }

  /** Loads the persisted lists (the directory to serve while sources are down). */
  static async open(config: Config, store: DirectoryStore, log: Logger, apply: (snapshot: DirectorySnapshot) => void): Promise<Syncer> {
    const syncer = new Syncer(config, store, log, apply);
    await store.ensure();
    syncer.state = await store.loadState();
    await syncer.loadPersisted();
    syncer.publish();
    return syncer;
  }

  /** The sync history of each configured source and its condition now, for `status`, `/healthz` and metrics. */
  sourceStates(now = Date.now()): Array<SourceState & { name: string; condition: SourceCondition }> {
    return this.config.sources.map((source) => {
      const state = { ...(this.state[source.name] ?? { type: source.type, domains: 0, addresses: 0 }), type: source.type };
      return { name: source.name, ...state, condition: conditionOf(state, this.config.sync.staleAfter, now) };
    });
  }

  /** Resolves when no sync is running (for a clean stop). */
  async settled(): Promise<void> {
    while (this.running) await this.running.catch(() => undefined);
  }

  /** One sync. While one runs, a plain request shares it; a forced one runs right after it. */
  run(options: { force?: boolean } = {}): Promise<SyncReport> {
    const force = Boolean(options.force);
    if (this.running && !force) return this.running;
    const previous = this.running;
    const run = (async () => {
      await previous?.catch(() => undefined);
      return this.runOnce(force);
    })();
    const tracked: Promise<SyncReport> = run.finally(() => {
      if (this.running === tracked) this.running = undefined;
    });
    this.running = tracked;
    return tracked;
  }

  private async runOnce(force: boolean): Promise<SyncReport> {
    const startedAt = new Date().toISOString();
    const sources = await Promise.all(this.config.sources.map((source) => this.syncSource(source, force, startedAt)));
    const snapshot = this.publish();
    await this.store.saveState(this.state).catch((error: unknown) => this.log.error({ err: error }, 'cannot persist the sync state'));
    const report: SyncReport = {
      forced: force,
      startedAt,
      sources,
      directory: { domains: snapshot.domainCount, addresses: snapshot.addressCount, complete: snapshot.complete, conflicts: snapshot.conflicts },
    };
    for (const conflict of snapshot.conflicts) {
      this.log.warn(
        conflict,
        `domain ${conflict.domain} is listed by ${conflict.keptBy} and ${conflict.claimedBy}: ${conflict.keptBy} (listed first) keeps it`,
      );
    }
    this.log.info(
      {
        event: 'sync_finished',
        ...report.directory,
        conflicts: snapshot.conflicts.length,
        kept: sources.filter((s) => s.result === 'kept').map((s) => s.name),
      },
      'sync finished',
    );
    return report;
  }

  private async syncSource(source: SourceConfig, force: boolean, attemptAt: string): Promise<SourceReport> {
    const started = Date.now();
    const previous = this.lists.get(source.name);
    const before = previous ? countList(previous) : { domains: 0, addresses: 0 };
    let skipped: readonly string[] = [];
    const report = (result: SourceReport['result'], reason: string | undefined, diff: { added: Counts; removed: Counts }): SourceReport => {
      const inUse = this.lists.get(source.name);
      const counts = inUse ? countList(inUse) : { domains: 0, addresses: 0 };
      const applied = result !== 'kept';
      this.state[source.name] = {
        ...this.state[source.name],
        type: source.type,
        lastAttempt: attemptAt,
        ...(applied
          ? { lastSuccess: attemptAt, lastError: undefined, held: result === 'held' ? reason : undefined, skipped: skipped.length }
          : { lastError: reason }),
        ...counts,
      };
      return {
        name: source.name,
        type: source.type,
        result,
        ...(reason ? { reason } : {}),
        ...(skipped.length ? { skipped } : {}),
        ...counts,
        ...diff,
        durationMs: Date.now() - started,
      };
    };
    const none = { added: { domains: 0, addresses: 0 }, removed: { domains: 0, addresses: 0 } };
    let list: SourceList;
    try {
      const pulled = await pull(source);
      ({ list, skipped } = pulled);
      for (const warning of pulled.warnings ?? []) this.log.warn({ source: source.name, reason: warning }, 'source pulled, with something missing');
    } catch (error) {
      const reason = error instanceof SourceError ? error.message : `internal error: ${(error as Error).message}`;
      this.log.warn({ source: source.name, reason, kept: before }, 'source failed, its previous data stays in use');
      return report('kept', reason, none);
    }
    if (skipped.length > 0) {
      this.log.warn(
        { event: 'rows_skipped', source: source.name, count: skipped.length, rows: skipped.slice(0, 20) },
        'rows left out of the pull: not valid (the rest applies)',
      );
    }
    const { maxShrink, shrinkFloor } = this.config.sync;
    const shrink = previous && !force ? shrinkBeyond(before, diffLists(previous, list).removed, maxShrink, shrinkFloor) : undefined;
    let held: string | undefined;
    if (shrink) {
      // Additions apply now (a new domain must not get 550 while the guard holds); removals wait for --force.
      held = `${shrink}, over sync.maxShrink ${maxShrink}%: removals held back, additions applied; run "secondarymx sync --force" to apply the removals`;
      list = keepingRemovals(previous!, list);
      this.log.warn(
        { event: 'shrink_held', source: source.name, reason: held, before, pulled: countList(list) },
        'source shrank too much: its removals are held back',
      );
    }
    const diff = previous ? diffLists(previous, list) : { added: countList(list), removed: { domains: 0, addresses: 0 } };
    try {
      await this.store.saveList(source.name, list);
    } catch (error) {
      const reason = `cannot persist the new list: ${(error as Error).message}`;
      this.log.error({ source: source.name, err: error }, 'source pulled but not persisted, its previous data stays in use');
      return report('kept', reason, none);
    }
    this.lists.set(source.name, list);
    const changed = diff.added.domains + diff.added.addresses + diff.removed.domains + diff.removed.addresses > 0;
    this.log.info({ source: source.name, ...countList(list), added: diff.added, removed: diff.removed, ms: Date.now() - started }, 'source synced');
    if (changed || !previous) this.warnUnchecked(source, list);
    return held ? report('held', held, diff) : report('updated', undefined, diff);
  }

  private warnUnchecked(source: SourceConfig, list: SourceList): void {
    const unchecked = [...list].filter(([, entry]) => !entry.recipientCheck).map(([domain]) => domain);
    if (unchecked.length === 0) return;
    const what =
      source.type === 'mxlist'
        ? 'mxlist sources list domains only: these domains are not recipient-checked against a list'
        : 'domains with no address list accept any local part';
    this.log.warn(
      { source: source.name, count: unchecked.length, domains: unchecked.slice(0, 20), verify: this.config.verify.enabled },
      this.config.verify.enabled
        ? `${what}: their recipients are verified with the primary (verify)`
        : `${what}: no recipient check, backscatter risk (verify.enabled is false)`,
    );
  }

  private publish(): DirectorySnapshot {
    const snapshot = buildSnapshot(this.config.sources.map((source) => ({ name: source.name, list: this.lists.get(source.name) })));
    this.apply(snapshot);
    return snapshot;
  }
}

/** failing: its last pull was not applied; held: removals held back; stale: no successful pull for sync.staleAfter. */
export type SourceCondition = 'ok' | 'held' | 'failing' | 'stale';

function conditionOf(state: SourceState, staleAfter: number, now: number): SourceCondition {
  if (state.lastError) return 'failing';
  if (state.held) return 'held';
  if (state.lastSuccess && now - Date.parse(state.lastSuccess) > staleAfter * 1000) return 'stale';
  return 'ok';
}

/**
 * Describes removals of more than `maxPercent` and more than `floor` of the domains or
 * addresses, or undefined. Removals, not net counts: additions in the same pull must not
 * hide a collapse.
 */
function shrinkBeyond(before: Counts, removed: Counts, maxPercent: number, floor: number): string | undefined {
  for (const key of ['domains', 'addresses'] as const) {
    if (before[key] === 0 || removed[key] <= floor) continue;
    const dropped = (removed[key] / before[key]) * 100;
    if (dropped > maxPercent) return `${removed[key]} of ${before[key]} ${key} would be removed (${dropped.toFixed(1)}%)`;
  }
  return undefined;
}

/** The pulled list, plus everything of the previous one it dropped: additions apply, removals wait. */
function keepingRemovals(previous: SourceList, pulled: SourceList): SourceList {
  const merged = new Map(previous);
  for (const [domain, entry] of pulled) {
    const old = previous.get(domain);
    merged.set(
      domain,
      old
        ? {
            recipientCheck: entry.recipientCheck || old.recipientCheck,
            catchAll: entry.catchAll || old.catchAll,
            localParts: new Set([...old.localParts, ...entry.localParts]),
          }
        : entry,
    );
  }
  return merged;
}

function diffLists(before: SourceList, after: SourceList): { added: Counts; removed: Counts } {
  const added = { domains: 0, addresses: 0 };
  const removed = { domains: 0, addresses: 0 };
  const tally = (from: SourceList, to: SourceList, into: Counts) => {
    for (const [domain, entry] of from) {
      const other = to.get(domain);
      if (!other) into.domains++;
      if (entry.catchAll && !other?.catchAll) into.addresses++;
      for (const local of entry.localParts) if (!other?.localParts.has(local)) into.addresses++;
    }
  };
  tally(after, before, added);
  tally(before, after, removed);
  return { added, removed };
}
