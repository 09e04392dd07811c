/** What one source says about one domain. */
export interface DomainEntry {
  /** false: the source knows no addresses, any local part is accepted. */
  recipientCheck: boolean;
  /** An `@domain` entry: any local part is accepted. */
  catchAll: boolean;
  /** Lowercase local parts. */
  localParts: Set<string>;
}

/** The result of pulling one source: domain (normalized) → entry. Never modified once built. */
export type SourceList = ReadonlyMap<string, DomainEntry>;

export interface Conflict {
  domain: string;
  keptBy: string;
  claimedBy: string;
}

export type Lookup = { verdict: 'accept'; source: string; recipientCheck: boolean } | { verdict: 'unknown-domain' } | { verdict: 'unknown-address' };

interface Owner {
  source: string;
  entry: DomainEntry;
}

/**
 * An immutable view of what mail this MX accepts: two hash probes per lookup. It
 * shares the source lists it was built from (no copy of a million addresses), and
 * a sync builds a new snapshot and swaps the reference, never edits one in place.
 */
export class DirectorySnapshot {
  readonly addressCount: number;

  constructor(
    private readonly domains: ReadonlyMap<string, Owner>,
    readonly conflicts: readonly Conflict[],
    /** Configured sources with no data yet: their domains are unknown, not absent. */
    readonly missingSources: readonly string[],
  ) {
    let addresses = 0;
    for (const { entry } of domains.values()) addresses += addressesOf(entry);
    this.addressCount = addresses;
  }

  /** `local` lowercased, `domain` normalized (see names.ts). */
  lookup(local: string, domain: string): Lookup {
    const owner = this.domains.get(domain);
    if (!owner) return { verdict: 'unknown-domain' };
    const { entry } = owner;
    if (entry.recipientCheck && !entry.catchAll && !entry.localParts.has(local)) return { verdict: 'unknown-address' };
    return { verdict: 'accept', source: owner.source, recipientCheck: entry.recipientCheck };
  }

  /** True when every configured source has data: an unknown domain is then really not ours. */
  get complete(): boolean {
    return this.missingSources.length === 0;
  }

  get domainCount(): number {
    return this.domains.size;
  }

  /** Domains that accept any local part because no address is known for them. */
  uncheckedDomains(): string[] {
    return [...this.domains].filter(([, owner]) => !owner.entry.recipientCheck).map(([domain]) => domain);
  }
}

/**
 * Merges source lists in config order: a domain belongs to the first source that
 * lists it. A source without a list (never pulled successfully) is recorded as missing.
 */
export function buildSnapshot(sources: ReadonlyArray<{ name: string; list: SourceList | undefined }>): DirectorySnapshot {
  const domains = new Map<string, Owner>();
  const conflicts: Conflict[] = [];
  const missing: string[] = [];
  for (const { name, list } of sources) {
    if (!list) {
      missing.push(name);
      continue;
    }
    for (const [domain, entry] of list) {
      const owner = domains.get(domain);
      if (owner) conflicts.push({ domain, keptBy: owner.source, claimedBy: name });
      else domains.set(domain, { source: name, entry });
    }
  }
  return new DirectorySnapshot(domains, conflicts, missing);
}

/** Domains and addresses (catch-alls included) of one list, for the shrink guard and reports. */
export function countList(list: SourceList): { domains: number; addresses: number } {
  let addresses = 0;
  for (const entry of list.values()) addresses += addressesOf(entry);
  return { domains: list.size, addresses };
}

function addressesOf(entry: DomainEntry): number {
  return entry.localParts.size + (entry.catchAll ? 1 : 0);
}
