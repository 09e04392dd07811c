import assert from 'node:assert/strict';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MAX_ANSWER_BYTES, MAX_RSPAMD_RECIPIENTS, requestHeaders } from '../src/screen/rspamd.js';
import { startTestDaemon, type TestDaemon } from './helpers/daemon.js';
import { TestDnsServer } from './helpers/dns-server.js';
import { useRspamd } from './helpers/rspamd.js';
import { attempt, message, pick, SmtpClient } from './helpers/smtp-client.js';
import { queuedIds } from './helpers/spool-files.js';
import { waitFor } from './helpers/wait.js';

const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';

async function metrics(mx: TestDaemon): Promise<string> {
  return mx.daemon.metrics.registry.metrics();
}

describe('verdicts that cannot be bypassed', () => {
  let mx: TestDaemon | undefined;
  afterEach(async () => {
    await mx?.stop();
    mx = undefined;
  });

  describe('rspamd: a request it always takes', function () {
    const { dns, rspamd } = useRspamd(this);

    it('names at most 100 recipients within 32 KB of headers, whatever the envelope', () => {
      const long = (i: number) => `${'a'.repeat(60)}+${i}@${'d'.repeat(60)}.${'e'.repeat(60)}.${'f'.repeat(60)}.example`;
      const headers = requestHeaders({
        ip: '127.0.0.1',
        helo: 'h'.repeat(2000),
        sender: 's'.repeat(1500),
        recipients: Array.from({ length: 950 }, (_, i) => long(i)),
        queueId: 'X',
        hostname: 'mx2.test.example',
      });
      const bytes = Object.entries(headers).reduce((sum, [name, value]) => sum + [value].flat().reduce((n, v) => n + name.length + v.length + 4, 0), 0);
      assert.ok(bytes <= 32 * 1024, `${bytes} bytes`);
      assert.ok((headers.Rcpt as string[]).length > 0 && (headers.Rcpt as string[]).length <= MAX_RSPAMD_RECIPIENTS);
      assert.equal(headers.From, undefined, 'no address is 1500 bytes long');
    });

    it('refuses GTUBE sent to 1000 recipients of 64-octet local parts (a Rcpt header each made rspamd hang up, and onFailure: accept queued it)', async () => {
      mx = await startTestDaemon({ extra: `dns: { servers: ["${dns.server}"] }\nrspamd: { url: "${rspamd().url}", onFailure: accept }` });
      const recipients = Array.from({ length: 1000 }, (_, i) => `alice+${'x'.repeat(54)}${String(i).padStart(4, '0')}@d1.example`);
      const reply = await attempt(mx.port, 'sender@remote.example', recipients, message('gtube to many', GTUBE));
      assert.deepEqual(pick(reply), [550, '5.7.1'], reply.text);
      assert.deepEqual(queuedIds(mx.spoolDir), []);
      assert.ok(!mx.logs.some((line) => line.event === 'rspamd_unavailable'));
    });
  });

  describe('rspamd: answers we cannot read are no verdict', () => {
    let server: Server;
    let answer: (response: ServerResponse) => void;
    /** Bytes the hostile rspamd had written when its client hung up. */
    let writtenAtClose = 0;
    let url = '';
    before(async () => {
      server = createServer((request, response) => {
        request.resume();
        request.on('end', () => answer(response));
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    });
    after(() => new Promise<void>((resolve) => server.close(() => resolve())));

    const json = (text: string) => (response: ServerResponse) => {
      response.writeHead(200, { 'Content-Type': 'application/json' });
      response.end(text);
    };

    for (const [what, body] of [
      ['null', 'null'],
      ['a number', '42'],
      ['milter: null', '{"action":"no action","score":1,"milter":null}'],
      ['a numeric action', '{"action":5}'],
      ['a string score', '{"action":"no action","score":"high"}'],
      ['not JSON', 'Internal <b>oops</b>'],
    ] as const) {
      it(`takes ${what} for no verdict: accepted with onFailure: accept, 451 4.7.1 with defer, its own log line and metric`, async () => {
        answer = json(body);
        mx = await startTestDaemon({ extra: `rspamd: { url: "${url}", onFailure: accept }` });
        const accepted = await attempt(mx.port, 'sender@remote.example', ['alice@d1.example'], message('bad answer'));
        assert.equal(accepted.code, 250, accepted.text);
        assert.ok(mx.logs.some((line) => line.event === 'rspamd_bad_answer' && line.failure === 'bad_answer'));
        assert.ok(!mx.logs.some((line) => line.event === 'spool_write_failed'));
        assert.match(await metrics(mx), /^secondarymx_rspamd_failures_total\{failure="bad_answer"\} 1$/m);
        await mx.stop();
        mx = await startTestDaemon({ extra: `rspamd: { url: "${url}", onFailure: defer }` });
        assert.deepEqual(pick(await attempt(mx.port, 'sender@remote.example', ['alice@d1.example'], message('bad answer'))), [451, '4.7.1']);
      });
    }

    it('stops reading an answer past 1 MiB: no verdict, and the rest is never read', async () => {
      answer = (response) => {
        response.writeHead(200, { 'Content-Type': 'application/json' });
        const chunk = Buffer.alloc(1024 * 1024, ' ');
        let written = 0;
        response.on('close', () => (writtenAtClose = written));
        const more = () => {
          while (written < 400 * 1024 * 1024 && !response.destroyed) {
            written += chunk.length;
            if (!response.write(chunk)) return response.once('drain', more);
          }
          response.end();
        };
        response.write('{"action":"no action","padding":"');
        more();
      };
      mx = await startTestDaemon({ extra: `rspamd: { url: "${url}", onFailure: accept }` });
      const reply = await attempt(mx.port, 'sender@remote.example', ['alice@d1.example'], message('huge answer'));
      assert.equal(reply.code, 250, reply.text);
      assert.ok(mx.logs.some((line) => line.event === 'rspamd_bad_answer' && /over 1048576 bytes/.test(String(line.reason))));
      await waitFor(() => writtenAtClose > 0);
      assert.ok(writtenAtClose < 64 * MAX_ANSWER_BYTES, `rspamd wrote ${writtenAtClose} bytes before we hung up`);
    });
  });

  describe('DNS lists: only 127.0.0.0/8 lists, error codes mark a list broken, one deadline for all', () => {
    const dns = new TestDnsServer();
    before(async () => {
      await dns.start();
      dns.zones.set('1.0.0.127.public-resolver.test', { a: ['127.255.255.254'] });
      dns.zones.set('1.0.0.127.google.test', { a: ['8.8.8.8'] });
      dns.zones.set('1.0.0.127.private.test', { a: ['10.1.2.3'] });
      dns.zones.set('1.0.0.127.listed.test', { a: ['127.0.0.2'] });
      dns.zones.set('1.0.0.127.dead.test', { silent: true });
    });
    after(() => dns.stop());
    const start = (sites: string[], extra = '') =>
      startTestDaemon({ extra: `dns: { servers: ["${dns.server}"] }\nscreen: { dnsblSites: ${JSON.stringify(sites)}${extra} }` });

    it('greets a client whose only "listings" are error codes or answers outside 127/8, and logs the broken list once', async () => {
      mx = await start(['public-resolver.test*3', 'google.test*3', 'private.test*3']);
      for (let i = 0; i < 3; i++) {
        const { client } = await SmtpClient.session(mx.port);
        await client.quit();
      }
      assert.equal(mx.logs.filter((line) => line.event === 'dnsbl_list_error').length, 1);
      assert.equal(mx.logs.find((line) => line.event === 'dnsbl_list_error')?.reply, '127.255.255.254');
      assert.match(await metrics(mx), /^secondarymx_dnsbl_list_errors_total\{list="public-resolver\.test"\} 3$/m);
      assert.ok(mx.logs.filter((line) => line.event === 'screen' && line.screen === 'dnsbl').every((line) => line.decision === 'pass'));
    });

    it('still refuses a client a list names with 127.0.0.2', async () => {
      mx = await start(['listed.test*3', 'public-resolver.test*3']);
      const client = await SmtpClient.connect(mx.port);
      assert.deepEqual(pick(await client.reply()), [554, '5.7.1']);
      client.destroy();
    });

    it('greets within one dnsTimeout when a list never answers', async () => {
      mx = await start(['dead.test', 'listed.test*0'], ', dnsTimeout: 2');
      const started = Date.now();
      const { client } = await SmtpClient.session(mx.port);
      const waited = Date.now() - started;
      await client.quit();
      // c-ares alone retried with a doubled timeout: about 3 x dnsTimeout (6 s) before.
      assert.ok(waited < 2000 + 1500, `greeted after ${waited} ms`);
    });
  });
});
