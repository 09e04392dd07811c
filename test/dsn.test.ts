import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { simpleParser, type ParsedMail } from 'mailparser';
import { newQueueId } from '../src/spool/queue-id.js';
import { Spool } from '../src/spool/spool.js';
import { spawnDaemon } from './helpers/cli.js';
import { baseConfig, startTestDaemon, withPrimary, writeTestConfig, type TestDaemon } from './helpers/daemon.js';
import { TestDnsServer } from './helpers/dns-server.js';
import { freePort, TestPrimary, type Received } from './helpers/primary.js';
import { message, queuedId, sendRaw, SmtpClient } from './helpers/smtp-client.js';
import { queuedEnvelope, queuedIds } from './helpers/spool-files.js';
import { waitFor } from './helpers/wait.js';

function mail(from: string, to: string[], extra: { mail?: string; rcpt?: string[] } = {}): string[] {
  return [
    `MAIL FROM:<${from}>${extra.mail ? ` ${extra.mail}` : ''}`,
    ...to.map((rcpt, i) => `RCPT TO:<${rcpt}>${extra.rcpt?.[i] ? ` ${extra.rcpt[i]}` : ''}`),
    'DATA',
  ];
}

/** The fields of a message/delivery-status part: the per-message block, then one per recipient. */
function statusBlocks(text: string): Array<Record<string, string>> {
  return text
    .trim()
    .split(/\r?\n\r?\n/)
    .map((block) => Object.fromEntries(block.split(/\r?\n/).map((line) => [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 1).trim()])));
}

interface Dsn {
  received: Received;
  parsed: ParsedMail;
  status: Array<Record<string, string>>;
  returned: string;
}

/**
 * Parses a DSN: mailparser for the message (it folds message/delivery-status into the
 * text), and the MIME parts split at the boundary mailparser read, to check each one.
 */
async function parseDsn(received: Received): Promise<Dsn> {
  const parsed = await simpleParser(received.data);
  const contentType = parsed.headers.get('content-type') as { value: string; params: Record<string, string> };
  const raw = received.data.toString('utf8');
  const parts = raw
    .split(`--${contentType.params.boundary}`)
    .slice(1, -1)
    .map((part) => {
      const [head, ...body] = part.replace(/^\r\n/, '').split('\r\n\r\n');
      return { type: /^Content-Type: ([^;\r\n]+)/im.exec(head)?.[1], body: body.join('\r\n\r\n') };
    });
  assert.deepEqual(
    parts.slice(0, 2).map((p) => p.type),
    ['text/plain', 'message/delivery-status'],
  );
  const status = parts[1].body;
  return { received, parsed, status: statusBlocks(status), returned: parts[2]?.body ?? '' };
}

