import assert from 'node:assert/strict';
import { runCli } from './helpers/cli.js';
import { startTestDaemon, type TestDaemon } from './helpers/daemon.js';
import { startPostfixPrimary, type PostfixPrimary } from './helpers/postfix.js';
import { freePort, TestPrimary } from './helpers/primary.js';
import { ScriptedPrimary } from './helpers/scripted-primary.js';
import { message, pick, queuedId, SmtpClient } from './helpers/smtp-client.js';
import { queuedEnvelope, queuedIds, queuedMessage } from './helpers/spool-files.js';
import { waitFor } from './helpers/wait.js';
import { UnsafeCommand } from '../src/relay/session.js';

/**
 * Text written with the characters U+0100 + byte: Latin-1 encoding turns each one into that
 * byte, so "\r\n" becomes CR LF on the wire. UTF-8 makes them two bytes of 0x80 and over.
 */
const smuggle = (text: string) => [...text].map((c) => String.fromCharCode(0x100 + c.charCodeAt(0))).join('');

const FAST = 'relay: { probeInterval: 0.2, minBackoff: 300 }';

/** One SMTPUTF8 transaction, every byte sent as UTF-8; resolves with the queue id. */
async function sendUtf8(port: number, from: string, to: string[], body: string): Promise<string> {
  const { client } = await SmtpClient.session(port);
  try {
    const mail = await client.command(`MAIL FROM:<${from}> SMTPUTF8`);
    assert.equal(mail.code, 250, mail.lines.join(' | '));
    for (const rcpt of to) {
      const reply = await client.command(`RCPT TO:<${rcpt}>`);
      assert.equal(reply.code, 250, `${rcpt}: ${reply.lines.join(' | ')}`);
    }
    assert.equal((await client.command('DATA')).code, 354);
    const reply = await client.data(body);
    assert.equal(reply.code, 250, reply.lines.join(' | '));
    return queuedId(reply.text);
  } finally {
    await client.quit();
  }
}

