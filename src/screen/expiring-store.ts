import { join } from 'node:path';
import type { Logger } from 'pino';
import { writeFileSynced } from '../fs/durable.js';
import { readStateFile, UnusableStateFile } from '../fs/state-file.js';

/** Entries kept at most (the oldest go first): a flood of new clients cannot grow memory without bound. */
const MAX_ENTRIES = 100_000;
/** Bytes of a cache file at most: MAX_ENTRIES of an address and a primary's reply each. */
const MAX_FILE_BYTES = MAX_ENTRIES * 1024;
/** Changes are written at most this often (a lost last second costs a client one greeting pause, or one probe). */
const SAVE_DELAY_MS = 1000;

/**
 * A map whose entries expire, persisted as one JSON file in the spool folder so that it
 * survives restarts (postscreen's cache, verify(8)'s cache). Writes are batched and
 * atomic (temp, fsync, rename); a missing or unreadable file starts empty.
 */
export class ExpiringStore<V> {
  private readonly entries = new Map<string, { until: number; value: V }>();
  private saveTimer: NodeJS.Timeout | undefined;
  private saving: Promise<void> = Promise.resolve();

  constructor(
    private readonly spoolDir: string,
    private readonly name: string,
    private readonly log: Logger,
  ) {
    try {
      const stored = readStateFile(this.path, MAX_FILE_BYTES);
      if (stored !== undefined && (typeof stored !== 'object' || stored === null || Array.isArray(stored))) throw new UnusableStateFile('not a JSON object');
      const now = Date.now();
      // Written oldest first: the last MAX_ENTRIES are the ones to keep.
      const live = Object.entries((stored ?? {}) as Record<string, { until?: unknown; value?: unknown }>).filter(
        ([, entry]) => typeof entry?.until === 'number' && entry.until > now && entry.value !== undefined,
      );
      for (const [key, entry] of live.slice(-MAX_ENTRIES)) this.entries.set(key, entry as { until: number; value: V });
    } catch (error) {
      if (!(error instanceof UnusableStateFile)) throw error;
      log.warn({ event: 'cache_unusable', file: this.path, reason: error.message }, `${name}: ${error.message}; starting empty`);
    }
  }

  private get path(): string {
    return join(this.spoolDir, `${this.name}.json`);
  }

  get size(): number {
    return this.entries.size;
  }

  get(key: string, now = Date.now()): V | undefined {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (entry.until > now) return entry.value;
    this.entries.delete(key);
    return undefined;
  }

  set(key: string, value: V, ttlSeconds: number): void {
    this.entries.delete(key); // re-inserted last: the Map's order is the eviction order
    this.entries.set(key, { until: Date.now() + ttlSeconds * 1000, value });
    if (this.entries.size > MAX_ENTRIES) this.entries.delete(this.entries.keys().next().value!);
    this.saveTimer ??= setTimeout(() => {
      this.saveTimer = undefined;
      this.saving = this.saving.then(() => this.write());
    }, SAVE_DELAY_MS).unref();
  }

  /** Writes the entries now (also at shutdown). */
  async save(): Promise<void> {
    clearTimeout(this.saveTimer);
    this.saveTimer = undefined;
    this.saving = this.saving.then(() => this.write());
    await this.saving;
  }

  /** One atomic write of the live entries; a failure is logged (the cache is an optimisation, not mail). */
  private async write(): Promise<void> {
    const now = Date.now();
    const live = Object.fromEntries([...this.entries].filter(([, entry]) => entry.until > now));
    await writeFileSynced(join(this.spoolDir, 'tmp', `${this.name}.json`), this.path, JSON.stringify(live)).catch((error: unknown) =>
      this.log.warn({ err: error, file: this.path }, `${this.name}: cannot save`),
    );
  }
}
