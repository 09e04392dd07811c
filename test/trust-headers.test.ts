import assert from 'node:assert/strict';
import { authservId, headerFields, withoutComments } from '../src/receive/header-fields.js';
import { startTestDaemon, type TestDaemon } from './helpers/daemon.js';
import { TestDnsServer } from './helpers/dns-server.js';
import { freePort, TestPrimary } from './helpers/primary.js';
import { useRspamd } from './helpers/rspamd.js';
import { queuedId, SmtpClient } from './helpers/smtp-client.js';
import { queuedEnvelope, queuedIds, storedMessage } from './helpers/spool-files.js';
import { waitFor } from './helpers/wait.js';
import { skipRanges } from '../src/spool/spool.js';

/** Forged fields (each claims our authserv-id, mx2.test.example, or is one our screens write) and fields to keep. */
const FORGED = [
  'Authentication-Results: mx2.test.example; spf=pass smtp.mailfrom=bank.example; dkim=pass; dmarc=pass header.from=bank.example',
  'authentication-results:   MX2.TEST.EXAMPLE (checked by us, honest) ;\r\n dkim=pass header.d=bank.example',
  'Authentication-Results: (first a comment (nested)) mx2.test.example.; dmarc=pass',
  'Authentication-Results:\r\n\tmx2.test.example;\r\n\tspf=pass',
  'Authentication-Results: "mx2.test.example"; dmarc=pass',
  'ARC-Authentication-Results: i=1; mx2.test.example; dmarc=pass header.from=bank.example',
  'Received-SPF: pass (mx2.test.example: forged) client-ip=192.0.2.1;',
];
const SPAM_FORGED = ['X-Spam: No', 'X-Spam-Status: No, score=-10', 'x-rspamd-score: -10.00 / 15.00', 'X-Rspamd-Action: no action'];
const KEPT = [
  'Authentication-Results: mail.bank.example; dkim=pass header.d=bank.example',
  'ARC-Authentication-Results: i=1; mx.other.example; spf=pass',
  'X-Spammy-Name: kept, it is not X-Spam or X-Spam-*',
];

function forgedMessage(fields: string[]): string {
  return [
    'From: Bank <info@bank.example>',
    ...fields,
    'To: alice@d1.example',
    'Subject: forged verdicts',
    'Message-ID: <forged@bank.example>',
    '',
    'Authentication-Results: mx2.test.example; spf=pass (in the body: not a header, kept)',
    '',
  ].join('\r\n');
}

async function send(port: number, body: string): Promise<string> {
  const { client } = await SmtpClient.session(port);
  try {
    const reply = await client.sendMail('s@remote.example', ['alice@d1.example'], body);
    assert.equal(reply.code, 250, reply.lines.join(' | '));
    return queuedId(reply.text);
  } finally {
    await client.quit();
  }
}

/** The message less the forged fields: what the primary must get after our own headers. */
function without(body: string, fields: string[]): string {
  return fields.reduce((text, field) => text.replace(`${field}\r\n`, ''), body);
}