describe('dsn: bounces through a smarthost', () => {
  let primary: TestPrimary;
  let smarthost: TestPrimary;
  let mx: TestDaemon | undefined;
  beforeEach(async () => {
    primary = new TestPrimary(await freePort(), { dsn: true });
    smarthost = new TestPrimary(await freePort());
    await smarthost.start();
  });
  afterEach(async () => {
    await mx?.stop();
    mx = undefined;
    await primary.stop();
    await smarthost.stop();
  });

  const start = (relay = '', extra = '') =>
    startTestDaemon({
      primaryPort: primary.port,
      extra: `relay: { probeInterval: 1${relay} }\ndsn: { relay: { host: 127.0.0.1, port: ${smarthost.port} } }\n${extra}`,
    });

  it('tells the sender about a recipient the primary refused with 5xx, in a well-formed RFC 3464 report', async () => {
    await primary.start();
    primary.rcptReplies.set('alice@d1.example', [550, '5.1.1 <alice@d1.example>: no such user here']);
    mx = await start();
    const id = await sendRaw(
      mx.port,
      mail('sender@remote.example', ['alice@d1.example', 'bob.smith@d1.example'], {
        mail: 'RET=HDRS ENVID=env-42',
        rcpt: ['ORCPT=rfc822;Alice@D1.example NOTIFY=FAILURE,DELAY'],
      }),
      message('refused', 'Hello Alice.'),
    );
    await waitFor(() => smarthost.received.length === 1);
    await waitFor(() => queuedIds(mx!.spoolDir).length === 0);
    assert.deepEqual(primary.received[0].to, ['bob.smith@d1.example']);
    assert.equal(primary.received[0].mailArgs.ENVID, 'env-42');

    const dsn = await parseDsn(smarthost.received[0]);
    assert.equal(dsn.received.from, '');
    assert.deepEqual(dsn.received.to, ['sender@remote.example']);
    const headers = dsn.parsed.headers;
    assert.match(
      String(headers.get('content-type') && (headers.get('content-type') as { value: string; params: Record<string, string> }).value),
      /^multipart\/report$/,
    );
    assert.equal((headers.get('content-type') as { params: Record<string, string> }).params['report-type'], 'delivery-status');
    assert.equal(dsn.parsed.from?.value[0].address, 'MAILER-DAEMON@mx2.test.example');
    assert.deepEqual(dsn.parsed.to && !Array.isArray(dsn.parsed.to) ? dsn.parsed.to.value[0].address : '', 'sender@remote.example');
    assert.match(dsn.parsed.messageId ?? '', /^<.+@mx2\.test\.example>$/);
    assert.equal(headers.get('auto-submitted'), 'auto-replied');
    assert.match(dsn.parsed.text ?? '', /could not be delivered/);
    assert.match(dsn.parsed.text ?? '', /<alice@d1\.example>: last reply: 550 5\.1\.1/);

    const [perMessage, alice, ...others] = dsn.status;
    assert.equal(others.length, 0);
    assert.equal(perMessage['Reporting-MTA'], 'dns; mx2.test.example');
    assert.equal(perMessage['Original-Envelope-Id'], 'env-42');
    assert.match(perMessage['Arrival-Date'], /^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000$/);
    assert.deepEqual(
      { ...alice, 'Last-Attempt-Date': undefined },
      {
        'Original-Recipient': 'rfc822;Alice@D1.example',
        'Final-Recipient': 'rfc822; alice@d1.example',
        Action: 'failed',
        Status: '5.1.1',
        'Remote-MTA': 'dns; primary.test.example', // the name it gave, not the address it was reached at
        'Diagnostic-Code': 'smtp; 550 5.1.1 <alice@d1.example>: no such user here',
        'Last-Attempt-Date': undefined,
      },
    );
    assert.match(dsn.returned, /^Subject: refused$/m);
    assert.ok(!dsn.returned.includes('Hello Alice.'), 'RET=HDRS returns the headers only');
    assert.ok(mx.logs.some((line) => line.queueId === id && line.event === 'dsn_queued' && line.action === 'failed'));
  });

  it('returns the whole original with RET=FULL to a sender whose SPF passed, the headers only to one whose SPF did not', async () => {
    const dns = new TestDnsServer();
    await dns.start();
    dns.zones.set('remote.example', { txt: ['v=spf1 ip4:127.0.0.1 -all'] });
    try {
      await primary.start();
      primary.rcptReplies.set('alice@d1.example', [550, '5.1.1 no such user']);
      mx = await start('', `dns: { servers: ["${dns.server}"] }`);
      await sendRaw(mx.port, mail('sender@remote.example', ['alice@d1.example'], { mail: 'RET=FULL' }), message('full', 'The body comes back.'));
      await sendRaw(mx.port, mail('sender@unchecked.example', ['alice@d1.example'], { mail: 'RET=FULL' }), message('none', 'The body stays here.'));
      await waitFor(() => smarthost.received.length === 2);
      const [passed, none] = ['sender@remote.example', 'sender@unchecked.example'].map((to) => smarthost.received.find((r) => r.to[0] === to)!);
      assert.match((await parseDsn(passed)).returned, /The body comes back\./);
      assert.match(none.data.toString('latin1'), /text\/rfc822-headers/);
      assert.doesNotMatch(none.data.toString('latin1'), /The body stays here/);
    } finally {
      await dns.stop();
    }
  });

  it('fails what is still undelivered after relay.queueLifetime with 5.4.7, and removes it', async () => {
    mx = await start(', queueLifetime: 2'); // the primary never comes up
    const id = await sendRaw(mx.port, mail('sender@remote.example', ['alice@d1.example']), message('expires'));
    await waitFor(() => smarthost.received.length === 1, 8000);
    await waitFor(() => !queuedIds(mx!.spoolDir).includes(id));
    const dsn = await parseDsn(smarthost.received[0]);
    assert.deepEqual([dsn.status[1].Action, dsn.status[1].Status], ['failed', '5.4.7']);
    assert.match(dsn.parsed.text ?? '', /delivery time expired/);
    assert.ok(mx.logs.some((line) => line.queueId === id && line.event === 'expired'));
  });

  it('sends one delay warning after relay.delayWarning, once', async () => {
    mx = await start(', delayWarning: 1, queueLifetime: 3600');
    const id = await sendRaw(mx.port, mail('sender@remote.example', ['alice@d1.example']), message('slow'));
    await waitFor(() => smarthost.received.length === 1, 6000);
    await new Promise((resolve) => setTimeout(resolve, 2500));
    assert.equal(smarthost.received.length, 1);
    const dsn = await parseDsn(smarthost.received[0]);
    assert.equal(dsn.status[1].Action, 'delayed');
    assert.match(dsn.status[1].Status, /^4\./);
    assert.ok(dsn.status[1]['Will-Retry-Until']);
    assert.match(dsn.parsed.subject ?? '', /Delayed Mail/);
    assert.deepEqual(queuedIds(mx.spoolDir), [id]);
    const envelope = queuedEnvelope(mx.spoolDir, id);
    assert.equal(envelope.delayWarned, true);
  });

  it('never bounces a bounce, and obeys NOTIFY=NEVER and NOTIFY=SUCCESS', async () => {
    await primary.start();
    for (const address of ['a@d2.example', 'b@d2.example', 'c@d2.example']) primary.rcptReplies.set(address, [550, '5.1.1 no such user']);
    mx = await start();
    await sendRaw(mx.port, mail('', ['a@d2.example']), message('a bounce'));
    await sendRaw(mx.port, mail('sender@remote.example', ['b@d2.example'], { rcpt: ['NOTIFY=NEVER'] }), message('never'));
    await sendRaw(mx.port, mail('sender@remote.example', ['c@d2.example'], { rcpt: ['NOTIFY=SUCCESS'] }), message('success only'));
    await waitFor(() => queuedIds(mx!.spoolDir).length === 0);
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.equal(smarthost.received.length, 0);
    assert.ok(mx.logs.some((line) => line.event === 'dsn_not_owed' && line.action === 'failed'));
    assert.equal(mx.logs.filter((line) => line.event === 'dsn_not_owed' && line.notify !== undefined).length, 2);
    assert.deepEqual(primary.received.length, 0);
  });
});

