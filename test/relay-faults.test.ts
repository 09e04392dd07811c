import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../src/config/load.js';
import { newQueueId } from '../src/spool/queue-id.js';
import { runCli, spawnDaemon } from './helpers/cli.js';
import { baseConfig, startTestDaemon, withPrimary, writeTestConfig, type TestDaemon } from './helpers/daemon.js';
import { freePort, TestPrimary } from './helpers/primary.js';
import { message, sendRaw, SmtpClient } from './helpers/smtp-client.js';
import { queuedEnvelope, queuedIds, queuedMessage } from './helpers/spool-files.js';
import { waitFor } from './helpers/wait.js';

const isRoot = process.getuid?.() === 0;
const dsnRelay = (port: number) => `dsn: { relay: { host: 127.0.0.1, port: ${port} } }`;

/** Sends one message with raw RCPT lines (their DSN parameters); resolves with its queue id. */
function sendWith(port: number, from: string, rcptLines: string[], body: string): Promise<string> {
  return sendRaw(port, [`MAIL FROM:<${from}>`, ...rcptLines, 'DATA'], body);
}

/** A message whose header block is 17,000 short lines (85 KB): more than mailparser will parse. */
const POISON = `From: s@remote.example\r\nMessage-ID: <poison@remote.example>\r\n${'a:b\r\n'.repeat(17_000)}\r\nbody\r\n`;

describe("relay: one transaction per message, whatever the recipients' DSN parameters", () => {
  let primary: TestPrimary;
  let mx: TestDaemon | undefined;
  beforeEach(async () => {
    primary = new TestPrimary(await freePort(), { dsn: true }); // Postfix offers DSN: ORCPTs are passed on
  });
  afterEach(async () => {
    await mx?.stop();
    mx = undefined;
    await primary.stop();
  });

  it('sends 100 recipients with 100 ORCPTs in one DATA, each RCPT with its own parameters; the refused one in the middle gets its DSN', async () => {
    await primary.start();
    primary.rcptReplies.set('u50@d2.example', [550, '5.1.1 no such user']);
    mx = await startTestDaemon({ primaryPort: primary.port, extra: `relay: { probeInterval: 0.2 }\n${dsnRelay(primary.port)}` });
    const body = message('hundred', `${'y'.repeat(76)}\r\n`.repeat(2500)); // 195 KB
    const rcpts = Array.from({ length: 100 }, (_, i) => `RCPT TO:<u${i}@d2.example> NOTIFY=FAILURE ORCPT=rfc822;U${i}+x@D2.example`);
    const id = await sendWith(mx.port, 'sender@remote.example', rcpts, body);
    const spooled = queuedMessage(mx.spoolDir, id);
    await waitFor(() => primary.received.length === 2 && queuedIds(mx!.spoolDir).length === 0);
    const original = primary.received.filter((m) => m.from === 'sender@remote.example');
    assert.equal(original.length, 1, 'one DATA for the message');
    assert.equal(original[0].to.length, 99);
    assert.deepEqual(original[0].rcptArgs[49], { NOTIFY: 'FAILURE', ORCPT: 'rfc822;U49+x@D2.example' });
    assert.deepEqual(original[0].rcptArgs[50], { NOTIFY: 'FAILURE', ORCPT: 'rfc822;U51+x@D2.example' });
    assert.deepEqual(original[0].data, spooled, 'the bytes as spooled, once');
    assert.equal(original[0].mailArgs.SIZE, String(spooled.length));
    const dsn = primary.received.find((m) => m.from === '')!;
    assert.deepEqual(dsn.to, ['sender@remote.example']);
    const text = dsn.data.toString();
    assert.match(text, /^Original-Recipient: rfc822;U50\+x@D2\.example$/m);
    assert.match(text, /^Final-Recipient: rfc822; u50@d2\.example$/m);
    assert.equal((text.match(/^Final-Recipient:/gm) ?? []).length, 1);
  });

  it('keeps one clean session across a message with a refused recipient and another all refused, with no false "primary down"', async () => {
    primary.rcptReplies.set('gone@d2.example', [550, '5.1.1 no such user']);
    mx = await startTestDaemon({ primaryPort: primary.port, extra: `relay: { probeInterval: 0.2, concurrency: 1 }\n${dsnRelay(primary.port)}` });
    const orcpt = (address: string) => `RCPT TO:<${address}> ORCPT=rfc822;${address}`;
    await sendWith(mx.port, 'sender@remote.example', [orcpt('ok1@d2.example')], message('first'));
    await sendWith(mx.port, 'sender@remote.example', [orcpt('ok2@d2.example'), orcpt('gone@d2.example'), orcpt('ok2b@d2.example')], message('mixed'));
    await sendWith(mx.port, 'sender@remote.example', [orcpt('gone@d2.example')], message('refused'));
    await sendWith(mx.port, 'sender@remote.example', [orcpt('ok3@d2.example')], message('third'));
    await waitFor(() => mx!.logs.some((line) => line.event === 'primary_down'));
    const downs = () => mx!.logs.filter((line) => line.event === 'primary_down').length;
    await primary.start();
    await waitFor(() => queuedIds(mx!.spoolDir).length === 0, 8000);
    const delivered = primary.received.filter((m) => m.from !== '');
    assert.deepEqual(
      delivered.map((m) => m.to),
      [['ok1@d2.example'], ['ok2@d2.example', 'ok2b@d2.example'], ['ok3@d2.example']],
    );
    assert.equal(primary.received.filter((m) => m.from === '').length, 2, 'a DSN for each refused recipient');
    assert.equal(downs(), 1, 'down only while it was');
    assert.ok(primary.connections <= 4, `${primary.connections} connections (probe, one session, the DSNs)`);
  });
});

