import { Resolver } from 'node:dns/promises';
import { BlockList, isIPv4 } from 'node:net';
import { unmapped } from '../net/ip.js';

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

/** Networks that are not the public internet: loopback, private, link-local, CGNAT, unique-local, unspecified. */
const INTERNAL = new BlockList();
for (const [network, bits] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.168.0.0', 16],
] as const) {
  INTERNAL.addSubnet(network, bits, 'ipv4');
}
for (const [network, bits] of [
  ['::', 127],
  ['fc00::', 7],
  ['fe80::', 10],
  ['::ffff:0:0', 96],
] as const)
  INTERNAL.addSubnet(network, bits, 'ipv6');

/** Whether an address is on an internal network: a sender domain whose MX points there must not get our DSNs (a probe of the inside). */
export function isInternalAddress(address: string): boolean {
  const plain = unmapped(address);
  return INTERNAL.check(plain, isIPv4(plain) ? 'ipv4' : 'ipv6');
}
