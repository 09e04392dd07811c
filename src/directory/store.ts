import { mkdir, open, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { DirectorySync, writeFileSynced } from '../fs/durable.js';
import { randomBytes } from 'node:crypto';
import type { DomainEntry, SourceList } from './snapshot.js';

/** What `status` shows about a source, persisted so that it survives restarts. */
export interface SourceState {
  type: string;
  /** ISO times; absent when it never happened. */
  lastAttempt?: string;
  lastSuccess?: string;
  /** Why the last attempt was not applied; absent after a success. */
  lastError?: string;
  /** Removals the shrink guard holds back (the rest of the pull applied); absent when none. */
  held?: string;
  /** Rows of the last pull left out as not valid. */
  skipped?: number;
  /** The data in use. */
  domains: number;
  addresses: number;
}

const LIST_HEADER = 'secondarymx-directory 1';
const LIST_END = '# end';

/**
 * The last good list of every source, under <spool>/directory/: <source>.list holds
 * the data (rewritten only when a pull is applied, streamed line by line so a million
 * addresses are never one string), state.json the sync history.
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
    const file = this.listFile(source);
    let handle;
    try {
      handle = await open(file, 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
    const list = new Map<string, DomainEntry>();
    let lineNumber = 0;
    let complete = false;
    try {
      for await (const line of handle.readLines({ encoding: 'utf8' })) {
        lineNumber++;
        if (lineNumber === 1) {
          if (line !== LIST_HEADER) throw new Error(`${file}: not a ${LIST_HEADER} file`);
          continue;
        }
        if (line === LIST_END) {
          complete = true;
          break;
        }
        const [domain, flags, ...localParts] = line.split(' ');
        list.set(domain, { recipientCheck: flags.includes('r'), catchAll: flags.includes('c'), localParts: new Set(localParts) });
      }
    } finally {
      await handle.close();
    }
    if (!complete) throw new Error(`${file}: truncated (no end marker after line ${lineNumber})`);
    return list;
  }

  /** One line a domain: "<domain> <flags> <local> <local> …"; neither contains a space. */
  async saveList(source: string, list: SourceList): Promise<void> {
    function* lines(): Iterable<string> {
      let chunk = `${LIST_HEADER}\n`;
      for (const [domain, entry] of list) {
        const flags = `-${entry.recipientCheck ? 'r' : ''}${entry.catchAll ? 'c' : ''}`;
        chunk += entry.localParts.size > 0 ? `${domain} ${flags} ${[...entry.localParts].join(' ')}\n` : `${domain} ${flags}\n`;
        if (chunk.length > 65536) {
          yield chunk;
          chunk = '';
        }
      }
      yield `${chunk}${LIST_END}\n`;
    }
    await this.write(this.listFile(source), lines());
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
    return join(this.root, `${source}.list`);
  }

  private async write(target: string, data: string | Iterable<string>): Promise<void> {
    await writeFileSynced(`${target}.${randomBytes(6).toString('hex')}.tmp`, target, data);
    await this.folderSync.sync();
  }
}

/** The store of a spool: its directory/ folder. */
export function directoryStore(spoolRoot: string): DirectoryStore {
  return new DirectoryStore(join(spoolRoot, 'directory'));
}
