import { isIPv6 } from 'node:net';

/**
 * What one "client" is for the per-client connection limit: an IPv4 address, or the
 * IPv6 network of `prefix` bits around an address (one /64 is one subscriber, and
 * holds 2^64 addresses: counting them one by one would limit nothing), as Postfix's
 * smtpd_client_ipv6_prefix_length does for its client limits. IPv4-mapped IPv6
 * addresses count as their IPv4 address.
 */
export function clientKey(address: string, prefix: number): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1];
  if (mapped) return mapped;
  if (!isIPv6(address)) return address;
  const groups = expand(address);
  const bits = groups
    .map((group) => group.toString(2).padStart(16, '0'))
    .join('')
    .slice(0, prefix)
    .padEnd(128, '0');
  const network = Array.from({ length: 8 }, (_, i) => parseInt(bits.slice(i * 16, i * 16 + 16), 2).toString(16)).join(':');
  return `${network}/${prefix}`;
}

/** The eight 16-bit groups of an IPv6 address ("::" expanded, an IPv4 tail converted). */
function expand(address: string): number[] {
  let text = address.split('%')[0];
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4.slice(1).map(Number);
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.split('::');
  const parts = (part: string | undefined) => (part ? part.split(':').map((group) => parseInt(group, 16)) : []);
  const left = parts(head);
  const right = tail === undefined ? [] : parts(tail);
  return [...left, ...Array<number>(8 - left.length - right.length).fill(0), ...right];
}
