import assert from 'node:assert/strict';
import { normalizeDomain, normalizeLocalPart } from '../src/directory/names.js';
import { buildSnapshot } from '../src/directory/snapshot.js';
import { SourceError } from '../src/directory/source-list.js';
import { parseDomainList } from '../src/directory/sources/file.js';

describe('directory: file source', () => {
  it('reads domains, addresses and catch-alls, ignoring comments and blank lines', () => {
    const list = parseDomainList(
      ['# comment', '', 'Example.ORG   # trailing comment', 'Alice@Example.org', '@catch.example', '  open.example  ', 'bob@implied.example'].join('\n'),
      'list.txt',
    ).list;
    assert.deepEqual([...list.keys()].sort(), ['catch.example', 'example.org', 'implied.example', 'open.example']);
    assert.deepEqual(list.get('example.org'), { recipientCheck: true, catchAll: false, localParts: new Set(['alice']) });
    assert.deepEqual(list.get('catch.example'), { recipientCheck: true, catchAll: true, localParts: new Set() });
    assert.deepEqual(list.get('open.example'), { recipientCheck: false, catchAll: false, localParts: new Set() });
    assert.equal(list.get('implied.example')?.recipientCheck, true);
  });

  it('converts IDNs to punycode', () => {
    const list = parseDomainList('bücher.example\nüser@bücher.example\n', 'list.txt').list;
    assert.deepEqual([...list.keys()], ['xn--bcher-kva.example']);
    assert.deepEqual([...list.get('xn--bcher-kva.example')!.localParts], ['üser']);
  });

  const badLines: Array<[string, RegExp]> = [
    ['two words.example here', /one entry per line expected/],
    ['localhost', /not a valid domain/],
    ['example..org', /not a valid domain/],
    ['example.org.', /not a valid domain/],
    ['[127.0.0.1]', /not a valid domain/],
    ['192.168.0.1', /not a valid domain/],
    ['-bad.example', /not a valid domain/],
    ['user@', /not a valid domain/],
    ['a@b@example.org', /not a valid address/],
    ['.alice@example.org', /not a valid local part/],
    [`${'a'.repeat(65)}@example.org`, /not a valid local part/],
    ['@', /not a valid domain/],
    [`${'a'.repeat(64)}.example`, /not a valid domain/],
  ];
  for (const [line, why] of badLines) {
    it(`leaves out the line ${JSON.stringify(line)}, naming file and line, and keeps the rest`, () => {
      const { list, skipped } = parseDomainList(`good.example\n${line}\n`, '/etc/list.txt');
      assert.deepEqual([...list.keys()], ['good.example']);
      assert.equal(skipped.length, 1);
      assert.match(skipped[0], why);
      assert.ok(skipped[0].includes(`/etc/list.txt:2: ${JSON.stringify(line)}`), skipped[0]);
    });
  }

  it('refuses a file with no valid line at all', () => {
    assert.throws(
      () => parseDomainList('localhost\n', '/etc/list.txt'),
      (error: unknown) => error instanceof SourceError && /empty result/.test(error.message),
    );
  });

  it('accepts what AlternC\'s checkfqdn accepts: a label may start with "_"', () => {
    assert.equal(normalizeDomain('_mail.Example.net'), '_mail.example.net');
    assert.equal(normalizeDomain('_.example.net'), '_.example.net');
    assert.equal(normalizeDomain('a_b.example.net'), undefined, 'checkfqdn: "_" only first');
  });
});

describe('directory: snapshot lookups', () => {
  const snapshot = buildSnapshot([
    { name: 'first', list: parseDomainList('shared.example\nalice@shared.example\n@catch.example\nopen.example\n', 'a').list },
    { name: 'second', list: parseDomainList('shared.example\nbob@shared.example\nsecond.example\n', 'b').list },
  ]);

  it('accepts known addresses, catch-alls and unchecked domains, by the owning source', () => {
    assert.deepEqual(snapshot.lookup('alice', 'shared.example'), { verdict: 'accept', source: 'first', recipientCheck: true });
    assert.deepEqual(snapshot.lookup('anyone', 'catch.example'), { verdict: 'accept', source: 'first', recipientCheck: true });
    assert.deepEqual(snapshot.lookup('anyone', 'open.example'), { verdict: 'accept', source: 'first', recipientCheck: false });
    assert.deepEqual(snapshot.lookup('x', 'second.example'), { verdict: 'accept', source: 'second', recipientCheck: false });
  });

  it('gives a domain listed twice to the first source and records the conflict', () => {
    assert.deepEqual(snapshot.lookup('bob', 'shared.example'), { verdict: 'unknown-address' });
    assert.deepEqual(snapshot.conflicts, [{ domain: 'shared.example', keptBy: 'first', claimedBy: 'second' }]);
  });

  it('knows no subdomain or parent domain of a listed domain', () => {
    assert.deepEqual(snapshot.lookup('alice', 'sub.shared.example'), { verdict: 'unknown-domain' });
    assert.deepEqual(snapshot.lookup('alice', 'example'), { verdict: 'unknown-domain' });
    assert.equal(snapshot.domainCount, 4);
    assert.equal(snapshot.addressCount, 2); // alice and the catch-all
    assert.deepEqual(snapshot.uncheckedDomains().sort(), ['open.example', 'second.example']);
  });
});

describe('directory: name normalization', () => {
  it('lowercases and punycodes domains and refuses what is not a host name', () => {
    assert.equal(normalizeDomain('MÜNCHEN.Example'), 'xn--mnchen-3ya.example');
    assert.equal(normalizeDomain('xn--mnchen-3ya.example'), 'xn--mnchen-3ya.example');
    for (const bad of ['', 'a', 'a.', '.a.b', 'a..b', 'a_b.example', '1.2.3.4', '[1.2.3.4]', `${'a.'.repeat(127)}ab`]) {
      assert.equal(normalizeDomain(bad), undefined, bad);
    }
  });

  it('case-folds local parts and refuses quoted or dotted-at-the-edge ones', () => {
    assert.equal(normalizeLocalPart('Bob.Smith+tag'), 'bob.smith+tag');
    for (const bad of ['', '.a', 'a.', 'a..b', '"quoted"', 'a b', 'a\u0000b']) assert.equal(normalizeLocalPart(bad), undefined, bad);
  });
});
