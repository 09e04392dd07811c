import { Resolver } from 'node:dns/promises';

/** The domain cannot receive mail at all (no such domain, null MX): a permanent failure. */
export class NoMailDomain extends Error {}

export interface MailHost {
  /** The exchange name (for TLS SNI and logs). */
  name: string;
  address: string;
}

/**
 * Where mail for `domain` goes (RFC 5321 §5.1): its MX hosts by preference, or the
 * domain itself (A/AAAA) when it has no MX record. Names are resolved with the same
 * resolver, so `dns.servers` decides everything.
 */
export async function mailHosts(domain: string, servers: readonly string[] | undefined): Promise<MailHost[]> {
  const resolver = new Resolver({ timeout: 5000, tries: 2 });
  if (servers) resolver.setServers(servers);
  let exchanges: string[];
  try {
    const records = await resolver.resolveMx(domain);
    if (records.some((r) => r.exchange === '' || r.exchange === '.')) throw new NoMailDomain(`${domain} publishes a null MX (RFC 7505)`);
    exchanges = records.sort((a, b) => a.priority - b.priority).map((r) => r.exchange);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (error instanceof NoMailDomain) throw error;
    if (code === 'ENOTFOUND') throw new NoMailDomain(`${domain}: no such domain`);
    if (code !== 'ENODATA') throw error;
    exchanges = [domain];
  }
  const hosts: MailHost[] = [];
  for (const name of exchanges) {
    for (const lookup of [resolver.resolve4.bind(resolver), resolver.resolve6.bind(resolver)]) {
      const addresses = await lookup(name).catch(() => [] as string[]);
      hosts.push(...addresses.map((address) => ({ name, address })));
    }
  }
  return hosts;
}