describe('relay: a message that cannot be processed never stalls anything', () => {
  let primary: TestPrimary;
  beforeEach(async () => {
    primary = new TestPrimary(await freePort());
  });
  afterEach(async () => primary.stop());

  it('bounces a 17,000-header-line message with a notice without its headers, and delivers the other mail meanwhile', async () => {
    await primary.start();
    primary.rcptReplies.set('gone@d2.example', [550, '5.1.1 no such user']);
    const mx = await startTestDaemon({ primaryPort: primary.port, extra: `relay: { probeInterval: 0.2 }\n${dsnRelay(primary.port)}` });
    try {
      const poison = await sendWith(mx.port, 'sender@remote.example', ['RCPT TO:<gone@d2.example>'], POISON);
      for (let i = 0; i < 20; i++) await sendWith(mx.port, 'sender@remote.example', ['RCPT TO:<ok@d2.example>'], message(`m${i}`));
      await waitFor(() => primary.received.length === 21 && queuedIds(mx.spoolDir).length === 0, 10_000);
      const dsns = primary.received.filter((m) => m.from === '');
      assert.equal(dsns.length, 1);
      const text = dsns[0].data.toString();
      assert.match(text, /The original message's headers are not included: they could not be read\./);
      assert.doesNotMatch(text, /text\/rfc822-headers/);
      assert.match(text, /^Final-Recipient: rfc822; gone@d2\.example$/m);
      assert.ok(mx.logs.some((line) => line.event === 'notice_without_original' && line.queueId === poison));
      assert.ok(!mx.logs.some((line) => line.msg === 'relay worker failed'));
    } finally {
      await mx.stop();
    }
  });

  it('starts with that message in the spool halfway through its notice, and finishes the notice', async () => {
    const { dir, file } = writeTestConfig(withPrimary(baseConfig(`relay: { probeInterval: 0.2 }\n${dsnRelay(primary.port)}`), primary.port));
    try {
      const first = await spawnDaemon(file);
      const id = await sendWith(first.port, 'sender@remote.example', ['RCPT TO:<gone@d2.example>'], POISON);
      first.child.kill('SIGTERM');
      await first.exited;
      // A crash (or a storage fault) between recording the notice and queuing it.
      const spoolDir = join(dir, 'spool');
      const envelope = queuedEnvelope(spoolDir, id);
      envelope.recipients[0] = { ...envelope.recipients[0], state: 'failed', reply: '550 5.1.1 no such user' };
      envelope.notice = { id: newQueueId(), action: 'failed', recipients: ['gone@d2.example'] };
      writeFileSync(join(spoolDir, 'queue', `${id}.env`), JSON.stringify(envelope));
      const second = await spawnDaemon(file);
      try {
        await primary.start();
        await waitFor(() => queuedIds(spoolDir).length === 0, 8000);
        assert.equal(primary.received.length, 1);
        assert.equal(primary.received[0].from, '');
        assert.match(primary.received[0].data.toString(), /headers are not included/);
      } finally {
        second.child.kill('SIGTERM');
        await second.exited;
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('holds a message it cannot process, with the reason (queue list, queue show, metric), and sets aside one it cannot even read', async () => {
    primary = new TestPrimary(primary.port, { dsn: true }); // NOTIFY goes out: the broken envelope is read for it
    const mx = await startTestDaemon({ primaryPort: primary.port, extra: 'relay: { probeInterval: 0.2 }' });
    try {
      const broken = await sendWith(mx.port, 'sender@remote.example', ['RCPT TO:<ok@d2.example>'], message('broken'));
      const unreadable = await sendWith(mx.port, 'sender@remote.example', ['RCPT TO:<ok@d2.example>'], message('unreadable'));
      await sendWith(mx.port, 'sender@remote.example', ['RCPT TO:<ok@d2.example>'], message('fine'));
      await waitFor(() => mx.logs.some((line) => line.event === 'primary_down'));
      // An envelope edited by hand (or written by a buggy version): NOTIFY as a string, not a list.
      const envelope = queuedEnvelope(mx.spoolDir, broken);
      writeFileSync(
        join(mx.spoolDir, 'queue', `${broken}.env`),
        JSON.stringify({ ...envelope, recipients: [{ ...envelope.recipients[0], notify: 'FAILURE' }] }),
      );
      execFileSync('mkdir', [join(mx.spoolDir, 'queue', `${unreadable}.env`)]); // EISDIR on every read
      await primary.start();
      await waitFor(() => primary.received.length === 1 && mx.logs.some((line) => line.queueId === unreadable && line.event === 'message_set_aside'), 8000);
      await waitFor(() => queuedEnvelope(mx.spoolDir, broken).held === true);
      assert.deepEqual(primary.messageIds(), ['<fine@remote.example>']);
      assert.match(queuedEnvelope(mx.spoolDir, broken).heldReason!, /^cannot process this message: .*join is not a function/);
      const list = await runCli(['queue', 'list', '--config', mx.file]);
      assert.match(list.stdout, new RegExp(`^${broken} .* held +sender@remote\\.example$`, 'm'));
      assert.match(list.stdout, /^ +held by the relay: cannot process this message: /m);
      const show = await runCli(['queue', 'show', broken, '--config', mx.file]);
      assert.match(show.stdout, /^held:  +cannot process this message: /m);
      const metrics = await (await fetch(`http://127.0.0.1:${mx.daemon.monitoringPort}/metrics`)).text();
      assert.match(metrics, /^secondarymx_relay_held_total 1$/m);
      assert.ok(mx.logs.some((line) => line.event === 'message_held' && line.queueId === broken));
    } finally {
      await mx.stop();
    }
  });
});

describe('relay: the spool cannot record outcomes', () => {
  let primary: TestPrimary;
  let mountPoint: string;
  beforeEach(async function () {
    if (!isRoot) this.skip(); // mounts need root; CI runs as root
    primary = new TestPrimary(await freePort());
    mountPoint = mkdtempSync(join(tmpdir(), 'secondarymx-fault-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', mountPoint]);
  });
  afterEach(async function () {
    if (!isRoot) return;
    await primary.stop();
    execFileSync('umount', ['-R', mountPoint]);
    rmSync(mountPoint, { recursive: true, force: true });
  });

  async function queueWhileDown(mx: TestDaemon, count: number, to = 'ok@d2.example'): Promise<void> {
    for (let i = 0; i < count; i++) await sendWith(mx.port, 'sender@remote.example', [`RCPT TO:<${to}>`], message(`m${i}`));
    await waitFor(() => mx.logs.some((line) => line.event === 'primary_down'));
  }

  it('with queue/ read-only and a healthy primary: stops, says so, resumes when writable, and delivers each message exactly once', async () => {
    const mx = await startTestDaemon({
      spoolDir: mountPoint,
      primaryPort: primary.port,
      extra: 'relay: { probeInterval: 0.2 }\nlimits: { messageSize: 100000 }',
    });
    try {
      await queueWhileDown(mx, 10);
      const queue = join(mountPoint, 'queue');
      execFileSync('mount', ['--bind', queue, queue]);
      execFileSync('mount', ['-o', 'remount,bind,ro', queue]);
      await primary.start();
      await waitFor(() => mx.logs.some((line) => line.event === 'spool_fault'));
      await waitFor(() => mx.logs.filter((line) => line.msg === 'spool probe failed').length >= 2); // probes fail meanwhile (0.2 s, doubling)
      const whileFaulted = primary.received.length;
      assert.ok(whileFaulted <= 10, `${whileFaulted} deliveries while nothing could be recorded`);
      const health = await fetch(`http://127.0.0.1:${mx.daemon.monitoringPort}/healthz`);
      assert.equal(health.status, 503);
      assert.match(await health.text(), /^delivery stopped: the spool cannot record outcomes \(EROFS on unlink/);
      const metrics = await (await fetch(`http://127.0.0.1:${mx.daemon.monitoringPort}/metrics`)).text();
      assert.match(metrics, /^secondarymx_spool_fault 1$/m);
      const status = await runCli(['status', '--config', mx.file]);
      assert.match(status.stdout, /^delivery: stopped: the spool cannot record outcomes \(EROFS/m);
      assert.equal(mx.logs.filter((line) => line.event === 'spool_fault').length, 1, 'logged once');

      execFileSync('umount', [queue]);
      await waitFor(() => queuedIds(mountPoint).length === 0, 8000);
      assert.ok(mx.logs.some((line) => line.event === 'spool_fault_cleared'));
      const counts = new Map<string, number>();
      for (const id of primary.messageIds()) counts.set(id, (counts.get(id) ?? 0) + 1);
      assert.equal(counts.size, 10, 'every message delivered');
      assert.deepEqual([...counts.values()], Array(10).fill(1), 'a message delivered while its removal failed is not sent again once the spool is writable');
      assert.equal((await fetch(`http://127.0.0.1:${mx.daemon.monitoringPort}/healthz`)).status, 200);
    } finally {
      await mx.stop();
    }
  });

  /** Fills the file system of the spool to its last byte (another process filling the disk). */
  function fillUp(): string {
    const filler = join(mountPoint, 'filler');
    try {
      writeFileSync(filler, Buffer.alloc(4 * 1024 * 1024));
    } catch (error) {
      assert.equal((error as NodeJS.ErrnoException).code, 'ENOSPC');
    }
    return filler;
  }

  it('with a full spool and a healthy primary: drains on its own (delivering is what frees space), and again after a restart', async () => {
    const extra = 'relay: { probeInterval: 0.2 }\nlimits: { messageSize: 100000 }';
    let mx = await startTestDaemon({ spoolDir: mountPoint, primaryPort: primary.port, extra });
    try {
      await queueWhileDown(mx, 10);
      fillUp();
      await primary.start();
      await waitFor(() => queuedIds(mountPoint).length === 0, 10_000);
      assert.equal(new Set(primary.messageIds()).size, 10);
      assert.equal(primary.messageIds().length, 10, 'each once');

      await primary.stop();
      rmSync(join(mountPoint, 'filler'));
      await (await fetch(`http://127.0.0.1:${mx.daemon.monitoringPort}/healthz`)).text(); // the free-space look, now (not within the next second)
      await queueWhileDown(mx, 10, 'ok@d2.example');
      await mx.stop();
      fillUp();
      mx = await startTestDaemon({ spoolDir: mountPoint, primaryPort: primary.port, extra });
      await primary.start();
      await waitFor(() => queuedIds(mountPoint).length === 0, 10_000);
      assert.equal(primary.messageIds().length, 20);
    } finally {
      await mx.stop();
    }
  });

  it('with a full spool and a primary answering 451: each message tried once, its backoff kept in memory, nothing lost', async () => {
    const mx = await startTestDaemon({
      spoolDir: mountPoint,
      primaryPort: primary.port,
      extra: 'relay: { probeInterval: 0.2 }\nlimits: { messageSize: 100000 }',
    });
    try {
      await queueWhileDown(mx, 10, 'busy@d2.example');
      primary.rcptReplies.set('busy@d2.example', [451, '4.3.0 try again later']);
      const filler = fillUp();
      await primary.start();
      const deferred = () => new Set(mx.logs.filter((line) => line.event === 'delivery' && line.status === 'deferred').map((line) => line.queueId));
      await waitFor(() => deferred().size === 10);
      assert.ok(mx.logs.some((line) => line.event === 'spool_full'));
      assert.deepEqual(
        readdirSync(join(mountPoint, 'tmp')).filter((name) => name.endsWith('.env')),
        [],
        'no half-written envelope left in tmp/',
      );
      await waitFor(() => mx.logs.some((line) => line.event === 'spool_low'));
      rmSync(filler);
      await waitFor(() => mx.logs.some((line) => line.event === 'spool_ok'));
      await waitFor(() => existsSync(join(mountPoint, 'space.reserve'))); // written again once there is room
      assert.ok(primary.connections <= 11, `${primary.connections} connections: one probe, then at most one per message until its backoff is due`);
      assert.equal(mx.logs.filter((line) => line.event === 'delivery').length, 10, 'each message tried once');
      assert.equal(queuedIds(mountPoint).length, 10, 'nothing lost');
    } finally {
      await mx.stop();
    }
  });
});

describe('relay: reload and size', () => {
  it('moves queued mail to a new primary on SIGHUP without a spool rescan', async () => {
    const next = new TestPrimary(await freePort());
    await next.start();
    const mx = await startTestDaemon({ extra: 'relay: { probeInterval: 300 }' }); // its primary is a closed port
    try {
      await sendWith(mx.port, 'sender@remote.example', ['RCPT TO:<ok@d2.example>'], message('moved'));
      await waitFor(() => mx.logs.some((line) => line.event === 'primary_down'));
      const yaml = withPrimary(baseConfig('relay: { probeInterval: 300 }'), next.port).replace('./domains.txt', join(mx.dir, 'domains.txt'));
      await mx.daemon.reload(parseConfig(yaml, join(mx.dir, 'secondarymx.yaml')));
      await waitFor(() => next.received.length === 1);
      assert.deepEqual(next.messageIds(), ['<moved@remote.example>']);
    } finally {
      await mx.stop();
      await next.stop();
    }
  });

  it("learns the primary's SIZE from its EHLO, never accepts more than it takes, and remembers it across a restart", async () => {
    const primary = new TestPrimary(await freePort(), { size: 20000 });
    await primary.start();
    const { dir, file } = writeTestConfig(withPrimary(baseConfig('relay: { probeInterval: 0.2 }'), primary.port));
    try {
      const first = await spawnDaemon(file);
      const ehlo = async (port: number) => {
        const { client, ehlo: reply } = await SmtpClient.session(port);
        await client.quit();
        return Number(reply.lines.map((line) => /^250[ -]SIZE (\d+)$/.exec(line)?.[1]).find(Boolean));
      };
      assert.equal(await ehlo(first.port), 100_000_000, "AlternC's limit until the primary says otherwise");
      await sendWith(first.port, 's@remote.example', ['RCPT TO:<ok@d2.example>'], message('learn'));
      await waitFor(() => first.logs.some((line) => line.event === 'primary_capabilities'));
      assert.equal(await ehlo(first.port), 20000 - 4096);
      const { client } = await SmtpClient.session(first.port);
      const big = await client.command('MAIL FROM:<s@remote.example> SIZE=19000');
      assert.deepEqual([big.code, big.enhanced], [552, '5.3.4']);
      await client.quit();
      first.child.kill('SIGTERM');
      await first.exited;
      await primary.stop();
      const second = await spawnDaemon(file); // the primary is down: the limit comes from the spool
      assert.equal(await ehlo(second.port), 20000 - 4096);
      second.child.kill('SIGTERM');
      await second.exited;
    } finally {
      await primary.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('counts its own Received header in limits.messageSize: what it accepts, a primary with the same limit takes', async () => {
    const primary = new TestPrimary(await freePort());
    await primary.start();
    const mx = await startTestDaemon({ primaryPort: primary.port, extra: 'limits: { messageSize: 20000 }' });
    try {
      const { client } = await SmtpClient.session(mx.port);
      const exactly = message('exactly', 'z'.repeat(20000 - message('exactly', '').length));
      assert.equal(Buffer.byteLength(exactly), 20000);
      const refused = await client.sendMail('s@remote.example', ['ok@d2.example'], exactly);
      assert.deepEqual([refused.code, refused.enhanced], [552, '5.3.4']);
      const fits = await client.sendMail('s@remote.example', ['ok@d2.example'], message('fits', 'z'.repeat(19000)));
      assert.equal(fits.code, 250);
      await client.quit();
      await waitFor(() => primary.received.length === 1);
      const size = Number(primary.received[0].mailArgs.SIZE);
      assert.equal(size, primary.received[0].data.length);
      assert.ok(size <= 20000, `SIZE=${size}`);
    } finally {
      await mx.stop();
      await primary.stop();
    }
  });
});

describe('relay: a step of the wall clock', () => {
  const libfaketime = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';
  let primary: TestPrimary;
  let dir: string;
  beforeEach(async function () {
    if (!existsSync(libfaketime)) this.skip(); // Debian's faketime package (.ci/run installs it)
    primary = new TestPrimary(await freePort());
    await primary.start();
    dir = mkdtempSync(join(tmpdir(), 'secondarymx-clock-'));
  });
  afterEach(async () => {
    await primary?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const [name, before, after] of [
    ['an hour back after a deferral', '+0', '-3600'],
    ['back from two days ahead, where the deferral was written', '+172800', '+0'],
  ] as const) {
    it(`delays no retry: the wall clock stepped ${name}`, async () => {
      const clock = join(dir, 'faketime');
      writeFileSync(clock, `${before}\n`);
      const { dir: configDir, file } = writeTestConfig(withPrimary(baseConfig('relay: { minBackoff: 2, probeInterval: 0.2 }'), primary.port));
      // libfaketime moves the wall clock only, as settimeofday or NTP does: CLOCK_MONOTONIC (timers) goes on.
      const env = [`LD_PRELOAD=${libfaketime}`, `FAKETIME_TIMESTAMP_FILE=${clock}`, 'FAKETIME_NO_CACHE=1', 'FAKETIME_DONT_FAKE_MONOTONIC=1'];
      const daemon = await spawnDaemon(file, { prefix: ['env', ...env] });
      try {
        primary.rcptReplies.set('alice@d1.example', [451, '4.3.0 try again later']);
        const id = await sendWith(daemon.port, 'sender@remote.example', ['RCPT TO:<alice@d1.example>'], message('stepped'));
        await waitFor(() => daemon.logs.some((line) => line.event === 'delivery' && line.status === 'deferred' && line.queueId === id));
        writeFileSync(clock, `${after}\n`);
        primary.rcptReplies.delete('alice@d1.example');
        await waitFor(() => daemon.logs.some((line) => line.event === 'delivery' && line.status === 'sent' && line.queueId === id), 15_000);
        assert.equal(primary.messageIds().length, 1);
      } finally {
        daemon.child.kill('SIGTERM');
        await daemon.exited;
        rmSync(configDir, { recursive: true, force: true });
      }
    });
  }
});
