import { buildSnapshot, type DirectorySnapshot } from './snapshot.js';

/**
 * The live directory the SMTP policy reads. Replacing the snapshot is a single
 * reference assignment, so a lookup sees either the old or the new list, never a mix.
 */
export class Directory {
  constructor(private snapshot: DirectorySnapshot = buildSnapshot([])) {}

  get current(): DirectorySnapshot {
    return this.snapshot;
  }

  replace(next: DirectorySnapshot): void {
    this.snapshot = next;
  }
}
