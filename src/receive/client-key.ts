import { isIPv6 } from 'node:net';
import { ipv6Groups, unmapped } from '../net/ip.js';

/**
 * What one "client" is for the per-client connection limit: an IPv4 address, or the
 * IPv6 network of `prefix` bits around an address (one /64 is one subscriber, and
 * holds 2^64 addresses: counting them one by one would limit nothing), as Postfix's
 * smtpd_client_ipv6_prefix_length does for its client limits. IPv4-mapped IPv6
 * addresses count as their IPv4 address.
 */
export function clientKey(address: string, prefix: number): string {
  const plain = unmapped(address);
  if (!isIPv6(plain)) return plain;
  const groups = ipv6Groups(plain);
  const bits = groups
    .map((group) => group.toString(2).padStart(16, '0'))
    .join('')
    .slice(0, prefix)
    .padEnd(128, '0');
  const network = Array.from({ length: 8 }, (_, i) => parseInt(bits.slice(i * 16, i * 16 + 16), 2).toString(16)).join(':');
  return `${network}/${prefix}`;
}
