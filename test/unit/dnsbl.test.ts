import assert from 'node:assert/strict';
import { dnsblQueryName, parseDnsblSite } from '../../src/screen/dnsbl.js';

describe('DNS lists: postscreen_dnsbl_sites syntax and query names', () => {
  it('parses weights, filters with ranges and lists, and refuses what Postfix would not take', () => {
    const zen = parseDnsblSite('zen.spamhaus.org*3')!;
    assert.deepEqual([zen.domain, zen.weight, zen.filter], ['zen.spamhaus.org', 3, undefined]);
    const dnswl = parseDnsblSite('list.dnswl.org=127.0.[0..255].[1..3]*-2')!;
    assert.equal(dnswl.weight, -2);
    const matches = (reply: string) => dnswl.filter!.every((test, i) => test(Number(reply.split('.')[i])));
    assert.deepEqual(['127.0.10.1', '127.0.255.3', '127.0.10.0', '127.0.10.4', '127.1.10.2'].map(matches), [true, true, false, false, false]);
    const listed = parseDnsblSite('b.barracudacentral.org=127.0.0.[2;4..5]')!;
    assert.equal(listed.weight, 1);
    assert.deepEqual(
      [2, 3, 4, 5, 6].map((octet) => listed.filter![3](octet)),
      [true, false, true, true, false],
    );
    for (const bad of ['', 'zen.spamhaus.org*x', 'x.org=127.0.0', 'x.org=127.0.0.[3..1]', 'x.org=127.0.0.256', 'x.org=127.0.0.[1..300]'])
      assert.equal(parseDnsblSite(bad), undefined, bad);
  });

  it('reverses IPv4 octets and IPv6 nibbles (RFC 5782), IPv4-mapped addresses as IPv4', () => {
    assert.equal(dnsblQueryName('192.0.2.99', 'bl.test'), '99.2.0.192.bl.test');
    assert.equal(dnsblQueryName('::ffff:192.0.2.99', 'bl.test'), '99.2.0.192.bl.test');
    assert.equal(dnsblQueryName('2001:db8::1:2', 'bl.test'), '2.0.0.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test');
    assert.equal(dnsblQueryName('not an address', 'bl.test'), undefined);
  });
});
