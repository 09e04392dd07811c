/** What one source says about one domain. */
export interface DomainEntry {
  /** false: the source knows no addresses, any local part is accepted. */
  recipientCheck: boolean;
  /** An `@domain` entry: any local part is accepted. */
  catchAll: boolean;
  /** Lowercase local parts. */
  localParts: Set<string>;
}

/** The result of pulling one source: domain (normalized) → entry. */
export type SourceList = Map<string, DomainEntry>;

export interface DomainPolicy {
  source: string;
  recipientCheck: boolean;
  catchAll: boolean;
}

export interface Conflict {
  domain: string;
  keptBy: string;
  claimedBy: string;
}

export type Lookup =
  | { verdict: 'accept'; source: string; recipientCheck: boolean }
  | { verdict: 'unknown-domain' }
  | { verdict: 'unknown-address' };

/**
 * An immutable view of what mail this MX accepts. Lookups are two hash probes;
 * a sync builds a new snapshot and swaps the reference, never edits one in place.
 */
export class DirectorySnapshot {
  constructor(
    private readonly domains: ReadonlyMap<string, DomainPolicy>,
    /** "local@domain", both normalized. */
    private readonly addresses: ReadonlySet<string>,
    readonly conflicts: readonly Conflict[] = [],
  ) {}

  /** `local` lowercased, `domain` normalized (see names.ts). */
  lookup(local: string, domain: string): Lookup {
    const policy = this.domains.get(domain);
    if (!policy) return { verdict: 'unknown-domain' };
    const accepted = !policy.recipientCheck || policy.catchAll || this.addresses.has(`${local}@${domain}`);
    if (!accepted) return { verdict: 'unknown-address' };
    return { verdict: 'accept', source: policy.source, recipientCheck: policy.recipientCheck };
  }

  get domainCount(): number {
    return this.domains.size;
  }

  get addressCount(): number {
    return this.addresses.size;
  }

  /** Domains that accept any local part because no address is known for them. */
  uncheckedDomains(): string[] {
    return [...this.domains].filter(([, policy]) => !policy.recipientCheck).map(([domain]) => domain);
  }
}

/** Merges source lists in config order: a domain belongs to the first source that lists it. */
export function buildSnapshot(sources: ReadonlyArray<{ name: string; list: SourceList }>): DirectorySnapshot {
  const domains = new Map<string, DomainPolicy>();
  const addresses = new Set<string>();
  const conflicts: Conflict[] = [];
  for (const { name, list } of sources) {
    for (const [domain, entry] of list) {
      const owner = domains.get(domain);
      if (owner) {
        conflicts.push({ domain, keptBy: owner.source, claimedBy: name });
        continue;
      }
      domains.set(domain, { source: name, recipientCheck: entry.recipientCheck, catchAll: entry.catchAll });
      for (const local of entry.localParts) addresses.add(`${local}@${domain}`);
    }
  }
  return new DirectorySnapshot(domains, addresses, conflicts);
}
