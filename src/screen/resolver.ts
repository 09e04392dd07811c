import { Resolver } from 'node:dns/promises';
import type { DNSResolver } from 'mailauth';

/** DNS queries the edge screens make (SPF, DKIM, DMARC, DNS lists): `dns.servers`, or the system's resolvers. */
export function screenResolver(servers: readonly string[] | undefined, timeoutSeconds: number): Resolver {
  // c-ares doubles the timeout at each try: two tries stay within about three times the setting.
  const resolver = new Resolver({ timeout: Math.max(1, Math.round(timeoutSeconds * 1000)), tries: 2 });
  if (servers) resolver.setServers(servers);
  return resolver;
}

/** Answers kept this long when the record type gives no TTL (TXT): the SPF of MAIL FROM is asked again after DATA. */
const ANSWER_LIFETIME_MS = 60_000;
const MAX_ANSWERS = 10_000;
const FAILURE_LIFETIME_MS = 5_000;

/**
 * mailauth's `resolver` option (dns.promises.resolve's signature) over `resolver`,
 * with answers and "no such record" kept a minute, so one message costs one query per name.
 */
export function cachingResolve(resolver: Resolver): DNSResolver {
  const answers = new Map<string, { until: number; result: ReturnType<DNSResolver> }>();
  return (name, type) => {
    const key = `${type} ${name.toLowerCase()}`;
    const now = Date.now();
    const kept = answers.get(key);
    if (kept && kept.until > now) return kept.result;
    if (answers.size >= MAX_ANSWERS) answers.clear();
    const result = resolver.resolve(name, type as 'TXT') as ReturnType<DNSResolver>; // MX and A answers too, whatever mailauth's type says
    const entry = { until: now + ANSWER_LIFETIME_MS, result };
    answers.set(key, entry);
    // A timeout or SERVFAIL is not an answer: kept only a few seconds (RFC 2308 §7 allows
    // up to five minutes), so that a resolver outage costs one query per name, not per message.
    result.catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOTFOUND' && error.code !== 'ENODATA') entry.until = Date.now() + FAILURE_LIFETIME_MS;
    });
    return result;
  };
}