describe('trust headers: what claims to be ours is ours alone', () => {
  describe('reading header fields', () => {
    it('finds each field with its folded lines and its bytes', () => {
      const block = Buffer.from('A: 1\r\nB: two\r\n\tlines\r\nno colon here\r\nC:3\r\n');
      assert.deepEqual(
        headerFields(block, 10).map(({ name, value, start, end }) => [name, value, block.toString('latin1', start - 10, end - 10)]),
        [
          ['a', '1', 'A: 1\r\n'],
          ['b', 'two\tlines', 'B: two\r\n\tlines\r\n'],
          ['', 'no colon here', 'no colon here\r\n'],
          ['c', '3', 'C:3\r\n'],
        ],
      );
    });

    it('reads the authserv-id through spacing, comments, quotes, folding and the ARC instance', () => {
      for (const field of FORGED.filter((f) => /^(arc-)?authentication-results:/i.test(f))) {
        const [parsed] = headerFields(Buffer.from(`${field}\r\n`));
        assert.equal(authservId(parsed.value, parsed.name.startsWith('arc-')), 'mx2.test.example', field);
      }
      assert.equal(authservId('(a \\) b) mx.example; x'), 'mx.example');
      assert.equal(authservId('mx.example(comment);'), 'mx.example');
      assert.equal(authservId('mail.bank.example; dkim=pass'), 'mail.bank.example');
    });
  });

  it('skips the removed ranges whatever the chunks the file is read in', async () => {
    const text = Buffer.from('0123456789abcdefghij');
    const ranges: Array<[number, number]> = [
      [2, 5],
      [5, 6],
      [10, 15],
      [19, 20],
    ];
    for (let size = 1; size <= text.length; size++) {
      const chunks = Array.from({ length: Math.ceil(text.length / size) }, (_, i) => text.subarray(i * size, (i + 1) * size));
      const kept: Buffer[] = [];
      for await (const chunk of skipRanges(chunks, ranges)) kept.push(chunk);
      assert.equal(Buffer.concat(kept).toString(), '016789fghi', `chunks of ${size}`);
    }
  });

  describe('with a real primary', () => {
    let primary: TestPrimary;
    let mx: TestDaemon | undefined;
    beforeEach(async () => {
      primary = new TestPrimary(await freePort());
      await primary.start();
    });
    afterEach(async () => {
      await mx?.stop();
      mx = undefined;
      await primary.stop();
    });

    it('removes every forged Authentication-Results and Received-SPF, keeps the rest byte for byte, and never rewrites the file', async () => {
      mx = await startTestDaemon({ primaryPort: primary.port, extra: 'relay: { probeInterval: 0.2 }' });
      const body = forgedMessage([...FORGED, ...KEPT]);
      const id = await send(mx.port, body);
      const envelope = queuedEnvelope(mx.spoolDir, id);
      assert.equal(envelope.removedHeaders?.length, FORGED.length);
      assert.ok(storedMessage(mx.spoolDir, id).toString('latin1').endsWith(body), 'the stored file holds the message as received');
      await waitFor(() => primary.received.length === 1);
      const got = primary.received[0].data.toString('latin1');
      const [ours, rest] = [got.slice(0, got.indexOf('Received: from')), got.slice(got.indexOf('Received: from'))];
      assert.match(ours, /^Received-SPF: none \(mx2\.test\.example:.*\r\nAuthentication-Results: mx2\.test\.example;\r\n/);
      assert.equal(rest.slice(rest.indexOf('From: Bank')), without(body, FORGED));
      assert.equal(primary.received[0].mailArgs.SIZE, String(got.length), 'SIZE is what is sent');
      assert.equal((got.slice(0, got.indexOf('\r\n\r\n')).match(/^Authentication-Results: mx2\.test\.example/gim) ?? []).length, 1, 'ours alone');
      assert.ok(mx.logs.some((line) => line.event === 'queued' && line.queueId === id && line.removedHeaders === FORGED.length));
    });

    it('removes them for an allow-listed client too, which gets no header of ours', async () => {
      const dns = new TestDnsServer();
      await dns.start();
      dns.zones.set('1.0.0.127.wl.test', { a: ['127.0.10.2'] });
      try {
        mx = await startTestDaemon({
          primaryPort: primary.port,
          extra: `relay: { probeInterval: 0.2 }\ndns: { servers: ["${dns.server}"] }\nscreen: { dnsblSites: ["wl.test=127.0.[0..255].[1..3]*-2"], dnsblAllowThreshold: -1 }`,
        });
        const body = forgedMessage([FORGED[0], FORGED[5]]);
        await send(mx.port, body);
        await waitFor(() => primary.received.length === 1);
        const got = primary.received[0].data.toString('latin1');
        assert.ok(got.endsWith(without(body, [FORGED[0], FORGED[5]])));
        assert.doesNotMatch(got.slice(0, got.indexOf('\r\n\r\n')), /mx2\.test\.example;/);
      } finally {
        await dns.stop();
      }
    });

    it('a DSN returning the message returns it without the forged fields', async () => {
      primary.rcptReplies.set('alice@d1.example', [550, '5.1.1 no such user']);
      const smarthost = new TestPrimary(await freePort(), { dsn: true });
      await smarthost.start();
      try {
        mx = await startTestDaemon({
          primaryPort: primary.port,
          extra: `relay: { probeInterval: 0.2 }\ndsn: { relay: { host: 127.0.0.1, port: ${smarthost.port} } }`,
        });
        const { client } = await SmtpClient.session(mx.port);
        for (const line of ['MAIL FROM:<s@remote.example> RET=FULL', 'RCPT TO:<alice@d1.example>', 'DATA']) await client.command(line);
        assert.equal((await client.data(forgedMessage(FORGED))).code, 250);
        await client.quit();
        await waitFor(() => smarthost.received.length === 1);
        const dsn = smarthost.received[0].data.toString('latin1');
        assert.match(dsn, /Subject: forged verdicts/);
        assert.doesNotMatch(dsn, /spf=pass smtp\.mailfrom=bank\.example/);
      } finally {
        await smarthost.stop();
      }
    });

    it('quotes an unbalanced "(" of the sender inside the comments of our Received-SPF and Authentication-Results', async () => {
      const dns = new TestDnsServer();
      await dns.start();
      dns.zones.set('remote.example', { txt: ['v=spf1 ?all'] }); // neutral: the comment names the sender
      after(() => dns.stop());
      mx = await startTestDaemon({ primaryPort: primary.port, extra: `relay: { probeInterval: 0.2 }\ndns: { servers: ["${dns.server}"] }` });
      const { client } = await SmtpClient.session(mx.port);
      for (const line of ['MAIL FROM:<"a(b"@remote.example>', 'RCPT TO:<alice@d1.example>', 'DATA']) await client.command(line);
      assert.equal((await client.data(forgedMessage([]))).code, 250);
      await client.quit();
      await waitFor(() => primary.received.length === 1);
      const got = primary.received[0].data.toString('latin1');
      const fields = headerFields(Buffer.from(got.slice(0, got.indexOf('\r\n\r\n') + 2), 'latin1'));
      const spf = fields.find((field) => field.name === 'received-spf')!;
      assert.match(spf.value, /a\\\(b/);
      assert.match(withoutComments(spf.value), /client-ip=127\.0\.0\.1;$/, 'the comment ends where it should');
      const results = fields.find((field) => field.name === 'authentication-results')!;
      assert.match(withoutComments(results.value), /spf=neutral\s+smtp\.mailfrom=.*dmarc=/, `dkim, spf and dmarc outside any comment: ${results.value}`);
    });

    it('refuses a header block over limits.headerSize with 552 5.3.4', async () => {
      mx = await startTestDaemon({ primaryPort: primary.port, extra: 'limits: { headerSize: 4096 }' });
      const { client } = await SmtpClient.session(mx.port);
      for (const line of ['MAIL FROM:<s@remote.example>', 'RCPT TO:<alice@d1.example>', 'DATA']) await client.command(line);
      const big = forgedMessage(Array.from({ length: 200 }, (_, i) => `X-Filler-${i}: ${'f'.repeat(20)}`));
      const reply = await client.data(big);
      assert.deepEqual([reply.code, reply.enhanced], [552, '5.3.4']);
      await client.quit();
      assert.deepEqual(queuedIds(mx.spoolDir), []);
    });
  });

  describe('with rspamd', function () {
    const { dns, rspamd } = useRspamd(this);
    let primary: TestPrimary;
    let mx: TestDaemon | undefined;
    before(async () => {
      primary = new TestPrimary(await freePort());
      await primary.start();
    });
    after(async () => {
      await mx?.stop();
      await primary.stop();
    });

    it("removes the client's X-Spam, X-Spam-* and X-Rspamd-*: our X-Spam: Yes is the only one", async () => {
      mx = await startTestDaemon({
        primaryPort: primary.port,
        extra: `dns: { servers: ["${dns.server}"] }\nrelay: { probeInterval: 0.2 }\nrspamd: { url: "${rspamd().url}" }`,
      });
      const body = forgedMessage([...SPAM_FORGED, ...KEPT]).replace('Subject: forged verdicts', 'Subject: cheap SPAMWORD here');
      await send(mx.port, body);
      await waitFor(() => primary.received.length === 1);
      const got = primary.received[0].data.toString('latin1');
      assert.deepEqual(got.match(/^X-Spam:.*$/gim), ['X-Spam: Yes']);
      assert.equal((got.match(/^X-Rspamd-Score:/gim) ?? []).length, 1);
      assert.doesNotMatch(got, /^X-Spam-Status/im);
      assert.ok(got.endsWith(without(body, SPAM_FORGED)));
    });
  });
});