describe('dsn: straight to the sender domain MX', () => {
  let dns: TestDnsServer;
  let primary: TestPrimary;
  let senderMx: TestPrimary;
  let mx: TestDaemon | undefined;
  beforeEach(async () => {
    dns = new TestDnsServer();
    await dns.start();
    primary = new TestPrimary(await freePort());
    senderMx = new TestPrimary(await freePort());
    await Promise.all([primary.start(), senderMx.start()]);
    dns.zones.set('remote.example', { mx: [{ preference: 10, exchange: 'mx.remote.example' }] });
    dns.zones.set('mx.remote.example', { a: ['127.0.0.1'] });
    dns.zones.set('a-only.example', { a: ['127.0.0.1'] });
    primary.rcptReplies.set('alice@d1.example', [550, '5.1.1 no such user']);
    mx = await startTestDaemon({
      primaryPort: primary.port,
      extra: `relay: { probeInterval: 0.2, minBackoff: 1 }\ndsn: { port: ${senderMx.port}, allowInternal: true }\ndns: { servers: ["${dns.server}"] }`, // the test MX hosts are on loopback
    });
  });
  afterEach(async () => {
    await mx?.stop();
    mx = undefined;
    await Promise.all([primary.stop(), senderMx.stop(), dns.stop()]);
  });

  it('looks up the MX of the sender domain and delivers the DSN there', async () => {
    await sendRaw(mx!.port, mail('sender@remote.example', ['alice@d1.example']), message('to the mx'));
    await waitFor(() => senderMx.received.length === 1);
    assert.deepEqual([senderMx.received[0].from, senderMx.received[0].to], ['', ['sender@remote.example']]);
    assert.equal((await parseDsn(senderMx.received[0])).status[1].Status, '5.1.1');
    await waitFor(() => queuedIds(mx!.spoolDir).length === 0);
    assert.deepEqual(
      mx!.daemon.relay.summary().primaries.map((p) => p.primary),
      [`127.0.0.1:${primary.port}`],
      'the route to the sender MX is forgotten once used',
    );
  });

  it('falls back to the A record of a domain without MX', async () => {
    await sendRaw(mx!.port, mail('someone@a-only.example', ['alice@d1.example']), message('a only'));
    await waitFor(() => senderMx.received.length === 1);
    assert.deepEqual(senderMx.received[0].to, ['someone@a-only.example']);
  });

  it('holds a DSN that fails permanently with the reason, and bounces nothing', async () => {
    senderMx.rcptReplies.set('sender@remote.example', [550, '5.1.1 sender unknown']);
    await sendRaw(mx!.port, mail('sender@remote.example', ['alice@d1.example']), message('dead end'));
    await waitFor(() => mx!.logs.some((line) => line.event === 'undeliverable_held'));
    const [dsnId] = mx!.logs.filter((line) => line.event === 'dsn_queued').map((line) => line.dsnId as string);
    await waitFor(() => queuedEnvelope(mx!.spoolDir, dsnId).held === true); // saved just after the line
    assert.deepEqual(queuedIds(mx!.spoolDir), [dsnId], 'the original is settled; its notice is kept');
    const held = queuedEnvelope(mx!.spoolDir, dsnId);
    assert.equal(held.held, true);
    assert.match(held.heldReason!, /^undeliverable notice: sender@remote\.example: 550 5\.1\.1 sender unknown/);
    assert.equal(mx!.logs.filter((line) => line.event === 'dsn_queued').length, 1, 'no notice about the notice');
    assert.equal(senderMx.received.length, 0);
  });

  it('sends no DSN to a sender domain whose MX hosts are internal addresses, unless dsn.allowInternal', async () => {
    await mx!.stop();
    mx = await startTestDaemon({
      primaryPort: primary.port,
      extra: `relay: { probeInterval: 0.2, minBackoff: 1 }\ndsn: { port: ${senderMx.port} }\ndns: { servers: ["${dns.server}"] }`,
    });
    await sendRaw(mx.port, mail('sender@remote.example', ['alice@d1.example']), message('probe the inside'));
    await waitFor(() =>
      mx!.logs.some(
        (line) =>
          line.event === 'delivery' && line.status === 'bounced' && /internal networks \(mx\.remote\.example\[127\.0\.0\.1\]\)/.test(String(line.reply)),
      ),
    );
    await waitFor(() => mx!.logs.some((line) => line.event === 'undeliverable_held'));
    assert.equal(queuedIds(mx.spoolDir).length, 1, 'the notice is held, the original settled');
    assert.equal(senderMx.connections, 0, 'never connected');
  });

  it('holds a DSN for a domain that does not exist, with the reason', async () => {
    await sendRaw(mx!.port, mail('sender@nowhere.example', ['alice@d1.example']), message('nowhere'));
    await waitFor(() => mx!.logs.some((line) => line.event === 'undeliverable_held'));
    const [held] = queuedIds(mx!.spoolDir);
    await waitFor(() => queuedEnvelope(mx!.spoolDir, held).held === true);
    assert.match(queuedEnvelope(mx!.spoolDir, held).heldReason!, /5\.1\.2 nowhere\.example: no such domain/);
  });
});

