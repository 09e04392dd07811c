import { normalizeDomain, normalizeLocalPart } from './names.js';
import type { DomainEntry, SourceList } from './snapshot.js';

/** A pull that cannot be used: the source keeps its previous data. */
export class SourceError extends Error {}

/** A pull that found no domain at all (refused: it would empty the directory). */
export class EmptySourceError extends SourceError {}

/** What a pull gives: the list, and the rows it left out (each named, with the reason). */
export interface Pulled {
  list: SourceList;
  skipped: readonly string[];
  /** What the source could not read, though the pull is usable (a missing optional grant). */
  warnings?: readonly string[];
}

/**
 * Collects what a source says, validating every name on the way in. A row that is
 * not valid is left out and reported (one bad row in AlternC must not freeze the
 * whole source, with new domains refused meanwhile); an empty result is refused.
 */
export class SourceListBuilder {
  private readonly list = new Map<string, DomainEntry>();
  private readonly skipped: string[] = [];

  /** A domain; it accepts any local part unless addresses or a catch-all are added. Undefined when it is not valid (skipped). */
  domain(raw: string, where = JSON.stringify(raw)): DomainEntry | undefined {
    const domain = normalizeDomain(raw);
    if (!domain) return this.skip(where, 'not a valid domain');
    let entry = this.list.get(domain);
    if (!entry) {
      entry = { recipientCheck: false, catchAll: false, localParts: new Set() };
      this.list.set(domain, entry);
    }
    return entry;
  }

  /** A domain whose recipients are checked (it accepts nothing until addresses are added). */
  checkedDomain(raw: string, where?: string): DomainEntry | undefined {
    const entry = this.domain(raw, where);
    if (entry) entry.recipientCheck = true;
    return entry;
  }

  address(local: string, domain: string, where = JSON.stringify(`${local}@${domain}`)): void {
    const key = normalizeLocalPart(local);
    if (!key) return void this.skip(where, 'not a valid local part');
    this.checkedDomain(domain, where)?.localParts.add(key);
  }

  catchAll(domain: string, where?: string): void {
    const entry = this.checkedDomain(domain, where);
    if (entry) entry.catchAll = true;
  }

  /** A row left out, with why. */
  skip(where: string, reason: string): undefined {
    this.skipped.push(`${reason}: ${where}`);
    return undefined;
  }

  build(): Pulled {
    if (this.list.size === 0)
      throw new EmptySourceError(`empty result: no domain at all${this.skipped.length ? ` (${this.skipped.length} rows not valid: ${this.skipped[0]})` : ''}`);
    return { list: this.list, skipped: this.skipped };
  }
}
