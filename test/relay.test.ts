import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { runCli, spawnDaemon } from './helpers/cli.js';
import { baseConfig, startTestDaemon, withPrimary, writeTestConfig, type TestDaemon } from './helpers/daemon.js';
import { freePort, TestPrimary } from './helpers/primary.js';
import { message, pick, queuedId, SmtpClient } from './helpers/smtp-client.js';
import { queuedEnvelope, queuedIds, queuedMessage } from './helpers/spool-files.js';
import { waitFor } from './helpers/wait.js';

const FAST = 'relay: { probeInterval: 0.2, minBackoff: 300 }';

async function send(port: number, from: string, to: string[], body: string): Promise<string> {
  const { client } = await SmtpClient.session(port);
  try {
    const reply = await client.sendMail(from, to, body);
    assert.equal(reply.code, 250, reply.lines.join(' | '));
    return queuedId(reply.text);
  } finally {
    await client.quit();
  }
}

describe('relay: replay to a real primary', () => {
  let primary: TestPrimary;
  let mx: TestDaemon | undefined;
  beforeEach(async () => {
    primary = new TestPrimary(await freePort());
  });
  afterEach(async () => {
    await mx?.stop();
    mx = undefined;
    await primary.stop();
  });

  it('keeps mail while the primary is down and delivers it, byte for byte, within one probe interval of its return', async () => {
    mx = await startTestDaemon({ primaryPort: primary.port, extra: FAST });
    const id = await send(mx.port, 'sender@remote.example', ['alice@d1.example', 'x@d2.example'], message('while down', 'Caf\u00e9\r\n..dot\r\n'));
    const spooled = queuedMessage(mx.spoolDir, id);
    await waitFor(() => mx!.logs.some((line) => line.event === 'primary_down'));
    await new Promise((resolve) => setTimeout(resolve, 600));
    assert.deepEqual(queuedIds(mx.spoolDir), [id]);
    assert.equal(primary.received.length, 0);
    const down = await runCli(['status', '--config', mx.file]);
    assert.match(down.stdout, new RegExp(`^primary 127\\.0\\.0\\.1:${primary.port}: DOWN \\(probing\\)$`, 'm'));
    assert.match(down.stdout, /^spool: 1 message, /m);

    await primary.start();
    const back = Date.now();
    await waitFor(() => primary.received.length === 1, 4000);
    assert.ok(Date.now() - back < 1000 + 1500, `delivered ${Date.now() - back} ms after the primary came back`);
    await waitFor(() => queuedIds(mx!.spoolDir).length === 0);
    const [got] = primary.received;
    assert.equal(got.from, 'sender@remote.example');
    assert.deepEqual(got.to, ['alice@d1.example', 'x@d2.example']);
    assert.deepEqual(got.data, spooled);
    assert.equal(got.mailArgs.SIZE, String(spooled.length));
    const states = mx.logs.filter((line) => line.event === 'primary_down' || line.event === 'primary_up');
    assert.deepEqual(
      states.map((line) => line.msg),
      ['primary is DOWN: delivery stopped, probing', 'primary is UP: replaying the spool'],
    );
    // The status= line is written once the outcome is saved, just after the message left the queue.
    await waitFor(() => mx!.logs.some((line) => line.queueId === id && line.event === 'delivery' && line.status === 'sent'));
    const sent = mx.logs.find((line) => line.queueId === id && line.event === 'delivery' && line.status === 'sent');
    assert.deepEqual(sent?.to, ['alice@d1.example', 'x@d2.example']);
    assert.equal(sent?.primary, `127.0.0.1:${primary.port}`);
  });

  it('keeps the null sender, and settles each recipient by its own reply (250 / 450 / 550)', async () => {
    await primary.start();
    primary.rcptReplies.set('busy@d2.example', [450, '4.2.1 mailbox busy']);
    primary.rcptReplies.set('gone@d2.example', [550, '5.1.1 no such user']);
    mx = await startTestDaemon({ primaryPort: primary.port, extra: FAST });
    const id = await send(mx.port, '', ['ok@d2.example', 'busy@d2.example', 'gone@d2.example'], message('mixed'));
    await waitFor(() => mx!.logs.some((line) => line.queueId === id && line.event === 'delivery' && line.status === 'deferred'));
    assert.equal(primary.received.length, 1);
    assert.equal(primary.received[0].from, '');
    assert.deepEqual(primary.received[0].to, ['ok@d2.example']);
    const envelope = queuedEnvelope(mx.spoolDir, id);
    assert.deepEqual(
      envelope.recipients.map((r) => [r.address, r.state, r.reply?.slice(0, 3)]),
      [
        ['ok@d2.example', 'delivered', '250'],
        ['busy@d2.example', 'pending', '450'],
        ['gone@d2.example', 'failed', '550'],
      ],
    );
    assert.equal(envelope.deferrals, 1);
    const wait = Date.parse(envelope.nextAttempt!) - Date.now();
    assert.ok(wait > 290_000 && wait <= 300_000, `next attempt in ${wait} ms`);
    const logged = mx.logs.filter((line) => line.queueId === id && String(line.msg).startsWith('status='));
    assert.deepEqual(
      logged.map((line) => [line.msg, line.to]),
      [
        ['status=sent', ['ok@d2.example']],
        ['status=deferred', ['busy@d2.example']],
        ['status=bounced', ['gone@d2.example']],
      ],
    );
    // The deferred recipient retries with a flush; then only the failed one is left, marked failed.
    primary.rcptReplies.delete('busy@d2.example');
    const flush = await runCli(['flush', '--json', '--config', mx.file]);
    assert.equal(flush.status, 0, flush.stderr);
    assert.deepEqual(JSON.parse(flush.stdout), { via: 'daemon', messages: 1, delivered: 1, deferred: 0, failed: 0, unreachable: 0, busy: 0 });
    assert.deepEqual(primary.received[1].to, ['busy@d2.example']);
    // From the null sender: no DSN is owed for the failed one, so the message is settled and gone.
    assert.deepEqual(queuedIds(mx.spoolDir), []);
    assert.ok(mx.logs.some((line) => line.queueId === id && line.event === 'dsn_not_owed' && line.action === 'failed'));
  });

  it('defers a message whose connection was cut in the middle of DATA (the primary answered: not down), and delivers it once', async () => {
    await primary.start();
    primary.dropInData = 1;
    mx = await startTestDaemon({ primaryPort: primary.port, extra: FAST });
    const id = await send(mx.port, 's@remote.example', ['alice@d1.example'], message('cut', 'x'.repeat(200_000)));
    await waitFor(() => mx!.logs.some((line) => line.queueId === id && line.event === 'delivery' && line.status === 'deferred'));
    const deferred = mx.logs.find((line) => line.queueId === id && line.event === 'delivery' && line.status === 'deferred');
    assert.match(String(deferred?.reply), /^lost connection with the primary while sending the message: /);
    assert.equal(queuedEnvelope(mx.spoolDir, id).deferrals, 1, 'backs off like a 4xx (Postfix: "lost connection ... while sending message body")');
    assert.ok(!mx.logs.some((line) => line.event === 'primary_down'), 'a primary that answered is not down');
    assert.equal(primary.received.length, 0);
    const flush = await runCli(['flush', '--json', '--config', mx.file]);
    assert.equal(flush.status, 0, flush.stderr);
    assert.deepEqual(queuedIds(mx.spoolDir), []);
    assert.deepEqual(primary.messageIds(), ['<cut@remote.example>']);
  });

  it('treats a 421 greeting as the primary being down', async () => {
    await primary.start();
    primary.greet421 = 2; // the first attempt and the first probe
    mx = await startTestDaemon({ primaryPort: primary.port, extra: FAST });
    await send(mx.port, 's@remote.example', ['alice@d1.example'], message('greeting'));
    await waitFor(() => primary.received.length === 1, 6000);
    const down = mx.logs.find((line) => line.event === 'primary_down');
    assert.match(String(down?.reason), /421/);
  });

  it('relays an ASCII envelope sent with SMTPUTF8 to a primary without it (no backscatter), then stops offering SMTPUTF8', async () => {
    primary = new TestPrimary(primary.port, { smtpUtf8: false, dsn: true });
    await primary.start();
    mx = await startTestDaemon({ primaryPort: primary.port, extra: `${FAST}\ndsn: { relay: { host: 127.0.0.1, port: ${primary.port} } }` });
    const { client, ehlo } = await SmtpClient.session(mx.port);
    assert.ok(
      ehlo.lines.some((line) => line.endsWith('SMTPUTF8')),
      'offered while the primary is unknown',
    );
    for (const step of ['MAIL FROM:<victim@victim.test> SMTPUTF8 RET=FULL', 'RCPT TO:<alice@d1.example>', 'DATA']) await client.command(step);
    await client.data(message('utf8', 'Gr\u00fc\u00dfe'));
    await client.quit();
    await waitFor(() => primary.received.length === 1);
    await waitFor(() => queuedIds(mx!.spoolDir).length === 0);
    assert.equal(primary.received[0].from, 'victim@victim.test');
    assert.equal(primary.received[0].mailArgs.SMTPUTF8, undefined, 'relayed without the keyword');
    assert.ok(!mx.logs.some((line) => line.event === 'dsn_queued' && line.action === 'failed'), 'no DSN to the forged sender');
    const again = await SmtpClient.session(mx.port);
    assert.ok(!again.ehlo.lines.some((line) => line.endsWith('SMTPUTF8')), 'not offered once the primary is known not to take it');
    assert.equal((await again.client.command('MAIL FROM:<s@remote.example> SMTPUTF8')).code, 250);
    const reply = await again.client.command('RCPT TO:<j\u00f6rg@d2.example>');
    assert.deepEqual([reply.code, reply.enhanced], [553, '5.6.7'], 'refused now, not bounced later');
    await again.client.quit();
  });

  it('never delivers a held message until it is released; deletes on request', async () => {
    mx = await startTestDaemon({ primaryPort: primary.port, extra: FAST });
    const held = await send(mx.port, 's@remote.example', ['alice@d1.example'], message('held'));
    const doomed = await send(mx.port, 's@remote.example', ['alice@d1.example'], message('doomed'));
    for (const [args, out] of [
      [['queue', 'hold', held], `${held}: held\n`],
      [['queue', 'delete', doomed], `${doomed}: deleted\n`],
    ] as const) {
      const result = await runCli([...args, '--config', mx.file]);
      assert.deepEqual([result.status, result.stdout], [0, out], result.stderr);
    }
    assert.deepEqual(queuedIds(mx.spoolDir), [held]);
    const shown = await runCli(['queue', 'show', held, '--config', mx.file]);
    assert.match(shown.stdout, new RegExp(`^id: +${held} \\(held\\)$`, 'm'));
    assert.match(shown.stdout, /^  Subject: held$/m);
    await primary.start();
    const flush = JSON.parse((await runCli(['flush', '--json', '--config', mx.file])).stdout) as { messages: number };
    assert.equal(flush.messages, 0);
    await new Promise((resolve) => setTimeout(resolve, 600));
    assert.equal(primary.received.length, 0);
    assert.equal((await runCli(['queue', 'release', held, '--config', mx.file])).status, 0);
    await waitFor(() => primary.received.length === 1);
    assert.deepEqual(primary.messageIds(), ['<held@remote.example>']);
    const missing = await runCli(['queue', 'hold', held, '--config', mx.file]);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /no such message in the queue/);
    const bad = await runCli(['queue', 'delete', '../../etc/passwd', '--config', mx.file]);
    assert.match(bad.stderr, /is not a queue id/);
  });
});