describe('dsn: a DSN leaves only once its original is settled on disk', () => {
  it('reaches the smarthost after the original no longer records its notice (a crash in between cannot send it twice)', async () => {
    const primary = new TestPrimary(await freePort());
    const smarthost = new TestPrimary(await freePort());
    await primary.start();
    await smarthost.start();
    primary.rcptReplies.set('alice@d1.example', [550, '5.1.1 no such user']);
    primary.rcptReplies.set('ok@d2.example', [451, '4.3.0 later']); // the original stays, with an envelope to save
    const mx = await startTestDaemon({ primaryPort: primary.port, extra: `dsn: { relay: { host: 127.0.0.1, port: ${smarthost.port} } }` });
    try {
      const seen: string[] = [];
      let id = '';
      smarthost.onRcpt = () => {
        const file = join(mx.spoolDir, 'queue', `${id}.env`);
        seen.push(existsSync(file) && readFileSync(file, 'utf8').includes('"notice"') ? 'notice still recorded' : 'settled');
      };
      id = await sendRaw(mx.port, ['MAIL FROM:<sender@remote.example>', 'RCPT TO:<alice@d1.example>', 'RCPT TO:<ok@d2.example>', 'DATA'], message('two'));
      await waitFor(() => smarthost.received.length === 1);
      assert.deepEqual(seen, ['settled']);
    } finally {
      await mx.stop();
      await primary.stop();
      await smarthost.stop();
    }
  });
});

