import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { writeFileSynced } from '../fs/durable.js';
import { readStateText, UnusableStateFile } from '../fs/state-file.js';

/** Entries kept at most (the oldest go first): a flood of new clients cannot grow memory without bound. */
const MAX_ENTRIES = 100_000;
/** Bytes of a cache file at most: twice MAX_ENTRIES (a log is compacted when it doubles) of an address and a primary's reply. */
const MAX_FILE_BYTES = 2 * MAX_ENTRIES * 1024;
/** Changes are written at most this often (a lost last second costs a client one greeting pause, or one probe). */
const SAVE_DELAY_MS = 1000;
/** A log is rewritten with its live entries only once it has this many lines more than them, and at least twice as many. */
const MIN_COMPACTION = 1000;

interface Entry<V> {
  until: number;
  value: V;
}

/**
 * A map whose entries expire, persisted in the spool folder so that it survives restarts
 * (postscreen's cache, verify(8)'s cache). The file is a log, one JSON line per change
 * ({"k","u","v"}), appended once a second: the cost of a write grows with the changes, not
 * with the cache. It is rewritten with the live entries (temp, fsync, rename) once it has
 * twice as many lines as them, so its size stays within twice the cache. Loading keeps the
 * last line of each key, the newest MAX_ENTRIES; a torn last line (a crash) is skipped;
 * a missing or unusable file starts empty.
 */
export class ExpiringStore<V> {
  private readonly entries = new Map<string, Entry<V>>();
  /** Keys changed since the last write. */
  private readonly changed = new Set<string>();
  /** Lines in the file now. */
  private lines = 0;
  private saveTimer: NodeJS.Timeout | undefined;
  private saving: Promise<void> = Promise.resolve();
  /** Bytes written to the file so far (for the benchmark). */
  bytesWritten = 0;

  constructor(
    private readonly spoolDir: string,
    private readonly name: string,
    private readonly log: Logger,
  ) {
    try {
      this.load(readStateText(this.path, MAX_FILE_BYTES) ?? '');
    } catch (error) {
      if (!(error instanceof UnusableStateFile)) throw error;
      log.warn({ event: 'cache_unusable', file: this.path, reason: error.message }, `${name}: ${error.message}; starting empty`);
    }
  }

  private load(text: string): void {
    const now = Date.now();
    const loaded = new Map<string, Entry<V>>();
    const keep = (key: string, until: unknown, value: unknown) => {
      loaded.delete(key); // re-inserted last: the newest line of a key wins, in the order of its last change
      if (typeof until === 'number' && until > now && value !== undefined && value !== null) loaded.set(key, { until, value: value as V });
    };
    const lines = text.split('\n').filter((line) => line.trim() !== '');
    if (lines.length > 0 && !lines[0].startsWith('{"k":')) {
      // One JSON object of key → {until, value}: the file as versions before the log wrote it.
      let stored: unknown;
      try {
        stored = JSON.parse(text);
      } catch {
        throw new UnusableStateFile('not JSON'); // V8's message quotes the text
      }
      if (!stored || typeof stored !== 'object' || Array.isArray(stored)) throw new UnusableStateFile('not a JSON object');
      for (const [key, entry] of Object.entries(stored)) keep(key, (entry as Partial<Entry<V>>)?.until, (entry as Partial<Entry<V>>)?.value);
      this.lines = Number.POSITIVE_INFINITY; // rewritten as a log at the first save
    } else {
      let unreadable = 0;
      for (const line of lines) {
        const record = parseLine(line);
        if (record && typeof record.k === 'string') keep(record.k, record.u, record.v);
        else unreadable++;
      }
      if (unreadable > 1) throw new UnusableStateFile(`${unreadable} lines that are not entries`); // one: the line a crash tore
      this.lines = lines.length;
    }
    for (const [key, entry] of [...loaded].slice(-MAX_ENTRIES)) this.entries.set(key, entry);
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
    this.changed.add(key);
    this.saveTimer ??= setTimeout(() => {
      this.saveTimer = undefined;
      this.saving = this.saving.then(() => this.write());
    }, SAVE_DELAY_MS).unref();
  }

  /** Writes the changes now (also at shutdown). */
  async save(): Promise<void> {
    clearTimeout(this.saveTimer);
    this.saveTimer = undefined;
    this.saving = this.saving.then(() => this.write());
    await this.saving;
  }

  /** Appends the changed entries, or rewrites the file once it has grown to twice the cache; a failure is logged (the cache is an optimisation, not mail). */
  private async write(): Promise<void> {
    const keys = [...this.changed];
    this.changed.clear();
    const now = Date.now();
    const line = (key: string, entry: Entry<V>) => `${JSON.stringify({ k: key, u: entry.until, v: entry.value })}\n`;
    try {
      if (this.lines + keys.length > Math.max(2 * this.entries.size, this.entries.size + MIN_COMPACTION)) {
        const live = [...this.entries].filter(([, entry]) => entry.until > now);
        const text = live.map(([key, entry]) => line(key, entry)).join('');
        await writeFileSynced(join(this.spoolDir, 'tmp', `${this.name}.json`), this.path, text);
        this.lines = live.length;
        this.bytesWritten += Buffer.byteLength(text);
        return;
      }
      const written = keys.flatMap((key) => (this.entries.has(key) ? [line(key, this.entries.get(key)!)] : []));
      const text = written.join('');
      if (!text) return;
      const file = await open(this.path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK, 0o600);
      try {
        if (!(await file.stat()).isFile()) throw new Error('not a regular file');
        await file.write(text);
      } finally {
        await file.close();
      }
      this.lines += written.length;
      this.bytesWritten += Buffer.byteLength(text);
    } catch (error) {
      for (const key of keys) this.changed.add(key); // written with the next batch
      this.log.warn({ err: error, file: this.path }, `${this.name}: cannot save`);
    }
  }
}

function parseLine(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return value && typeof value === 'object' ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