describe('relay: ETRN (RFC 1985)', () => {
  it('flushes a domain for an allowed client, and answers 459 to others', async () => {
    const primary = new TestPrimary(await freePort());
    const mx = await startTestDaemon({ primaryPort: primary.port, extra: 'relay: { probeInterval: 300, etrnClients: ["127.0.0.1/32"] }' });
    try {
      await send(mx.port, 's@remote.example', ['alice@d1.example'], message('for d1'));
      await send(mx.port, 's@remote.example', ['x@d2.example'], message('for d2'));
      await waitFor(() => mx.logs.some((line) => line.event === 'primary_down'));
      await primary.start(); // next probe in 300 s: only ETRN gets mail through now
      const { client } = await SmtpClient.session(mx.port);
      assert.deepEqual(pick(await client.command('ETRN d1.example')), [250, '2.0.0']);
      // ETRN probed the primary at once; now that it is known to be up, everything due goes.
      await waitFor(() => primary.received.length === 2);
      assert.deepEqual(primary.messageIds().sort(), ['<ford1@remote.example>', '<ford2@remote.example>']);
      assert.deepEqual(pick(await client.command('ETRN d1.example')), [251, '2.0.0']);
      assert.deepEqual(pick(await client.command('ETRN')), [501, '5.5.4']);
      await client.quit();
    } finally {
      await mx.stop();
      await primary.stop();
    }
    const strict = await startTestDaemon({ extra: 'relay: { etrnClients: ["10.0.0.0/8"] }' });
    try {
      const { client } = await SmtpClient.session(strict.port);
      assert.deepEqual(pick(await client.command('ETRN d1.example')), [459, '4.7.1']);
      await client.quit();
    } finally {
      await strict.stop();
    }
  });
});

