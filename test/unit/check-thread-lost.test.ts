import assert from 'node:assert/strict';
import { SenderAuth } from '../../src/screen/auth.js';
import type { CheckTask } from '../../src/screen/check-thread.js';
import type { MessageCheckResult } from '../../src/screen/message-checks.js';
import { cachingResolve, screenResolver } from '../../src/screen/resolver.js';
import { ThreadPool } from '../../src/threads/pool.js';
import { TestDnsServer } from '../helpers/dns-server.js';

const FIXTURE = new URL('../fixtures/faulty-check-thread.mjs', import.meta.url);
const POLICY = { spf: { fail: 'reject' as const }, dmarc: { reject: 'reject' as const }, maxSignatures: 5 };
// Signed (with a signature that does not verify): a signed message is checked in a thread.
const MESSAGE = Buffer.from(
  'DKIM-Signature: v=1; a=rsa-sha256; d=reject.test; s=none; h=from; bh=AAAA; b=AAAA\r\nFrom: <news@reject.test>\r\nTo: <alice@d1.example>\r\nSubject: lost\r\n\r\nbody\r\n',
);

describe('a check thread lost (crash, hang): the message is tagged temperror, never refused, and the next one is checked', () => {
  const dns = new TestDnsServer();
  let pool: ThreadPool<CheckTask, MessageCheckResult>;
  let auth: SenderAuth;
  before(async () => {
    await dns.start();
    dns.zones.set('reject.test', { txt: ['v=spf1 -all'] });
    dns.zones.set('_dmarc.reject.test', { txt: ['v=DMARC1; p=reject'] });
    pool = new ThreadPool(FIXTURE, { threads: 1, heartbeatMs: 50, stallMs: 500 });
    const dnsOptions = { servers: [dns.server], timeoutSeconds: 1 };
    auth = new SenderAuth(POLICY, 'mx2.test.example', cachingResolve(screenResolver(dnsOptions.servers, 1)), pool, dnsOptions);
  });
  after(async () => {
    await pool.close();
    await dns.stop();
  });

  for (const [sender, reason] of [
    ['crash@reject.test', /^check thread lost: exited with code 1$/],
    ['hang@reject.test', /^check thread lost: stopped answering for 1 s$/],
  ] as const) {
    it(`${sender.split('@')[0]}: tagged dkim=temperror and dmarc=temperror with the reason, no reply`, async () => {
      const spf = await auth.checkSpf('news@pass.test', '127.0.0.1', 'client.example'); // none: no SPF refusal either
      const checked = await auth.checkMessage({ bytes: new Uint8Array(MESSAGE) }, sender, spf, 20_000);
      assert.match(checked.unfinished ?? '', reason);
      assert.equal(checked.reply, undefined);
      assert.deepEqual([checked.dkim, checked.dmarc], [['temperror'], 'temperror']);
      assert.match(checked.headers, /\r\n dkim=temperror \(check thread lost: [^)]+\);\r\n spf=none [^\r]*;\r\n dmarc=temperror \(check thread lost: /);
      // The pool replaced its thread: the same message from an ordinary sender is checked, and DMARC p=reject applies.
      const next = await auth.checkMessage({ bytes: new Uint8Array(MESSAGE) }, 'news@reject.test', spf, 20_000);
      assert.equal(next.unfinished, undefined);
      assert.deepEqual([next.dmarc, next.reply?.responseCode, next.reply?.enhancedCode], ['fail', 550, '5.7.26']);
    });
  }
});
