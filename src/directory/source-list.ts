import { normalizeDomain, normalizeLocalPart } from './names.js';
import type { DomainEntry, SourceList } from './snapshot.js';

/** A pull that cannot be used: the source keeps its previous data. */
export class SourceError extends Error {}

/**
 * Collects what a source says, validating every name on the way in: one bad
 * domain or address rejects the whole pull (the alternc-slavedns rule).
 */
export class SourceListBuilder {
  private readonly list = new Map<string, DomainEntry>();

  /** A domain; it accepts any local part unless addresses or a catch-all are added. */
  domain(raw: string): DomainEntry {
    const domain = normalizeDomain(raw);
    if (!domain) throw new SourceError(`not a valid domain: ${JSON.stringify(raw)}`);
    let entry = this.list.get(domain);
    if (!entry) {
      entry = { recipientCheck: false, catchAll: false, localParts: new Set() };
      this.list.set(domain, entry);
    }
    return entry;
  }

  /** A domain whose recipients are checked (it accepts nothing until addresses are added). */
  checkedDomain(raw: string): DomainEntry {
    const entry = this.domain(raw);
    entry.recipientCheck = true;
    return entry;
  }

  address(local: string, domain: string): void {
    const key = normalizeLocalPart(local);
    if (!key) throw new SourceError(`not a valid local part: ${JSON.stringify(`${local}@${domain}`)}`);
    this.checkedDomain(domain).localParts.add(key);
  }

  catchAll(domain: string): void {
    this.checkedDomain(domain).catchAll = true;
  }

  build(): SourceList {
    if (this.list.size === 0) throw new SourceError('empty result: no domain at all');
    return this.list;
  }
}