describe('relay: flush without a daemon', () => {
  let primary: TestPrimary;
  let dir: string;
  let file: string;
  beforeEach(async () => {
    primary = new TestPrimary(await freePort());
    ({ dir, file } = writeTestConfig(withPrimary(baseConfig(FAST), primary.port)));
  });
  afterEach(async () => {
    await primary.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Queues `count` messages with a daemon, then stops it (the primary is down meanwhile). */
  async function queueWhileDown(count: number): Promise<void> {
    const daemon = await spawnDaemon(file);
    const { client } = await SmtpClient.session(daemon.port);
    for (let i = 0; i < count; i++) assert.equal((await client.sendMail('s@remote.example', ['alice@d1.example'], message(`m${i}`))).code, 250);
    await client.quit();
    daemon.child.kill('SIGTERM');
    await daemon.exited;
  }

  it('delivers by itself, and exits 75 while the primary is unreachable', async () => {
    await queueWhileDown(3);
    const down = await runCli(['flush', '--config', file]);
    assert.equal(down.status, 75, down.stderr);
    assert.match(down.stdout, /^flush \(standalone\): 3 messages: .* 3 messages not attempted \(primary unreachable\)/);
    await primary.start();
    const up = await runCli(['flush', '--json', '--config', file]);
    assert.equal(up.status, 0, up.stderr);
    assert.deepEqual(JSON.parse(up.stdout), { via: 'standalone', messages: 3, delivered: 3, deferred: 0, failed: 0, unreachable: 0, busy: 0 });
    assert.equal(primary.received.length, 3);
    assert.deepEqual(queuedIds(join(dir, 'spool')), []);
  });

  it('delivers each message exactly once when two flushes run at the same time', async () => {
    await queueWhileDown(40);
    await primary.start();
    primary.dataDelayMs = 20;
    const [a, b] = await Promise.all([runCli(['flush', '--json', '--config', file]), runCli(['flush', '--json', '--config', file])]);
    assert.deepEqual([a.status, b.status], [0, 0], a.stderr + b.stderr);
    const ids = primary.messageIds();
    assert.equal(ids.length, 40);
    assert.equal(new Set(ids).size, 40);
    const delivered = [a, b].map((r) => (JSON.parse(r.stdout) as { delivered: number }).delivered);
    assert.equal(delivered[0] + delivered[1], 40);
    assert.deepEqual(queuedIds(join(dir, 'spool')), []);
  });
});

describe('relay: crash during replay', () => {
  it('after SIGKILL in the middle of a large replay, delivers everything; duplicates only among the messages in flight', async function () {
    this.timeout(60_000);
    const primary = new TestPrimary(await freePort());
    const { dir, file } = writeTestConfig(withPrimary(baseConfig('relay: { probeInterval: 0.2, concurrency: 10 }'), primary.port));
    const total = 300;
    try {
      const first = await spawnDaemon(file);
      const { client } = await SmtpClient.session(first.port);
      for (let i = 0; i < total; i++) assert.equal((await client.sendMail('s@remote.example', ['alice@d1.example'], message(`crash${i}`))).code, 250);
      await client.quit();
      primary.dataDelayMs = 5;
      await primary.start();
      await waitFor(() => primary.received.length >= total / 3, 20_000);
      first.child.kill('SIGKILL');
      await first.exited;
      const atKill = primary.received.length;

      const second = await spawnDaemon(file);
      await waitFor(() => queuedIds(join(dir, 'spool')).length === 0, 30_000);
      second.child.kill('SIGTERM');
      await second.exited;

      const ids = primary.messageIds();
      const unique = new Set(ids);
      assert.equal(unique.size, total, 'every message delivered');
      const duplicates = ids.length - unique.size;
      assert.ok(duplicates <= 10, `${duplicates} duplicates, more than the 10 messages that can be in flight`);
      console.log(`      (killed after ${atKill} deliveries; ${duplicates} duplicate(s) after restart)`);
    } finally {
      await primary.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
