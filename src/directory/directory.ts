import type { Logger } from 'pino';
import type { SourceConfig } from '../config/schema.js';
import { buildSnapshot, DirectorySnapshot, type SourceList } from './snapshot.js';
import { readFileSource } from './sources/file.js';

/**
 * The live directory the SMTP policy reads. Replacing the snapshot is a single
 * reference assignment, so a lookup sees either the old or the new list, never a mix.
 */
export class Directory {
  constructor(private snapshot: DirectorySnapshot) {}

  get current(): DirectorySnapshot {
    return this.snapshot;
  }

  replace(next: DirectorySnapshot): void {
    this.snapshot = next;
  }
}

export async function pullSource(source: SourceConfig): Promise<SourceList> {
  switch (source.type) {
    case 'file':
      return readFileSource(source.path);
  }
}

/** Pulls every source and merges them; any failing source fails the whole load. */
export async function loadSnapshot(sources: readonly SourceConfig[], log: Logger): Promise<DirectorySnapshot> {
  const lists = [];
  for (const source of sources) lists.push({ name: source.name, list: await pullSource(source) });
  const snapshot = buildSnapshot(lists);
  for (const conflict of snapshot.conflicts) {
    log.warn(conflict, `domain ${conflict.domain} is listed by ${conflict.keptBy} and ${conflict.claimedBy}: ${conflict.keptBy} (listed first) keeps it`);
  }
  const unchecked = snapshot.uncheckedDomains();
  if (unchecked.length > 0) {
    log.warn(
      { domains: unchecked.slice(0, 20), count: unchecked.length },
      'domains with no address list accept any local part: no recipient check, backscatter risk',
    );
  }
  log.info({ domains: snapshot.domainCount, addresses: snapshot.addressCount }, 'directory loaded');
  return snapshot;
}
