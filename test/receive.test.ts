import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { message, pick, queuedId, SmtpClient } from './helpers/smtp-client.js';
import { startTestDaemon, type TestDaemon } from './helpers/daemon.js';
import { queuedEnvelope, storedMessage } from './helpers/spool-files.js';
import { waitFor } from './helpers/wait.js';

function queued(spoolDir: string): string[] {
  return readdirSync(join(spoolDir, 'queue')).sort();
}

function leftovers(spoolDir: string): string[] {
  return [...readdirSync(join(spoolDir, 'tmp')), ...queued(spoolDir)];
}

describe('receive: SMTP policy against a running server', () => {
  let mx: TestDaemon;
  let client: SmtpClient;

  before(async () => {
    // The directory's policy alone: a domain-only domain is taken without asking the (closed) primary.
    mx = await startTestDaemon({ extra: 'limits: { messageSize: 20000, recipients: 3, hops: 5 }\nverify: { unverifiable: accept }' });
  });
  after(async () => mx.stop());
  beforeEach(async () => {
    ({ client } = await SmtpClient.session(mx.port));
  });
  afterEach(async () => client.quit());

  it('greets with the configured host name and advertises the MX extensions, no AUTH, no STARTTLS', async () => {
    const { client: other, ehlo } = await SmtpClient.session(mx.port);
    await other.quit();
    const keywords = ehlo.lines.slice(1).map((line) => line.slice(4));
    assert.deepEqual(keywords.sort(), ['8BITMIME', 'DSN', 'ENHANCEDSTATUSCODES', 'PIPELINING', 'SIZE 20000', 'SMTPUTF8']);
    assert.match(ehlo.lines[0], /^250-mx2\.test\.example /);
  });

  it('accepts a known address, a catch-all and a domain-only domain, and queues one message for all', async () => {
    const before = queued(mx.spoolDir).length;
    const reply = await client.sendMail('sender@remote.example', ['alice@d1.example', 'anyone@d2.example', 'whoever@d3.example'], message('three'));
    assert.equal(reply.code, 250);
    assert.equal(reply.enhanced, '2.0.0');
    const id = /queued as ([0-9A-Z]+)$/.exec(reply.text)?.[1];
    assert.ok(id, reply.text);
    assert.equal(queued(mx.spoolDir).length, before + 1, 'one file per queued message');
    const envelope = queuedEnvelope(mx.spoolDir, id!);
    assert.equal(envelope.sender, 'sender@remote.example');
    assert.deepEqual(
      envelope.recipients.map((r: { address: string; state: string }) => `${r.address}:${r.state}`),
      ['alice@d1.example:pending', 'anyone@d2.example:pending', 'whoever@d3.example:pending'],
    );
  });

  it('compares domains and local parts case-insensitively and keeps the address as sent', async () => {
    assert.equal((await client.command('MAIL FROM:<s@remote.example>')).code, 250);
    assert.equal((await client.command('RCPT TO:<ALICE@D1.Example>')).code, 250);
    assert.equal((await client.command('RCPT TO:<bob.smith@d1.example>')).code, 250);
  });

  it('accepts an IDN domain in Unicode or punycode and spools it as punycode', async () => {
    assert.equal((await client.command('MAIL FROM:<s@remote.example>')).code, 250);
    assert.equal((await client.command('RCPT TO:<info@xn--bcher-kva.example>')).code, 250);
    assert.equal((await client.command('RCPT TO:<nobody@xn--bcher-kva.example>')).code, 550);
    const reply = await client.command('DATA');
    assert.equal(reply.code, 354);
    const done = await client.data(message('idn'));
    const id = queuedId(done.text);
    const envelope = queuedEnvelope(mx.spoolDir, id!);
    assert.deepEqual(
      envelope.recipients.map((r: { address: string }) => r.address),
      ['info@xn--bcher-kva.example'],
    );
  });

  it('refuses an unknown domain with 550 5.7.1 and an unknown address with 550 5.1.1', async () => {
    assert.equal((await client.command('MAIL FROM:<s@remote.example>')).code, 250);
    const domain = await client.command('RCPT TO:<user@unknown.example>');
    assert.deepEqual([domain.code, domain.enhanced], [550, '5.7.1']);
    const address = await client.command('RCPT TO:<nobody@d1.example>');
    assert.deepEqual([address.code, address.enhanced], [550, '5.1.1']);
    const refusals = mx.logs.filter((line) => line.event === 'recipient_refused').map((line) => line.to);
    assert.ok(refusals.includes('user@unknown.example') && refusals.includes('nobody@d1.example'));
  });

  it("reads a trailing dot and a needlessly quoted local part as the primary's Postfix does, and spools the plain address", async () => {
    assert.equal((await client.command('MAIL FROM:<s@remote.example>')).code, 250);
    assert.equal((await client.command('RCPT TO:<alice@d1.example.>')).code, 250);
    assert.equal((await client.command('RCPT TO:<"Bob.Smith"@d1.example>')).code, 250);
    assert.deepEqual(pick(await client.command('RCPT TO:<"bob smith"@d1.example>')), [501, '5.1.3']);
    assert.equal((await client.command('DATA')).code, 354);
    const id = queuedId((await client.data(message('forms'))).text);
    assert.deepEqual(
      queuedEnvelope(mx.spoolDir, id).recipients.map((r) => r.address),
      ['alice@d1.example', 'Bob.Smith@d1.example'],
    );
  });

  it('accepts an address extension when the base address is known (recipient_delimiter "+"), and nothing else', async () => {
    assert.equal((await client.command('MAIL FROM:<s@remote.example>')).code, 250);
    assert.equal((await client.command('RCPT TO:<alice+news@d1.example>')).code, 250);
    assert.equal((await client.command('RCPT TO:<Bob.Smith+lists+more@d1.example>')).code, 250);
    assert.deepEqual(pick(await client.command('RCPT TO:<nobody+alice@d1.example>')), [550, '5.1.1']);
    assert.deepEqual(pick(await client.command('RCPT TO:<+alice@d1.example>')), [550, '5.1.1']);
    assert.deepEqual(pick(await client.command('RCPT TO:<alice-news@d1.example>')), [550, '5.1.1'], '"-" is no delimiter by default');
    assert.equal((await client.command('RSET')).code, 250);
  });

  const relayTricks: Array<[string, number, string]> = [
    ['user@other.example@d1.example', 501, '5.1.3'],
    ['@d1.example:user@other.example', 550, '5.7.1'],
    ['user@[127.0.0.1]', 550, '5.7.1'],
    ['user@[IPv6:::1]', 550, '5.7.1'],
    ['user@d1.example.other.example', 550, '5.7.1'],
    ['user@sub.d1.example', 550, '5.7.1'],
    ['user@d1.example.other.example.', 550, '5.7.1'],
    ['user%other.example@d3.example', 550, '5.7.1'],
    ['other.example!user@d3.example', 550, '5.7.1'],
    ['"user@other.example"@d3.example', 501, '5.1.3'],
    ['postmaster', 550, '5.1.1'],
    ['user@localhost', 550, '5.7.1'],
  ];
  for (const [address, code, enhanced] of relayTricks) {
    it(`is no open relay: refuses <${address}> with ${code} ${enhanced}`, async () => {
      assert.equal((await client.command('MAIL FROM:<s@remote.example>')).code, 250);
      const reply = await client.command(`RCPT TO:<${address}>`);
      assert.deepEqual([reply.code, reply.enhanced], [code, enhanced], reply.lines.join(' | '));
    });
  }

  it('refuses over-long local parts (over 64 octets) with 501 5.1.3', async () => {
    assert.equal((await client.command('MAIL FROM:<s@remote.example>')).code, 250);
    const reply = await client.command(`RCPT TO:<${'a'.repeat(65)}@d3.example>`);
    assert.deepEqual([reply.code, reply.enhanced], [501, '5.1.3']);
  });

  it('refuses a declared SIZE over the limit at MAIL with 552 5.3.4', async () => {
    const reply = await client.command('MAIL FROM:<s@remote.example> SIZE=20001');
    assert.deepEqual([reply.code, reply.enhanced], [552, '5.3.4']);
    assert.equal((await client.command('MAIL FROM:<s@remote.example> SIZE=20000')).code, 250);
  });

  it('reads an oversized message to the end, spools nothing and answers 552 5.3.4', async () => {
    const before = leftovers(mx.spoolDir);
    const body = `${'x'.repeat(998)}\r\n`.repeat(25);
    const reply = await client.sendMail('s@remote.example', ['alice@d1.example'], message('big', body));
    assert.deepEqual([reply.code, reply.enhanced], [552, '5.3.4']);
    assert.deepEqual(leftovers(mx.spoolDir), before);
    // The session is still in step: the next transaction works.
    assert.equal((await client.sendMail('s@remote.example', ['alice@d1.example'], message('after big'))).code, 250);
  });

  it('answers 452 4.5.3 past the recipient limit and queues the accepted ones', async () => {
    assert.equal((await client.command('MAIL FROM:<s@remote.example>')).code, 250);
    for (const local of ['a', 'b', 'c']) assert.equal((await client.command(`RCPT TO:<${local}@d2.example>`)).code, 250);
    const fourth = await client.command('RCPT TO:<d@d2.example>');
    assert.deepEqual([fourth.code, fourth.enhanced], [452, '4.5.3']);
    assert.equal((await client.command('DATA')).code, 354);
    const reply = await client.data(message('limit'));
    const id = queuedId(reply.text);
    const envelope = queuedEnvelope(mx.spoolDir, id!);
    assert.equal(envelope.recipients.length, 3);
  });

  it('counts a repeated recipient against the limit: the fourth RCPT gets 452 4.5.3 even when it repeats the first', async () => {
    assert.equal((await client.command('MAIL FROM:<s@remote.example>')).code, 250);
    for (let i = 0; i < 3; i++) assert.equal((await client.command('RCPT TO:<a@d2.example>')).code, 250);
    assert.deepEqual(pick(await client.command('RCPT TO:<A@d2.example>')), [452, '4.5.3']);
    // A new transaction counts afresh.
    assert.equal((await client.command('RSET')).code, 250);
    assert.equal((await client.command('MAIL FROM:<s@remote.example>')).code, 250);
    assert.equal((await client.command('RCPT TO:<a@d2.example>')).code, 250);
  });

  for (const [name, body] of [
    ['a bare LF', 'Subject: x\r\n\r\nline one\nline two\r\n'],
    ['a bare CR', 'Subject: x\r\n\r\nline one\rline two\r\n'],
    ['a smuggled end of data (LF.LF)', 'Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@remote.example>\r\n'],
    ['a smuggled end of data (CR.CR)', 'Subject: x\r\n\r\nhello\r.\rRCPT TO:<evil@remote.example>\r\n'],
  ]) {
    it(`refuses DATA with ${name} with 550 5.6.0 and spools nothing`, async () => {
      const before = leftovers(mx.spoolDir);
      const reply = await client.sendMail('s@remote.example', ['alice@d1.example'], body);
      assert.deepEqual([reply.code, reply.enhanced], [550, '5.6.0'], reply.lines.join(' | '));
      assert.deepEqual(leftovers(mx.spoolDir), before);
      // Nothing after the bare line end was taken as a command.
      assert.equal((await client.command('NOOP')).code, 250);
    });
  }

  it('finds a bare CR split across TCP segments', async () => {
    const before = leftovers(mx.spoolDir);
    for (const step of ['MAIL FROM:<s@remote.example>', 'RCPT TO:<alice@d1.example>', 'DATA']) await client.command(step);
    client.write('Subject: split\r\n\r\nfirst\r');
    await new Promise((resolve) => setTimeout(resolve, 50));
    client.write('second\r\n');
    const reply = await client.data('');
    assert.deepEqual([reply.code, reply.enhanced], [550, '5.6.0']);
    assert.deepEqual(leftovers(mx.spoolDir), before);
  });

  it('refuses a message with more Received headers than limits.hops with 554 5.4.6', async () => {
    const received = (n: number) =>
      Array.from({ length: n }, (_, i) => `Received: from hop${i}.example by hop${i + 1}.example; Wed, 25 Nov 2026 10:00:00 +0000`);
    const loop = await client.sendMail('s@remote.example', ['alice@d1.example'], message('loop', 'x', received(6)));
    assert.deepEqual([loop.code, loop.enhanced], [554, '5.4.6']);
    const ok = await client.sendMail('s@remote.example', ['alice@d1.example'], message('five hops', 'x', received(5)));
    assert.equal(ok.code, 250);
  });

  it('stores the bytes sent plus exactly one Received header in front, dot-unstuffed', async () => {
    const body = 'Line one\r\n..leading dot (stuffed)\r\n\tTab \u00e9t\u00e9 8bit\r\nX-Received: not a trace header\r\n';
    const sent = Buffer.from(message('bytes', body, ['Received: from earlier.example by relay.example; Wed, 25 Nov 2026 10:00:00 +0000']), 'utf8');
    const reply = await client.sendMail('s@remote.example', ['alice@d1.example'], sent);
    const id = queuedId(reply.text);
    const stored = storedMessage(mx.spoolDir, id); // the bytes before the envelope the file ends with
    const expected = Buffer.from(sent.toString('latin1').replace('\r\n..leading', '\r\n.leading'), 'latin1');
    const headerEnd = stored.length - expected.length;
    assert.ok(headerEnd > 0);
    assert.deepEqual(stored.subarray(headerEnd), expected);
    const ours = stored.subarray(0, headerEnd).toString('utf8');
    assert.match(
      ours,
      /^Received: from client\.example \(\[127\.0\.0\.1\]\)\r\n\tby mx2\.test\.example \(alternc-secondarymx\) with ESMTP id \w+\r\n\tfor <alice@d1\.example>;\r\n\t\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n$/,
    );
    assert.ok(ours.includes(`id ${id}`));
    assert.equal(queuedEnvelope(mx.spoolDir, id).messageId, '<bytes@remote.example>');
  });

  it('keeps the null sender and logs one summary line per accepted message', async () => {
    const reply = await client.sendMail('', ['alice@d1.example'], message('bounce'));
    const id = queuedId(reply.text);
    const envelope = queuedEnvelope(mx.spoolDir, id!);
    assert.equal(envelope.sender, '');
    const lines = mx.logs.filter((line) => line.queueId === id);
    assert.equal(lines.length, 1);
    assert.deepEqual(
      { msg: lines[0].msg, from: lines[0].from, to: lines[0].to, client: lines[0].client, messageId: lines[0].messageId },
      { msg: 'queued', from: '', to: ['alice@d1.example'], client: '127.0.0.1', messageId: '<bounce@remote.example>' },
    );
  });

  it('pipelines a whole transaction in one write', async () => {
    client.write(`MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@d1.example>\r\nRCPT TO:<nobody@d1.example>\r\nDATA\r\n`);
    const replies = [await client.reply(), await client.reply(), await client.reply(), await client.reply()];
    assert.deepEqual(
      replies.map((r) => r.code),
      [250, 250, 550, 354],
    );
    assert.equal((await client.data(message('pipelined'))).code, 250);
  });

  it('leaves nothing behind when the client disconnects in the middle of DATA', async () => {
    const before = leftovers(mx.spoolDir);
    for (const step of ['MAIL FROM:<s@remote.example>', 'RCPT TO:<alice@d1.example>', 'DATA']) await client.command(step);
    client.write(message('cut', 'partial body that never ends\r\n'.repeat(100)));
    await new Promise((resolve) => setTimeout(resolve, 100));
    client.destroy();
    await waitFor(() => mx.logs.some((line) => line.event === 'data_lost'));
    assert.deepEqual(leftovers(mx.spoolDir), before);
  });
});

describe('receive: connection limit', () => {
  it('answers 421 4.7.0 beyond limits.connections', async () => {
    const mx = await startTestDaemon({ extra: 'limits: { connections: 2 }' });
    try {
      const first = await SmtpClient.session(mx.port);
      const second = await SmtpClient.session(mx.port);
      const third = await SmtpClient.connect(mx.port);
      const refused = await third.reply();
      assert.deepEqual([refused.code, refused.enhanced], [421, '4.7.0']);
      await third.closedByServer();
      await first.client.quit();
      await waitFor(async () => {
        const again = await SmtpClient.connect(mx.port);
        const greeting = await again.reply();
        again.destroy();
        return greeting.code === 220;
      });
      await second.client.quit();
    } finally {
      await mx.stop();
    }
  });
});
