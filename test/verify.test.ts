import assert from 'node:assert/strict';
import { startTestDaemon, type TestDaemon } from './helpers/daemon.js';
import { AlternCDatabase } from './helpers/mysql.js';
import { startAlternCPrimary, startPostfixPrimary, type PostfixPrimary } from './helpers/postfix.js';
import { freePort, TestPrimary } from './helpers/primary.js';
import { message, pick, rcptReplies, SmtpClient, type Reply } from './helpers/smtp-client.js';
import { queuedIds } from './helpers/spool-files.js';
import { waitFor } from './helpers/wait.js';

describe('recipient verification: no backscatter, and a callahead that never hammers the primary', () => {
  let mx: TestDaemon | undefined;
  afterEach(async () => {
    await mx?.stop();
    mx = undefined;
  });

  describe('against a real Postfix primary on virtual mailboxes', function () {
    this.timeout(60_000);
    let postfix: PostfixPrimary;
    before(async () => {
      postfix = await startPostfixPrimary(['real@d3.example', 'other@d3.example']);
    });
    after(() => postfix.remove());

    it('refuses the unknown while it is up, uses its cache while it is down, and defers the uncached then', async () => {
      mx = await startTestDaemon({ primaryPort: postfix.port, extra: 'relay: { probeInterval: 60 }' });
      const up = await rcptReplies(mx.port, 's@remote.example', ['real@d3.example', 'nobody@d3.example']);
      assert.equal(up[0].code, 250, up[0].lines.join(' '));
      assert.deepEqual(pick(up[1]), [550, '5.1.1']);
      assert.match(up[1].text, /User unknown in virtual mailbox table/);
      await postfix.stop();
      const down = await rcptReplies(mx.port, 's@remote.example', ['other@d3.example', 'real@d3.example', 'nobody@d3.example', 'new@d3.example']);
      assert.deepEqual(pick(down[0]), [450, '4.1.1'], 'uncached, the primary gone: nobody can tell');
      assert.equal(down[1].code, 250, 'the primary said yes once: kept for verify.positiveTtl');
      assert.deepEqual(pick(down[2]), [550, '5.1.1'], 'the primary said no: kept for verify.negativeTtl');
      assert.deepEqual(pick(down[3]), [450, '4.1.1']);
      assert.match(down[3].text, /unverified address: the primary MX is down/);
    });
  });

  describe("against AlternC's primary: Postfix on AlternC's database and map files", function () {
    this.timeout(60_000);
    let db: AlternCDatabase;
    let alternc: Awaited<ReturnType<typeof startAlternCPrimary>>;
    before(async () => {
      db = await AlternCDatabase.create({ mail: true });
      const d3 = await db.domain('d3.example');
      await db.address(d3, 'alice', { mailbox: true });
      await db.address(d3, 'root', { recipients: 'ops@outside.example\nalice@d3.example' });
      await db.address(d3, 'gone', { enabled: 0, recipients: 'gone@outside.example' });
      alternc = await startAlternCPrimary(new URL(db.url()));
    });
    after(async () => {
      await alternc?.remove();
      await db?.drop();
    });

    it('asks it while it is up, answers from what it said while it is down, defers the rest, and delivers there once it is back', async () => {
      // d3.example has no address list here (a domain-only entry, as an mxlist source gives).
      mx = await startTestDaemon({ primaryPort: alternc.port, extra: 'relay: { probeInterval: 0.2 }' });
      const up = await rcptReplies(mx.port, 's@remote.example', ['alice@d3.example', 'root@d3.example', 'gone@d3.example', 'nobody@d3.example']);
      assert.deepEqual(
        up.map((reply) => reply.code),
        [250, 250, 550, 550],
        up.map((reply) => reply.text).join(' | '),
      );
      assert.match(up[3].text, /5\.1\.1 .*User unknown/);
      await alternc.stop();
      const { client } = await SmtpClient.session(mx.port);
      const down: Reply[] = [];
      for (const line of [
        'MAIL FROM:<s@remote.example>',
        'RCPT TO:<root@d3.example>',
        'RCPT TO:<alice@d3.example>',
        'RCPT TO:<nobody@d3.example>',
        'RCPT TO:<new@d3.example>',
      ]) {
        down.push(await client.command(line));
      }
      assert.deepEqual(down.slice(1).map(pick), [
        [250, '2.1.5'],
        [250, '2.1.5'],
        [550, '5.1.1'],
        [450, '4.1.1'],
      ]);
      assert.equal((await client.command('DATA')).code, 354);
      assert.equal((await client.data(message('while the primary was down', 'hello'))).code, 250);
      await client.quit();
      await alternc.start();
      await waitFor(() => queuedIds(mx!.spoolDir).length === 0, 20_000);
      const queued = alternc.queue();
      assert.equal(queued.length, 1, 'the message reached the primary once');
      // root@ expanded by alias_view to its targets, beside alice@ itself (whether Postfix lists alice@ once or twice varies).
      assert.deepEqual([...new Set(queued[0].recipients.map((recipient) => recipient.address))].sort(), ['alice@d3.example', 'ops@outside.example']);
    });
  });

  describe('forged senders while the primary is down', () => {
    let primary: TestPrimary;
    let smarthost: TestPrimary;
    beforeEach(async () => {
      primary = new TestPrimary(await freePort());
      smarthost = new TestPrimary(await freePort());
      await smarthost.start();
    });
    afterEach(async () => {
      await primary.stop();
      await smarthost.stop();
    });
    const forged = (i: number) => `forged${i}@spam${i}.example`;
    const dsnTo = `dsn: { relay: { host: 127.0.0.1, port: ${0} } }`;

    it('defers every uncached address of a domain without a list (450 4.1.1): nothing accepted, no DSN', async () => {
      mx = await startTestDaemon({ primaryPort: primary.port, extra: `relay: { probeInterval: 0.2 }\n${dsnTo.replace('0 }', `${smarthost.port} }`)}` });
      for (let i = 0; i < 100; i++) {
        const [reply] = await rcptReplies(mx.port, forged(i), [`victim${i}@d3.example`]);
        assert.deepEqual(pick(reply), [450, '4.1.1'], `message ${i}: ${reply.text}`);
      }
      assert.deepEqual(queuedIds(mx.spoolDir), []);
      for (let i = 0; i < 100; i++) primary.rcptReplies.set(`victim${i}@d3.example`, [550, '5.1.1 no such user']);
      await primary.start();
      await waitFor(() => mx!.logs.some((line) => line.event === 'primary_up'));
      assert.equal(smarthost.received.length, 0);
    });

    it('with verify.unverifiable: accept, counts every DSN to an unauthenticated sender, and returns headers only', async () => {
      mx = await startTestDaemon({
        primaryPort: primary.port,
        extra: `relay: { probeInterval: 0.2 }\nverify: { unverifiable: accept }\n${dsnTo.replace('0 }', `${smarthost.port} }`)}`,
      });
      const spam = message('buy now', 'SPAM BODY '.repeat(200));
      for (let i = 0; i < 10; i++) {
        const { client } = await SmtpClient.session(mx.port);
        for (const line of [`MAIL FROM:<${forged(i)}> RET=FULL`, `RCPT TO:<victim${i}@d3.example>`, 'DATA']) await client.command(line);
        assert.equal((await client.data(spam)).code, 250);
        await client.quit();
        primary.rcptReplies.set(`victim${i}@d3.example`, [550, '5.1.1 no such user']);
      }
      await primary.start();
      await waitFor(() => smarthost.received.length === 10, 10_000);
      for (const dsn of smarthost.received) {
        const text = dsn.data.toString('latin1');
        assert.match(text, /text\/rfc822-headers/);
        assert.doesNotMatch(text, /SPAM BODY/, 'the spam is not carried back');
      }
      const metrics = await mx.daemon.metrics.registry.metrics();
      assert.match(metrics, /^secondarymx_dsn_unauthenticated_total 10$/m);
    });
  });

  describe('the probes', () => {
    let primary: TestPrimary;
    beforeEach(async () => {
      primary = new TestPrimary(await freePort());
      await primary.start();
    });
    afterEach(() => primary.stop());

    it('go through verify.concurrency reused sessions, and one probe answers every client asking the same address', async () => {
      mx = await startTestDaemon({
        primaryPort: primary.port,
        extra: 'verify: { concurrency: 2, maxPerSecond: 1000, perClientPerMinute: 1000 }\nlimits: { connectionsPerClient: 100 }',
      });
      const addresses = Array.from({ length: 50 }, (_, i) => `user${i}@d3.example`);
      const sessions = await Promise.all(Array.from({ length: 10 }, () => rcptReplies(mx!.port, 's@remote.example', addresses)));
      assert.ok(sessions.flat().every((reply) => reply.code === 250));
      assert.ok(primary.peakConnections <= 2, `${primary.peakConnections} probe sessions at once`);
      assert.ok(primary.connections <= 4, `${primary.connections} probe sessions opened in all (reused, RSET between probes)`);
      assert.equal(new Set(primary.rcptCommands).size, 50);
      assert.equal(primary.rcptCommands.length, 50, 'each address asked once');
    });

    it('reach the primary at most verify.maxPerSecond in any second, however long a session takes to open', async () => {
      mx = await startTestDaemon({
        primaryPort: primary.port,
        extra: 'verify: { concurrency: 2, maxPerSecond: 5, perClientPerMinute: 1000 }\nlimits: { connectionsPerClient: 100 }',
      });
      const sessions = await Promise.all(Array.from({ length: 8 }, (_, i) => rcptReplies(mx!.port, 's@remote.example', [`paced${i}@d3.example`])));
      assert.ok(sessions.flat().every((reply) => reply.code === 250));
      const times = primary.rcptTimes;
      assert.equal(times.length, 8);
      // Counted where they arrive; 10 ms of the window left for the loopback's own jitter.
      const busiest = Math.max(...times.map((at) => times.filter((other) => other >= at && other < at + 990).length));
      assert.ok(busiest <= 5, `${busiest} probes within a second at the primary: ${times.map((at) => at - times[0]).join(' ')}`);
    });

    it('past verify.perClientPerMinute, defers a client’s unknown addresses without a probe', async () => {
      mx = await startTestDaemon({ primaryPort: primary.port, extra: 'verify: { perClientPerMinute: 5 }' });
      const replies = await rcptReplies(
        mx.port,
        's@remote.example',
        Array.from({ length: 8 }, (_, i) => `dict${i}@d3.example`),
      );
      assert.deepEqual(
        replies.map((reply) => reply.code),
        [250, 250, 250, 250, 250, 450, 450, 450],
      );
      assert.match(replies[5].text, /too many unverified addresses from your address/);
      assert.equal(primary.rcptCommands.length, 5);
    });
  });
});
