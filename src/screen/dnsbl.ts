import type { Resolver } from 'node:dns/promises';
import { isIPv4, isIPv6 } from 'node:net';
import { ipv6Groups, unmapped } from '../net/ip.js';

/** One entry of postscreen_dnsbl_sites: `domain[=filter][*weight]`. */
export interface DnsblSite {
  domain: string;
  /** Per octet of the reply address, the values that count (absent: any reply counts). */
  filter?: Array<(octet: number) => boolean>;
  weight: number;
  /** As written, for logs and metric labels. */
  spec: string;
}

const SITE = /^([A-Za-z0-9_.-]+?)(?:=([0-9.[\];]+))?(?:\*(-?\d+))?$/;

/**
 * Parses Postfix's syntax: `zen.spamhaus.org*3`, `list.dnswl.org=127.0.[0..255].[1..3]*-2`,
 * `b.barracudacentral.org=127.0.0.2`; an octet is a number or `[a;b..c]` (numbers and ranges).
 */
export function parseDnsblSite(spec: string): DnsblSite | undefined {
  const match = SITE.exec(spec.trim());
  if (!match) return undefined;
  const [, domain, filterText, weightText] = match;
  let filter: DnsblSite['filter'];
  if (filterText !== undefined) {
    const octets = filterText.split(/\.(?![^[]*\])/);
    if (octets.length !== 4) return undefined;
    filter = [];
    for (const octet of octets) {
      const test = octetTest(octet);
      if (!test) return undefined;
      filter.push(test);
    }
  }
  return { domain: domain.toLowerCase().replace(/\.$/, ''), filter, weight: weightText === undefined ? 1 : Number(weightText), spec: spec.trim() };
}

function octetTest(text: string): ((octet: number) => boolean) | undefined {
  const plain = /^\d{1,3}$/.test(text);
  const listed = /^\[([\d.;]+)\]$/.exec(text);
  if (!plain && !listed) return undefined;
  const parts = plain ? [text] : listed![1].split(';');
  const ranges: Array<[number, number]> = [];
  for (const part of parts) {
    const range = /^(\d{1,3})(?:\.\.(\d{1,3}))?$/.exec(part);
    if (!range) return undefined;
    const low = Number(range[1]);
    const high = Number(range[2] ?? range[1]);
    if (low > 255 || high > 255 || low > high) return undefined;
    ranges.push([low, high]);
  }
  return (octet) => ranges.some(([low, high]) => octet >= low && octet <= high);
}

/** The name to look up for `address` under a list: reversed octets (IPv4) or nibbles (IPv6, RFC 5782). */
export function dnsblQueryName(address: string, domain: string): string | undefined {
  const ip = unmapped(address);
  if (isIPv4(ip)) return `${ip.split('.').reverse().join('.')}.${domain}`;
  if (!isIPv6(ip)) return undefined;
  const nibbles = ipv6Groups(ip)
    .map((group) => group.toString(16).padStart(4, '0'))
    .join('');
  return `${[...nibbles].reverse().join('.')}.${domain}`;
}

export interface DnsblVerdict {
  score: number;
  /** The sites that listed the client (their spec), for the log line. */
  listedBy: string[];
}

/** Answers kept at least this long and at most this long, whatever the TTL says. */
const MIN_TTL_S = 10;
const MAX_TTL_S = 3600;
/** "Not listed" (NXDOMAIN) is kept this long: node's resolver does not give the negative TTL. */
const NOT_LISTED_TTL_S = 300;
const MAX_CACHED = 50_000;

/** What a list's answer says (RFC 5782 §2.1: a listing is an address in 127.0.0.0/8). */
type Answer = 'listed' | 'not-listed' | 'list-error';

/**
 * 127.255.255.252–255: not a listing but the list saying it refuses the query (Spamhaus:
 * 254 "query through a public resolver", 255 "excessive queries", 252 "typo in the name").
 */
function isListError(octets: readonly number[]): boolean {
  return octets[0] === 127 && octets[1] === 255 && octets[2] === 255 && octets[3] >= 252;
}

