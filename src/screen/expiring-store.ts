import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { writeFileSynced } from '../fs/durable.js';

/** Entries kept at most (the oldest go first): a flood of new clients cannot grow memory without bound. */
const MAX_ENTRIES = 100_000;
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
      const stored = JSON.parse(readFileSync(this.path, 'utf8')) as Record<string, { until: number; value: V }>;
      const now = Date.now();
      for (const [key, entry] of Object.entries(stored)) if (entry.until > now) this.entries.set(key, entry);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') log.warn({ err: error, file: this.path }, `${name}: unreadable, starting empty`);
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
