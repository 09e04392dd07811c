import assert from 'node:assert/strict';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dkimSign } from 'mailauth';
import { runCli } from './helpers/cli.js';
import { startTestDaemon, type TestDaemon } from './helpers/daemon.js';
import { TestDnsServer } from './helpers/dns-server.js';
import { freePort, TestPrimary } from './helpers/primary.js';
import { useRspamd } from './helpers/rspamd.js';
import { attempt, message, pick, queuedId, SmtpClient } from './helpers/smtp-client.js';
import { queuedEnvelope, queuedIds, queuedMessage } from './helpers/spool-files.js';
import { waitFor } from './helpers/wait.js';

/** The first reply a client gets on connecting (the greeting, or a refusal), and how long it took. */
async function firstReply(port: number): Promise<{ code: number; enhanced: string; text: string; ms: number; client: SmtpClient }> {
  const started = Date.now();
  const client = await SmtpClient.connect(port);
  const reply = await client.reply();
  return { ...reply, ms: Date.now() - started, client };
}

async function metric(mx: TestDaemon, name: string): Promise<string> {
  return mx.daemon.metrics.registry.getSingleMetricAsString(name);
}

describe('screen: DNS lists and the greeting pass (postscreen)', () => {
  const dns = new TestDnsServer();
  let mx: TestDaemon | undefined;
  before(async () => {
    await dns.start();
    dns.zones.set('1.0.0.127.bl.test', { a: ['127.0.0.2'] });
    dns.zones.set('1.0.0.127.other.test', { a: ['127.0.0.9'] }); // a reply outside its filter: does not count
    dns.zones.set('1.0.0.127.wl.test', { a: ['127.0.10.2'] });
    dns.zones.set('spf-fail.test', { txt: ['v=spf1 -all'] });
  });
  afterEach(async () => {
    await mx?.stop();
    mx = undefined;
  });
  after(() => dns.stop());
  const dnsYaml = () => `dns: { servers: ["${dns.server}"] }`;

  it('refuses a client listed over the threshold with 554 5.7.1, one log line and one metric, and caches the answer', async () => {
    mx = await startTestDaemon({ extra: `${dnsYaml()}\nscreen: { dnsblSites: ["bl.test*3", "other.test=127.0.0.[2..3]*5"], dnsblThreshold: 3 }` });
    const first = await firstReply(mx.port);
    assert.deepEqual(pick(first), [554, '5.7.1']);
    assert.match(first.text, /blocked using DNS lists/);
    await first.client.closedByServer();
    const lines = mx.logs.filter((line) => line.event === 'screen' && line.screen === 'dnsbl');
    assert.deepEqual(
      lines.map((line) => [line.decision, line.score, line.listedBy]),
      [['reject', 3, ['bl.test*3']]],
    );
    assert.match(await metric(mx, 'secondarymx_screen_decisions_total'), /screen="dnsbl",decision="reject"} 1/);
    const asked = dns.queries.filter((query) => query === 'A 1.0.0.127.bl.test').length;
    const second = await firstReply(mx.port);
    assert.equal(second.code, 554);
    assert.equal(dns.queries.filter((query) => query === 'A 1.0.0.127.bl.test').length, asked, 'the second connection was answered from the cache');
  });

  it('defers a listed client with 450 4.7.1 when screen.dnsblAction is defer, and serves one under the threshold', async () => {
    mx = await startTestDaemon({ extra: `${dnsYaml()}\nscreen: { dnsblSites: ["bl.test"], dnsblAction: defer }` });
    assert.deepEqual(pick(await firstReply(mx.port)), [450, '4.7.1']);
    await mx.stop();
    mx = await startTestDaemon({ extra: `${dnsYaml()}\nscreen: { dnsblSites: ["bl.test"], dnsblThreshold: 2 }` });
    const served = await firstReply(mx.port);
    assert.equal(served.code, 220);
    served.client.destroy();
  });

  it('lets an allow-listed client skip the other screens (its forged SPF is not checked)', async () => {
    mx = await startTestDaemon({ extra: `${dnsYaml()}\nscreen: { dnsblSites: ["wl.test=127.0.[0..255].[1..3]*-2", "bl.test"], dnsblAllowThreshold: -1 }` });
    const allowed = await attempt(mx.port, 'x@spf-fail.test', ['alice@d1.example'], message('allowed'));
    assert.equal(allowed.code, 250, allowed.text);
    assert.ok(mx.logs.some((line) => line.event === 'screen' && line.screen === 'dnsbl' && line.decision === 'allow' && line.score === -1));
    await mx.stop();
    mx = await startTestDaemon({ extra: `${dnsYaml()}\nscreen: { dnsblSites: ["bl.test*0"] }` });
    assert.deepEqual(pick(await attempt(mx.port, 'x@spf-fail.test', ['alice@d1.example'], message('checked'))), [550, '5.7.23']);
  });

  it('greets a client that waited once without the pause, within screen.passTtl, across a restart', async () => {
    const spoolDir = mkdtempSync(join(tmpdir(), 'secondarymx-spool-'));
    const extra = `${dnsYaml()}\nlimits: { greetingPause: 1.5 }`;
    try {
      mx = await startTestDaemon({ extra, spoolDir });
      const first = await firstReply(mx.port);
      assert.equal(first.code, 220);
      assert.ok(first.ms >= 1400, `first greeting after ${first.ms} ms`);
      assert.equal((await first.client.command('EHLO client.example')).code, 250);
      assert.equal((await first.client.command('MAIL FROM:<>')).code, 250); // the client waited: it earns its pass
      await first.client.quit();
      const second = await firstReply(mx.port);
      assert.ok(second.ms < 1000, `greeting with a pass after ${second.ms} ms`);
      await second.client.quit();
      await mx.stop();
      assert.ok(existsSync(join(spoolDir, 'greeting-passes.json')));
      mx = await startTestDaemon({ extra, spoolDir });
      const afterRestart = await firstReply(mx.port);
      assert.ok(afterRestart.ms < 1000, `greeting with a pass after a restart after ${afterRestart.ms} ms`);
      await afterRestart.client.quit();
    } finally {
      rmSync(spoolDir, { recursive: true, force: true });
    }
  });
});