/** What the sites' error answers are told to (a log line the first time, a metric each time). */
export interface DnsblEvents {
  listError(site: DnsblSite, reply: string, first: boolean): void;
}

/**
 * Scores clients against DNS lists (postscreen's dnsbl test): every site is queried in
 * parallel, each site that lists the client (with a reply in 127.0.0.0/8 that its filter
 * accepts) adds its weight once. Answers are cached by their TTL. One deadline for all the
 * lists: a site that has not answered by then counts as not listing (a list outage must not
 * block mail, nor delay every greeting). A list's error answers list nobody.
 */
export class DnsblScreen {
  private readonly cache = new Map<string, { until: number; replies: Promise<string[]> }>();
  /** Sites whose last answer was an error code: logged once until they answer properly. */
  private readonly broken = new Set<string>();

  constructor(
    private readonly sites: readonly DnsblSite[],
    private readonly resolver: Resolver,
    /** Milliseconds score() waits for all the lists together. */
    private readonly deadlineMs: number,
    private readonly events?: DnsblEvents,
  ) {}

  get enabled(): boolean {
    return this.sites.length > 0;
  }

  /** Starts the lookups for a client now (during its greeting pause); score() then finds them under way or done. */
  prefetch(address: string): void {
    for (const site of this.sites) {
      const name = dnsblQueryName(address, site.domain);
      if (name) this.cache.set(name, this.entry(name)); // replies() of a fresh entry never rejects
    }
  }

  async score(address: string): Promise<DnsblVerdict> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), this.deadlineMs)));
    try {
      const results = await Promise.all(this.sites.map(async (site) => ({ site, listed: await Promise.race([this.lists(site, address), deadline]) })));
      const listed = results.filter((result) => result.listed).map((result) => result.site);
      return { score: listed.reduce((sum, site) => sum + site.weight, 0), listedBy: listed.map((site) => site.spec) };
    } finally {
      clearTimeout(timer);
    }
  }

  private async lists(site: DnsblSite, address: string): Promise<boolean> {
    const name = dnsblQueryName(address, site.domain);
    if (!name) return false;
    const answers = (await this.replies(name)).map((reply) => ({ reply, answer: this.judge(site, reply) }));
    const error = answers.find(({ answer }) => answer === 'list-error');
    if (error) {
      this.events?.listError(site, error.reply, !this.broken.has(site.spec));
      this.broken.add(site.spec);
    } else this.broken.delete(site.spec);
    return answers.some(({ answer }) => answer === 'listed');
  }

  private judge(site: DnsblSite, reply: string): Answer {
    const octets = reply.split('.').map(Number);
    if (octets[0] !== 127) return 'not-listed'; // 8.8.8.8, 10.1.2.3: a wildcard or a hijacked zone, not a listing
    if (isListError(octets)) return 'list-error';
    return !site.filter || site.filter.every((test, i) => test(octets[i])) ? 'listed' : 'not-listed';
  }

  private replies(name: string): Promise<string[]> {
    const entry = this.entry(name);
    this.cache.set(name, entry);
    return entry.replies;
  }

  /** The cached lookup, else a new one: kept for its TTL, "not listed" for NOT_LISTED_TTL_S, no answer at all not kept. */
  private entry(name: string): { until: number; replies: Promise<string[]> } {
    const cached = this.cache.get(name);
    if (cached && cached.until > Date.now()) return cached;
    if (this.cache.size >= MAX_CACHED) this.cache.clear();
    const entry = { until: Date.now() + MIN_TTL_S * 1000, replies: Promise.resolve<string[]>([]) };
    entry.replies = this.resolver.resolve4(name, { ttl: true }).then(
      (records) => {
        const ttl = Math.min(MAX_TTL_S, Math.max(MIN_TTL_S, ...records.map((record) => record.ttl)));
        entry.until = Date.now() + ttl * 1000;
        return records.map((record) => record.address);
      },
      (error: NodeJS.ErrnoException) => {
        const notListed = error.code === 'ENOTFOUND' || error.code === 'ENODATA';
        entry.until = notListed ? Date.now() + NOT_LISTED_TTL_S * 1000 : 0; // no answer at all: ask again next time
        return [];
      },
    );
    return entry;
  }
}
