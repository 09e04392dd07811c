import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { DirectorySync, writeFileSynced } from '../spool/durable.js';
import { newQueueId } from '../spool/queue-id.js';
import type { DomainEntry, SourceList } from './snapshot.js';

/** What `status` shows about a source, persisted so that it survives restarts. */
export interface SourceState {
  type: string;
  /** ISO times; absent when it never happened. */
  lastAttempt?: string;
  lastSuccess?: string;
  /** Why the last attempt was not applied; absent after a success. */
  lastError?: string;
  /** The data in use. */
  domains: number;
  addresses: number;
}

const RECIPIENT_CHECK = 1;
const CATCH_ALL = 2;
type StoredDomain = [domain: string, flags: number, localParts: string[]];

/**
 * The last good list of every source, under <spool>/directory/: <source>.json holds
 * the data (rewritten only when a pull is applied), state.json the sync history.
 * Writes go to a unique temp name, are fsynced, renamed, and the folder fsynced.
 */
export class DirectoryStore {
  private readonly folderSync: DirectorySync;

  constructor(readonly root: string) {
    this.folderSync = new DirectorySync(root);
  }

  async ensure(): Promise<void> {
    await mkdir(this.root, { recursive: true, mode: 0o700 });
  }

  /** Temp files of writes a crash interrupted; only the daemon, holding the spool lock, calls this. */
  async removeLeftovers(): Promise<void> {
    const names = await readdir(this.root);
    await Promise.all(names.filter((name) => name.endsWith('.tmp')).map((name) => rm(join(this.root, name), { force: true })));
  }

  /** The persisted list of a source; undefined when there is none. Throws when unreadable. */
  async loadList(source: string): Promise<SourceList | undefined> {
    let text: string;
    try {
      text = await readFile(this.listFile(source), 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
    const stored = JSON.parse(text) as { version: number; domains: StoredDomain[] };
    if (stored.version !== 1 || !Array.isArray(stored.domains)) throw new Error(`${this.listFile(source)}: unknown format`);
    const list = new Map<string, DomainEntry>();
    for (const [domain, flags, localParts] of stored.domains) {
      list.set(domain, { recipientCheck: (flags & RECIPIENT_CHECK) !== 0, catchAll: (flags & CATCH_ALL) !== 0, localParts: new Set(localParts) });
    }
    return list;
  }

  async saveList(source: string, list: SourceList): Promise<void> {
    const domains: StoredDomain[] = [];
    for (const [domain, entry] of list) {
      domains.push([domain, (entry.recipientCheck ? RECIPIENT_CHECK : 0) | (entry.catchAll ? CATCH_ALL : 0), [...entry.localParts]]);
    }
    await this.write(this.listFile(source), JSON.stringify({ version: 1, domains }));
  }

  async loadState(): Promise<Record<string, SourceState>> {
    try {
      return (JSON.parse(await readFile(join(this.root, 'state.json'), 'utf8')) as { sources: Record<string, SourceState> }).sources;
    } catch {
      return {}; // no history yet, or unreadable: it is only history
    }
  }

  async saveState(sources: Record<string, SourceState>): Promise<void> {
    await this.write(join(this.root, 'state.json'), JSON.stringify({ version: 1, sources }));
  }

  private listFile(source: string): string {
    return join(this.root, `${source}.json`);
  }

  private async write(target: string, data: string): Promise<void> {
    await writeFileSynced(`${target}.${newQueueId()}.tmp`, target, data);
    await this.folderSync.sync();
  }
}
