import { isIP } from 'node:net';

/** A loopback host by what it is, not by how it starts ("127.attacker.example" is a host name): localhost, 127.0.0.0/8, any spelling of ::1. */
export function isLoopbackHost(host: string): boolean {
  const plain = host.replace(/^\[(.*)\]$/, '$1');
  if (plain.toLowerCase() === 'localhost') return true;
  if (isIP(plain) === 4) return plain.startsWith('127.');
  return isIP(plain) === 6 && ipv6Groups(plain).every((group, i) => group === (i === 7 ? 1 : 0));
}

/** An IPv4-mapped IPv6 address (::ffff:192.0.2.1, as a dual-stack socket reports IPv4 clients) as its IPv4 address; others as they are. */
export function unmapped(address: string): string {
  return /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1] ?? address;
}

/** The eight 16-bit groups of an IPv6 address ("::" expanded, an IPv4 tail converted). */
export function ipv6Groups(address: string): number[] {
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