describe('dsn: crash between queuing a DSN and settling the message', () => {
  for (const [dsnAlreadyWritten, originalBusy] of [
    [false, false],
    [true, false],
    [true, true],
  ]) {
    const state = dsnAlreadyWritten ? 'DSN written, message not yet settled' : 'notice recorded, DSN not yet written';
    it(`sends exactly one DSN after restart (${state}${originalBusy ? ', the message busy meanwhile' : ''})`, async () => {
      const smarthost = new TestPrimary(await freePort());
      await smarthost.start();
      const { dir, file } = writeTestConfig(withPrimary(baseConfig(`dsn: { relay: { host: 127.0.0.1, port: ${smarthost.port} } }`), await freePort()));
      try {
        const first = await spawnDaemon(file);
        const { client } = await SmtpClient.session(first.port);
        const reply = await client.sendMail('sender@remote.example', ['alice@d1.example'], message('crash dsn'));
        await client.quit();
        first.child.kill('SIGKILL');
        await first.exited;
        const id = queuedId(reply.text);
        // The state the notifier leaves after its first step (and, optionally, its second).
        const spoolDir = join(dir, 'spool');
        const envelopeFile = join(spoolDir, 'queue', `${id}.env`);
        const envelope = queuedEnvelope(spoolDir, id);
        const noticeId = newQueueId();
        envelope.recipients[0] = { ...envelope.recipients[0], state: 'failed', reply: '550 5.1.1 no such user' };
        envelope.notice = { id: noticeId, action: 'failed', recipients: ['alice@d1.example'] };
        writeFileSync(envelopeFile, JSON.stringify(envelope));
        const spool = await Spool.forDelivery(spoolDir);
        if (dsnAlreadyWritten) {
          await spool.enqueue(noticeId, Buffer.from('Subject: the DSN written before the crash\r\n\r\nx\r\n'), {
            arrival: new Date().toISOString(),
            sender: '',
            recipients: [{ address: 'sender@remote.example', state: 'pending' }],
            bodyType: '7bit',
            smtpUtf8: false,
            client: { address: '127.0.0.1', helo: 'mx2.test.example' },
            kind: 'dsn',
          });
        }
        // Another process holds the original: its notice cannot be settled until that lets go. The DSN
        // must wait too: sent and removed first, the notice would write it again (and send it twice).
        if (originalBusy) assert.ok(await spool.locks.lock(id));
        const second = await spawnDaemon(file);
        if (originalBusy) {
          await waitFor(() => second.logs.some((line) => line.msg === 'relay: queue indexed'));
          await waitFor(() => smarthost.received.length > 0, 1500).catch(() => undefined); // the DSN went out here before
          await spool.locks.unlock(id);
        }
        await waitFor(() => smarthost.received.length >= 1 && queuedIds(spoolDir).length === 0, 8000);
        await new Promise((resolve) => setTimeout(resolve, 500));
        second.child.kill('SIGTERM');
        await second.exited;
        assert.equal(smarthost.received.length, 1);
        if (dsnAlreadyWritten) assert.match(smarthost.received[0].data.toString(), /the DSN written before the crash/);
        else assert.equal((await parseDsn(smarthost.received[0])).status[1]['Final-Recipient'], 'rfc822; alice@d1.example');
      } finally {
        await smarthost.stop();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