describe('UTF-8 on the wire to the primary', () => {
  describe('the one place that writes commands', () => {
    it('sends commands as UTF-8 and reads replies as UTF-8', async () => {
      const primary = new ScriptedPrimary((line) => (line.startsWith('RCPT') ? '250 2.1.5 d\u00c3\u00a9j\u00c3\u00a0 vu \u00ff' : undefined));
      const session = await primary.session();
      await session.command('MAIL FROM:<j\u00f6ran@sender.test> SMTPUTF8');
      const rcpt = await session.command(`RCPT TO:<x${smuggle('\r\nDATA')}@d2.example>`);
      // The scripted primary reads bytes as Latin-1: UTF-8 shows as its two-byte sequences.
      assert.equal(primary.commands[1], Buffer.from('MAIL FROM:<j\u00f6ran@sender.test> SMTPUTF8').toString('latin1'));
      assert.equal(primary.commands.length, 3, 'no command came out of the address');
      assert.ok(!primary.commands.includes('DATA'));
      // Its reply: "déjà vu" in UTF-8, and a lone 0xFF, which is not UTF-8 and becomes U+FFFD.
      assert.equal(rcpt.text, '250 2.1.5 d\u00e9j\u00e0 vu \ufffd');
      session.close();
    });

    it('refuses to write a command holding CR, LF or NUL, and writes nothing of it', async () => {
      const primary = new ScriptedPrimary();
      const session = await primary.session();
      const before = primary.bytesIn;
      for (const bad of ['RCPT TO:<a\rb@d1.example>', 'RCPT TO:<a\nb@d1.example>', 'RCPT TO:<a\u0000b@d1.example>']) {
        await assert.rejects(session.command(bad), UnsafeCommand);
        await assert.rejects(session.pipeline(['MAIL FROM:<>', bad]), UnsafeCommand);
      }
      assert.equal(primary.bytesIn, before);
      assert.ok(session.usable, 'the session goes on: nothing was sent');
      session.close();
    });
  });

  describe('what the SMTP side takes', () => {
    let mx: TestDaemon | undefined;
    afterEach(async () => {
      await mx?.stop();
      mx = undefined;
    });

    // smtp-server's own address check (lenientAddressParsing included): kept as a test, for its upgrades.
    it('refuses an address holding a control character (bare CR, NUL, tab, DEL), which no session could carry', async () => {
      mx = await startTestDaemon();
      const { client } = await SmtpClient.session(mx.port);
      assert.deepEqual(pick(await client.command('MAIL FROM:<a\rb@remote.example>')), [501, '5.1.7']);
      assert.equal((await client.command('MAIL FROM:<s@remote.example>')).code, 250);
      for (const bad of ['a\rb', 'a\u0000b', 'a\tb', 'a\u007fb'])
        assert.deepEqual(pick(await client.command(`RCPT TO:<${bad}@d2.example>`)), [501, '5.1.3'], JSON.stringify(bad));
      assert.equal((await client.command('RCPT TO:<ab@d2.example>')).code, 250);
      await client.quit();
    });
  });

  describe('against a real Postfix primary', function () {
    this.timeout(60_000);
    let postfix: PostfixPrimary;
    let mx: TestDaemon | undefined;
    before(async () => {
      // As AlternC sets it up: virtual mailboxes, and the backup MX in mynetworks.
      postfix = await startPostfixPrimary(['alice@d1.example', 'postmaster@d3.example', '@d2.example'], { mynetworks: '127.0.0.0/8' });
    });
    after(async () => {
      await postfix.remove();
    });
    afterEach(async () => {
      await mx?.stop();
      mx = undefined;
    });

    it('delivers a message from a UTF-8 sender byte for byte', async () => {
      mx = await startTestDaemon({ primaryPort: postfix.port, extra: FAST });
      const id = await sendUtf8(
        mx.port,
        'j\u00f6ran@sender.test',
        ['alice@d1.example'],
        message('utf8 sender', 'Hej fr\u00e5n J\u00f6ran\r\n', [`Date: ${new Date().toUTCString()}`]),
      );
      const spooled = queuedMessage(mx.spoolDir, id);
      await waitFor(() => postfix.delivered('alice@d1.example').length === 1, 20_000);
      const [delivered] = postfix.delivered('alice@d1.example');
      // A maildir file has LF line ends; before our bytes, only what Postfix adds on delivery.
      const ours = spooled.toString('utf8').replace(/\r\n/g, '\n');
      const text = delivered.toString('utf8');
      assert.ok(text.endsWith(ours), `delivered:\n${text}`);
      assert.match(text, /^Return-Path: <j\u00f6ran@sender\.test>$/m);
      await waitFor(() => queuedIds(mx!.spoolDir).length === 0);
    });

    it('sends an address that smuggles CR LF as the one address it is', async () => {
      mx = await startTestDaemon({ primaryPort: postfix.port, extra: FAST });
      const local = `x${smuggle('>\r\nRCPT TO:<v@o.example>')}`; // 51 octets in UTF-8: the limit is 64
      const id = await sendUtf8(mx.port, 's@remote.example', [`${local}@d2.example`, '\u0463\u0465\u046f@d2.example'], message('smuggled rcpt'));
      await waitFor(() => postfix.delivered('@d2.example').length === 2, 20_000);
      await waitFor(() => queuedIds(mx!.spoolDir).length === 0);
      const log = postfix.log();
      assert.ok(!log.includes('v@o.example'), log);
      assert.equal(postfix.queue().length, 0, 'nothing relayed onwards');
      const to = postfix
        .delivered('@d2.example')
        .map((file) => /^Delivered-To: (.*)$/m.exec(file.toString('utf8'))?.[1])
        .sort();
      assert.deepEqual(to, [`${local}@d2.example`, '\u0463\u0465\u046f@d2.example'].sort(), `queued as ${id}`);
    });

    it('probes a recipient of a domain without an address list without carrying anything else', async () => {
      mx = await startTestDaemon({ primaryPort: postfix.port, extra: FAST });
      const before = postfix.log();
      const { client } = await SmtpClient.session(mx.port);
      await client.command('MAIL FROM:<s@remote.example> SMTPUTF8');
      // Before UTF-8: RCPT TO:<p> (Postfix takes it, we are in its mynetworks), DATA, "hi", the final dot.
      const address = `p${smuggle('>\r\nDATA\r\nhi\r\n.\r\n')}@d3.example`;
      const rcpt = await client.command(`RCPT TO:<${address}>`);
      await client.quit();
      // The primary judged the address as the one address it is: unknown in its mailbox table.
      assert.equal(rcpt.code, 550, rcpt.lines.join(' | '));
      assert.match(rcpt.lines.join(' '), /User unknown in virtual mailbox table/);
      const log = postfix.log().slice(before.length);
      assert.doesNotMatch(log, /postfix\/qmgr\[\d+\]: \w+: from=<>/, log); // nothing queued
      assert.deepEqual(postfix.delivered('postmaster@d3.example'), []);
    });
  });

  describe('a message whose DSN cannot be delivered either', () => {
    let primary: TestPrimary;
    let smarthost: TestPrimary;
    let mx: TestDaemon | undefined;
    afterEach(async () => {
      await mx?.stop();
      mx = undefined;
      await primary.stop();
      await smarthost.stop();
    });

    it('is held with its reason, counted and listed, never dropped', async () => {
      primary = new TestPrimary(await freePort());
      smarthost = new TestPrimary(await freePort());
      await primary.start();
      await smarthost.start();
      primary.rcptReplies.set('alice@d1.example', [550, '5.1.1 no such user']);
      smarthost.rcptReplies.set('j\u00f6ran@sender.test', [550, '5.1.1 no such sender']);
      mx = await startTestDaemon({
        primaryPort: primary.port,
        extra: `${FAST}\ndsn: { relay: { host: 127.0.0.1, port: ${smarthost.port} } }`,
      });
      const id = await sendUtf8(mx.port, 'j\u00f6ran@sender.test', ['alice@d1.example'], message('bounce of a bounce'));
      await waitFor(() => mx!.logs.some((line) => line.event === 'undeliverable_held'), 10_000);
      await waitFor(() => queuedIds(mx!.spoolDir).length === 1);
      const [held] = queuedIds(mx.spoolDir);
      assert.ok(held && held !== id, 'the original left the queue once its DSN was queued; the DSN stays');
      await waitFor(() => queuedEnvelope(mx!.spoolDir, held).held === true); // saved just after the line
      const list = await runCli(['queue', 'list', '--config', mx.file]);
      assert.match(list.stdout, new RegExp(`^${held} .* held `, 'm'));
      assert.match(list.stdout, /no such sender/);
      const metrics = await (await fetch(`http://127.0.0.1:${mx.daemon.monitoringPort}/metrics`)).text();
      assert.match(metrics, /^secondarymx_undeliverable_held_total 1$/m);
    });
  });
});