describe('screen: with a real primary', () => {
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

  describe('screen: sender authentication (mailauth: SPF, DKIM, DMARC)', () => {
    const dns = new TestDnsServer();
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    before(async () => {
      await dns.start();
      dns.zones.set('spf-fail.test', { txt: ['v=spf1 -all'] });
      dns.zones.set('spf-soft.test', { txt: ['v=spf1 ~all'] });
      dns.zones.set('spf-pass.test', { txt: ['v=spf1 ip4:127.0.0.0/8 -all'] });
      dns.zones.set('signed.test', { txt: [] });
      dns.zones.set('sel._domainkey.signed.test', { txt: [`v=DKIM1; k=rsa; p=${publicKey.export({ type: 'spki', format: 'der' }).toString('base64')}`] });
      dns.zones.set('_dmarc.signed.test', { txt: ['v=DMARC1; p=reject'] });
    });
    after(() => dns.stop());
    const start = (extra = '', spoolDir?: string) =>
      startTestDaemon({ primaryPort: primary.port, spoolDir, extra: `dns: { servers: ["${dns.server}"] }\nrelay: { probeInterval: 0.2 }\n${extra}` });

    it('refuses an SPF fail at MAIL FROM with 550 5.7.23, before any data', async () => {
      mx = await start();
      assert.deepEqual(pick(await attempt(mx.port, 'forger@spf-fail.test', ['alice@d1.example'], message('forged'))), [550, '5.7.23']);
      assert.deepEqual(queuedIds(mx.spoolDir), []);
      assert.ok(mx.logs.some((line) => line.event === 'screen' && line.screen === 'spf' && line.decision === 'reject' && line.result === 'fail'));
      assert.match(await metric(mx, 'secondarymx_refused_total'), /reason="spf"} 1/);
    });

    it('tags a softfail: Authentication-Results with our host name goes to the primary before the stored bytes, SIZE included', async () => {
      mx = await start();
      const reply = await attempt(mx.port, 'someone@spf-soft.test', ['alice@d1.example'], message('soft'));
      assert.equal(reply.code, 250, reply.text);
      await waitFor(() => primary.received.length === 1);
      const delivered = primary.received[0].data.toString('latin1');
      assert.match(delivered, /^Received-SPF: softfail /);
      assert.match(delivered, /^Authentication-Results: mx2\.test\.example;\r\n(?: .*\r\n)*? spf=softfail /m);
      assert.match(delivered, /\r\nReceived: from client\.example /);
      assert.equal(primary.received[0].mailArgs.SIZE, String(primary.received[0].data.length));
      const queued = mx.logs.find((line) => line.event === 'queued');
      assert.deepEqual([queued?.spf, queued?.dmarc], ['softfail', 'none']);
    });

    it('checks a signed message too large to stay in memory (read back from its temp file) as it checks a small one', async () => {
      mx = await start();
      const body = message('large', `${'x'.repeat(998)}\r\n`.repeat(300)).replace('sender@remote.example', 'news@signed.test'); // 300 KB: written out before the checks run
      const key = { signingDomain: 'signed.test', selector: 'sel', privateKey: privateKey.export({ type: 'pkcs8', format: 'pem' }) };
      const signed = await dkimSign(body, { ...key, signatureData: [key] });
      const reply = await attempt(mx.port, 'someone@spf-pass.test', ['alice@d1.example'], signed.signatures + body);
      assert.equal(reply.code, 250, reply.text);
      const envelope = queuedEnvelope(mx.spoolDir, queuedId(reply.text));
      assert.match(envelope.addedHeaders!, / spf=pass /);
      assert.match(envelope.addedHeaders!, / dkim=pass header\.i=@signed\.test /); // the whole body was hashed
      assert.ok(envelope.size > 300_000);
    });

    describe('bounded DKIM work per message', () => {
      const txtOf = (key: KeyObject) => `v=DKIM1; k=rsa; p=${key.export({ type: 'spki', format: 'der' }).toString('base64')}`;
      const sign = async (body: string, selectors: string[], key = privateKey) =>
        (
          await dkimSign(body, {
            signatureData: selectors.map((selector) => ({ signingDomain: 'signed.test', selector, privateKey: key.export({ type: 'pkcs8', format: 'pem' }) })),
          } as Parameters<typeof dkimSign>[1])
        ).signatures;
      const keyQueries = () => dns.queries.filter((query) => query.includes('._domainkey.'));

      it('verifies at most auth.maxSignatures signatures (5), looking up only their keys, and says how many it left', async () => {
        const selectors = Array.from({ length: 30 }, (_, i) => `many${i}`);
        for (const selector of selectors) dns.zones.set(`${selector}._domainkey.signed.test`, { txt: [txtOf(publicKey)] });
        mx = await start();
        const body = message('thirty signatures', 'x').replace('sender@remote.example', 'news@signed.test');
        const before = keyQueries().length;
        const reply = await attempt(mx.port, 'news@signed.test', ['alice@d1.example'], (await sign(body, selectors)) + body);
        assert.equal(reply.code, 250, reply.text);
        assert.equal(keyQueries().length - before, 5, 'five keys looked up, not thirty');
        const headers = queuedEnvelope(mx.spoolDir, queuedId(reply.text)).addedHeaders!;
        assert.equal(headers.match(/dkim=pass/g)?.length, 5);
        assert.match(headers, /dkim=neutral \(too many signatures, 25 not verified\)/);
        assert.match(headers, / dmarc=pass /);
      });

      it('verifies the signatures aligned with the From domain first, wherever they sit', async () => {
        const others = Array.from({ length: 8 }, (_, i) => `other${i}`);
        mx = await start();
        const body = message('aligned last', 'y').replace('sender@remote.example', 'news@signed.test');
        const foreign = (
          await dkimSign(body, {
            signatureData: others.map((selector) => ({ signingDomain: 'esp.test', selector, privateKey: privateKey.export({ type: 'pkcs8', format: 'pem' }) })),
          } as Parameters<typeof dkimSign>[1])
        ).signatures;
        const reply = await attempt(mx.port, 'news@signed.test', ['alice@d1.example'], foreign + (await sign(body, ['sel'])) + body);
        assert.equal(reply.code, 250, reply.text);
        assert.match(queuedEnvelope(mx.spoolDir, queuedId(reply.text)).addedHeaders!, / dkim=pass header\.i=@signed\.test /);
      });

      it('refuses to verify with a key whose public exponent is not a small one (dkim=neutral, invalid public key)', async () => {
        const big = generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 0x7fffffff });
        dns.zones.set('bigexp._domainkey.signed.test', { txt: [txtOf(big.publicKey)] });
        mx = await start();
        const body = message('big exponent', 'z').replace('sender@remote.example', 'news@signed.test');
        const reply = await attempt(mx.port, 'news@signed.test', ['alice@d1.example'], (await sign(body, ['bigexp'], big.privateKey)) + body);
        assert.deepEqual(pick(reply), [550, '5.7.26'], 'not verified: DMARC p=reject applies');
        assert.deepEqual(mx.logs.find((line) => line.event === 'message_refused')?.dkim, ['neutral']);
      });

      it('looks up the keys of all its signatures at once: selectors that never answer cost one wait, and the result is temperror', async () => {
        for (const selector of ['mute0', 'mute1', 'mute2']) dns.zones.set(`${selector}._domainkey.signed.test`, { silent: true });
        mx = await start('auth: { dnsTimeout: 1 }');
        const body = message('mute keys', 'w').replace('sender@remote.example', 'news@no-dmarc.test'); // no DMARC policy to apply
        const reply = await attempt(mx.port, 'someone@spf-pass.test', ['alice@d1.example'], (await sign(body, ['mute0', 'mute1', 'mute2'])) + body);
        assert.equal(reply.code, 250, reply.text);
        const queued = mx.logs.find((line) => line.event === 'queued');
        assert.deepEqual(queued?.dkim, ['temperror', 'temperror', 'temperror']);
      });

      it('accepts a message whose checks pass limits.checkTimeout, tagged dkim=temperror and dmarc=temperror, not refused', async () => {
        dns.zones.set('mute9._domainkey.signed.test', { silent: true });
        mx = await start('auth: { dnsTimeout: 5 }\nlimits: { checkTimeout: 1 }');
        // signed.test publishes p=reject: a finished check would refuse this message (its signature cannot be verified).
        const body = message('deadline', 'v').replace('sender@remote.example', 'news@signed.test');
        const reply = await attempt(mx.port, 'news@signed.test', ['alice@d1.example'], (await sign(body, ['mute9'])) + body);
        assert.equal(reply.code, 250, reply.text);
        const queued = mx.logs.find((line) => line.event === 'queued');
        assert.deepEqual([queued?.dkim, queued?.dmarc, queued?.authUnfinished], [['temperror'], 'temperror', 'checks unfinished after 1 s']);
        const headers = queuedEnvelope(mx.spoolDir, queuedId(reply.text)).addedHeaders!;
        assert.match(headers, /^Authentication-Results: mx2\.test\.example;\r\n dkim=temperror \(checks unfinished after 1 s\);\r\n spf=/m);
        assert.match(headers, /;\r\n dmarc=temperror \(checks unfinished after 1 s\)\r\n$/);
        assert.match(await metric(mx, 'secondarymx_screen_decisions_total'), /screen="dmarc",decision="unavailable"} 1/);
      });

      it('holds an unsigned message (checked on the SMTP thread: its header only) to the same deadline', async () => {
        dns.zones.set('_dmarc.mute-dmarc.test', { silent: true });
        mx = await start('auth: { dnsTimeout: 5 }\nlimits: { checkTimeout: 1 }');
        const body = message('unsigned, deadline', 't').replace('sender@remote.example', 'news@mute-dmarc.test');
        const reply = await attempt(mx.port, 'someone@spf-pass.test', ['alice@d1.example'], body);
        assert.equal(reply.code, 250, reply.text);
        const queued = mx.logs.find((line) => line.event === 'queued');
        assert.deepEqual([queued?.dmarc, queued?.authUnfinished], ['temperror', 'checks unfinished after 1 s']);
      });

      it("answers other clients while a message's checks run (in a check thread, not on the SMTP thread)", async () => {
        // 8,000 signatures: mailauth's header parsing holds its thread for seconds; on the SMTP thread, nobody was answered meanwhile.
        const selectors = Array.from({ length: 8000 }, (_, i) => `busy${i}`);
        mx = await start('limits: { headerSize: 8000000, checkTimeout: 120 }');
        const body = message('many', 'u').replace('sender@remote.example', 'news@no-dmarc.test');
        const signature = await sign(body, ['template']);
        const fields = selectors.map((selector) => signature.replace('s=template;', `s=${selector};`)).join('');
        const { client: hostile } = await SmtpClient.session(mx.port);
        const { client: other } = await SmtpClient.session(mx.port);
        try {
          for (const line of ['MAIL FROM:<news@no-dmarc.test>', 'RCPT TO:<alice@d1.example>']) assert.equal((await hostile.command(line)).code, 250);
          assert.equal((await hostile.command('DATA')).code, 354);
          let hostileAnswered = false;
          hostile.write(`${fields}${body}.\r\n`);
          const final = hostile.reply(120_000).then((reply) => ((hostileAnswered = true), reply)); // seconds on a loaded machine
          const busy = async () => /state="busy"} 1$/m.test(await metric(mx!, 'secondarymx_check_threads'));
          await waitFor(busy, 20_000); // the message is in, and a check thread is held by it
          assert.equal((await other.command('NOOP')).code, 250);
          assert.ok(await busy(), 'the NOOP was answered while the check thread was held');
          assert.equal(hostileAnswered, false);
          assert.equal((await final).code, 250);
        } finally {
          hostile.destroy();
          await other.quit();
        }
      });
    });

    it('refuses an unsigned message whose From domain publishes p=reject and whose SPF domain is not aligned (550 5.7.26)', async () => {
      mx = await start();
      const body = message('unsigned', 'x\r\n'.repeat(100)).replace('sender@remote.example', 'news@signed.test');
      assert.deepEqual(pick(await attempt(mx.port, 'someone@spf-pass.test', ['alice@d1.example'], body)), [550, '5.7.26']);
      const refused = mx.logs.find((line) => line.event === 'message_refused');
      assert.deepEqual([refused?.spf, refused?.dkim, refused?.dmarc], ['pass', ['none'], 'fail']);
    });

    it('accepts a DKIM-signed message whose DMARC passes, and refuses it altered with 550 5.7.26 (p=reject)', async () => {
      mx = await start();
      const body = message('signed', 'Signed body.').replace('sender@remote.example', 'news@signed.test');
      const key = { signingDomain: 'signed.test', selector: 'sel', privateKey: privateKey.export({ type: 'pkcs8', format: 'pem' }) };
      const signed = await dkimSign(body, { ...key, signatureData: [key] }); // mailauth signs with signatureData; its types want the top level too
      assert.deepEqual(signed.errors, []);
      const good = await attempt(mx.port, 'news@signed.test', ['alice@d1.example'], signed.signatures + body);
      assert.equal(good.code, 250, good.text);
      const envelope = queuedEnvelope(mx.spoolDir, queuedId(good.text));
      assert.match(envelope.addedHeaders!, / dkim=pass header\.i=@signed\.test /);
      assert.match(envelope.addedHeaders!, / dmarc=pass /);
      const altered = signed.signatures + body.replace('Signed body.', 'Altered body.');
      assert.deepEqual(pick(await attempt(mx.port, 'news@signed.test', ['alice@d1.example'], altered)), [550, '5.7.26']);
      const refused = mx.logs.find((line) => line.event === 'message_refused');
      assert.deepEqual([refused?.dmarc, refused?.dkim], ['fail', ['neutral']]); // mailauth: a body hash mismatch is "neutral"
      assert.equal(queuedIds(mx.spoolDir).filter((id) => id !== queuedId(good.text)).length, 0);
    });

    it('never sends a DSN to a sender whose SPF failed (auth.spf.fail: tag), and counts it', async () => {
      primary.rcptReplies.set('alice@d1.example', [550, '5.1.1 no such user']);
      mx = await start('auth: { spf: { fail: tag } }');
      const reply = await attempt(mx.port, 'forger@spf-fail.test', ['alice@d1.example'], message('forged tagged'));
      assert.equal(reply.code, 250, reply.text);
      const id = queuedId(reply.text);
      await waitFor(() => mx!.logs.some((line) => line.event === 'dsn_suppressed'));
      const suppressed = mx.logs.find((line) => line.event === 'dsn_suppressed');
      assert.deepEqual([suppressed?.queueId, suppressed?.reason, suppressed?.to], [id, 'spf-fail', 'forger@spf-fail.test']);
      await waitFor(() => queuedIds(mx!.spoolDir).length === 0);
      assert.ok(!mx.logs.some((line) => line.event === 'dsn_queued'));
      assert.match(await metric(mx, 'secondarymx_dsn_suppressed_total'), /reason="spf-fail"} 1/);
    });

    it('sends at most dsn.maxPerDomainPerHour DSNs to one sender domain, and a restart does not reset the count', async () => {
      primary.rcptReplies.set('alice@d1.example', [550, '5.1.1 no such user']);
      const smarthost = new TestPrimary(await freePort());
      await smarthost.start();
      const spoolDir = mkdtempSync(join(tmpdir(), 'secondarymx-dsn-rate-'));
      const limited = () => start(`dsn: { relay: { host: 127.0.0.1, port: ${smarthost.port} }, maxPerDomainPerHour: 1 }`, spoolDir);
      try {
        mx = await limited();
        for (const subject of ['one', 'two', 'three'])
          assert.equal((await attempt(mx.port, 'someone@spf-pass.test', ['alice@d1.example'], message(subject))).code, 250);
        await waitFor(() => mx!.logs.filter((line) => line.event === 'dsn_suppressed').length === 2);
        await waitFor(() => smarthost.received.length === 1);
        assert.equal(mx.logs.filter((line) => line.event === 'dsn_queued').length, 1);
        assert.match(await metric(mx, 'secondarymx_dsn_suppressed_total'), /reason="rate"} 2/);
        await mx.stop();
        mx = await limited();
        assert.equal((await attempt(mx.port, 'someone@spf-pass.test', ['alice@d1.example'], message('after a restart'))).code, 250);
        await waitFor(() => mx!.logs.some((line) => line.event === 'dsn_suppressed'));
        assert.equal(mx.logs.find((line) => line.event === 'dsn_suppressed')?.reason, 'rate');
        assert.equal(smarthost.received.length, 1);
      } finally {
        await smarthost.stop();
        rmSync(spoolDir, { recursive: true, force: true });
      }
    });
  });

  describe('screen: rspamd before the 250', function () {
    const { dns, rspamd } = useRspamd(this);
    const start = (rspamdYaml: string) =>
      startTestDaemon({ primaryPort: primary.port, extra: `dns: { servers: ["${dns.server}"] }\nrelay: { probeInterval: 0.2 }\nrspamd: ${rspamdYaml}` });

    it("refuses GTUBE with 550 5.7.1 and rspamd's message, and queues nothing", async () => {
      mx = await start(`{ url: "${rspamd().url}" }`);
      const gtube = message('gtube', 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X');
      const reply = await attempt(mx.port, 'sender@remote.example', ['alice@d1.example'], gtube);
      assert.deepEqual(pick(reply), [550, '5.7.1']);
      assert.match(reply.text, /Gtube pattern/);
      assert.deepEqual(queuedIds(mx.spoolDir), []);
      assert.deepEqual(mx.logs.find((line) => line.event === 'message_refused')?.rspamd, 'reject');
      assert.match(await metric(mx, 'secondarymx_refused_total'), /reason="spam"} 1/);
    });

    it('answers soft reject with 451 4.7.1 and its message, and queues nothing', async () => {
      mx = await start(`{ url: "${rspamd().url}" }`);
      const reply = await attempt(mx.port, 'sender@remote.example', ['alice@d1.example'], message('SOFTWORD now'));
      assert.deepEqual(pick(reply), [451, '4.7.1']);
      assert.match(reply.text, /Busy, come back later/);
      assert.deepEqual(queuedIds(mx.spoolDir), []);
    });

    it('adds its verdict to a clean message and X-Spam to a spammy one; never bounces the spammy one', async () => {
      primary.rcptReplies.set('bob.smith@d1.example', [550, '5.1.1 no such user']);
      mx = await start(`{ url: "${rspamd().url}" }`);
      const clean = await attempt(mx.port, 'sender@remote.example', ['alice@d1.example'], message('hello'));
      assert.equal(clean.code, 250, clean.text);
      const cleanMessage = queuedMessage(mx.spoolDir, queuedId(clean.text)).toString('latin1');
      assert.match(cleanMessage, /^X-Rspamd-Action: no action\r\n/m);
      assert.doesNotMatch(cleanMessage, /^X-Spam: Yes/m);
      const spammy = await attempt(mx.port, 'sender@remote.example', ['Bob.Smith@d1.example'], message('cheap SPAMWORD here'));
      assert.equal(spammy.code, 250, spammy.text);
      const id = queuedId(spammy.text);
      assert.match(queuedMessage(mx.spoolDir, id).toString('latin1'), /^X-Spam: Yes\r\n/m);
      assert.equal(queuedEnvelope(mx.spoolDir, id).noBounce, 'spam');
      await waitFor(() => mx!.logs.some((line) => line.event === 'dsn_suppressed' && line.queueId === id && line.reason === 'spam'));
      await waitFor(() => primary.received.length === 1);
      assert.match(primary.received[0].data.toString('latin1'), /^X-Rspamd-Action: no action\r\n/m);
    });

    it('accepts and logs when rspamd is down (onFailure: accept), answers 451 4.7.1 with onFailure: defer', async () => {
      const closed = await freePort();
      mx = await start(`{ url: "http://127.0.0.1:${closed}" }`);
      const accepted = await attempt(mx.port, 'sender@remote.example', ['alice@d1.example'], message('rspamd down'));
      assert.equal(accepted.code, 250, accepted.text);
      assert.ok(mx.logs.some((line) => line.event === 'rspamd_unavailable' && line.queueId === queuedId(accepted.text)));
      await mx.stop();
      mx = await start(`{ url: "http://127.0.0.1:${closed}", onFailure: defer }`);
      assert.deepEqual(pick(await attempt(mx.port, 'sender@remote.example', ['alice@d1.example'], message('rspamd down, defer'))), [451, '4.7.1']);
      assert.deepEqual(queuedIds(mx.spoolDir), []);
    });

    it('gives up on an rspamd that does not answer within rspamd.timeout', async () => {
      // The one stand-in here: a real rspamd cannot be made to hang on demand.
      const silent: Server = createServer(() => undefined);
      await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
      try {
        const port = (silent.address() as { port: number }).port;
        mx = await start(`{ url: "http://127.0.0.1:${port}", timeout: 0.5, onFailure: defer }`);
        assert.deepEqual(pick(await attempt(mx.port, 'sender@remote.example', ['alice@d1.example'], message('slow rspamd'))), [451, '4.7.1']);
        assert.match(String(mx.logs.find((line) => line.event === 'rspamd_unavailable')?.reason), /no answer within 0\.5 s/);
      } finally {
        silent.close();
      }
    });
  });

  describe('screen: recipient verification and the primary-up mode', () => {
    beforeEach(() => primary.rcptReplies.set('gone@d3.example', [550, '5.1.1 <gone@d3.example>: user unknown in virtual mailbox table']));

    const rcpt = async (port: number, to: string) => {
      const { client } = await SmtpClient.session(port);
      try {
        await client.command('MAIL FROM:<sender@remote.example>');
        return await client.command(`RCPT TO:<${to}>`);
      } finally {
        await client.quit();
      }
    };

    it('takes the primary for down when an RCPT probe cannot reach it: status says so, and it is probed until it answers', async () => {
      mx = await startTestDaemon({ primaryPort: primary.port, extra: 'relay: { probeInterval: 0.2 }' });
      await primary.stop(); // nothing queued: only the probe finds out
      const before = await runCli(['status', '--config', mx.file]);
      assert.doesNotMatch(before.stdout, /DOWN/);
      await rcpt(mx.port, 'someone@d3.example');
      await waitFor(() => mx!.logs.some((line) => line.event === 'primary_down' && /^RCPT probe: /.test(String(line.reason))));
      const during = await runCli(['status', '--config', mx.file]);
      assert.match(during.stdout, new RegExp(`^primary 127\\.0\\.0\\.1:${primary.port}: DOWN \\(probing\\)$`, 'm'));
      await primary.start();
      await waitFor(() => mx!.logs.some((line) => line.event === 'primary_up'));
    });

    it('asks the primary about addresses of a domain without a list, remembers its answers (across a restart), and uses them while it is down', async () => {
      const spoolDir = mkdtempSync(join(tmpdir(), 'secondarymx-spool-'));
      try {
        mx = await startTestDaemon({ primaryPort: primary.port, spoolDir });
        const gone = await rcpt(mx.port, 'gone@d3.example');
        assert.deepEqual(pick(gone), [550, '5.1.1']);
        assert.match(gone.text, /the primary says: 550 .*<gone@d3\.example>: user unknown in virtual mailbox table/);
        assert.equal((await rcpt(mx.port, 'real@d3.example')).code, 250);
        const probes = primary.connections;
        assert.equal((await rcpt(mx.port, 'gone@d3.example')).code, 550);
        assert.equal(primary.connections, probes, 'the second answer came from the cache');
        await mx.stop();
        await primary.stop();
        mx = await startTestDaemon({ primaryPort: primary.port, spoolDir });
        assert.equal((await rcpt(mx.port, 'gone@d3.example')).code, 550, 'remembered across the restart, primary down');
        assert.deepEqual(pick(await rcpt(mx.port, 'unknown@d3.example')), [450, '4.1.1'], 'unknown and not cached: nobody can tell, deferred');
        assert.equal((await rcpt(mx.port, 'alice@d1.example')).code, 250, 'listed domains are never probed');
      } finally {
        rmSync(spoolDir, { recursive: true, force: true });
      }
    });

    it('answers 451 4.7.1 once the primary has been seen up for screen.deferWhilePrimaryUp, and accepts again once it is down', async () => {
      mx = await startTestDaemon({
        primaryPort: primary.port,
        extra: 'relay: { probeInterval: 0.2 }\nscreen: { deferWhilePrimaryUp: 1 }\nverify: { enabled: false }',
      });
      assert.equal((await rcpt(mx.port, 'alice@d1.example')).code, 250, 'not yet seen up long enough');
      await waitFor(async () => (await rcpt(mx!.port, 'alice@d1.example')).code === 451, 5000);
      assert.deepEqual(pick(await rcpt(mx.port, 'alice@d1.example')), [451, '4.7.1']);
      await primary.stop();
      await waitFor(() => mx!.logs.some((line) => line.event === 'primary_down'));
      assert.equal((await rcpt(mx.port, 'alice@d1.example')).code, 250);
    });
  });
});
