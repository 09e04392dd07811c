import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { newQueueId } from '../src/spool/queue-id.js';
import { Spool } from '../src/spool/spool.js';
import { runCli, spawnDaemon } from './helpers/cli.js';
import { baseConfig, withPrimary, writeTestConfig } from './helpers/daemon.js';
import { freePort, TestPrimary } from './helpers/primary.js';
import { message, SmtpClient } from './helpers/smtp-client.js';
import { queuedEnvelope, queuedIds } from './helpers/spool-files.js';
import { waitFor } from './helpers/wait.js';

const isRoot = process.getuid?.() === 0;

/** Queues `count` messages with a daemon while the primary is down, then kills it with SIGKILL. */
async function queueThenKill(file: string, count: number): Promise<void> {
  const daemon = await spawnDaemon(file);
  const { client } = await SmtpClient.session(daemon.port);
  for (let i = 0; i < count; i++) assert.equal((await client.sendMail('s@remote.example', ['alice@d1.example'], message(`m${i}`))).code, 250);
  await client.quit();
  daemon.child.kill('SIGKILL');
  await daemon.exited;
}

describe('crash: locks die with their holder', () => {
  let primary: TestPrimary;
  let dir: string;
  let file: string;
  let spoolDir: string;
  beforeEach(async () => {
    primary = new TestPrimary(await freePort());
    ({ dir, file } = writeTestConfig(withPrimary(baseConfig('relay: { probeInterval: 0.2, queueLifetime: 20s }'), primary.port)));
    spoolDir = join(dir, 'spool');
  });
  afterEach(async () => {
    await primary.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('starts as pid 1 in a fresh pid namespace (a container after kill -9) although serve.pid says 1', async function () {
    if (!isRoot) this.skip(); // unshare needs root; CI runs as root
    await queueThenKill(file, 1);
    writeFileSync(join(spoolDir, 'serve.pid'), '1\n'); // what a container's daemon wrote before its kill -9
    const daemon = await spawnDaemon(file, { prefix: ['unshare', '-pfm', '--mount-proc', '--kill-child'] });
    try {
      assert.equal(daemon.logs.find((line) => line.event === 'listening')?.pid, 1);
      const status = await runCli(['status', '--config', file]);
      assert.match(status.stdout, /^daemon: running \(pid 1\)/m);
    } finally {
      // unshare ignores SIGTERM while it waits: the daemon (its child) is told, as systemd or docker would.
      execFileSync('pkill', ['-TERM', '-P', String(daemon.child.pid)]);
      await daemon.exited;
    }
  });

  it('delivers messages whose stale locks name a live, unrelated pid, and clears stale locks at start', async () => {
    await queueThenKill(file, 5);
    const ids = queuedIds(spoolDir);
    const locks = join(spoolDir, 'locks');
    // Left by a kill -9 during replay, and the pid is now someone else's (here: this test runner, and init).
    ids.forEach((id, i) => writeFileSync(join(locks, id), i % 2 ? `${process.pid} 1 old-boot\n` : `1 12345 ${readBootId()}\n`));
    writeFileSync(join(locks, '0MX0AAAAAAAAAAAAAAA'), '1 12345 x\n'); // a delivered message's lock, left by a crash
    await primary.start();
    const daemon = await spawnDaemon(file);
    try {
      await waitFor(() => queuedIds(spoolDir).length === 0, 5000);
      assert.equal(primary.received.length, 5);
      assert.ok(daemon.logs.some((line) => line.event === 'stale_locks_removed' && line.locks === 6));
      await waitFor(() => readdirSync(locks).filter((name) => !name.startsWith('.holder.')).length === 0); // the last unlock follows the removal
      assert.equal(daemon.logs.filter((line) => line.event === 'delivery' && line.status === 'expired').length, 0);
    } finally {
      daemon.child.kill('SIGTERM');
      await daemon.exited;
    }
  });

  it('flush exits 75 when a message stays busy (a live process holds its lock)', async () => {
    await queueThenKill(file, 2);
    await primary.start();
    const [held] = queuedIds(spoolDir);
    const spool = await Spool.forDelivery(spoolDir);
    assert.equal(await spool.locks.lock(held), true); // this live test process holds it
    try {
      const flush = await runCli(['flush', '--json', '--config', file]);
      assert.equal(flush.status, 75, flush.stderr);
      assert.deepEqual(JSON.parse(flush.stdout), { via: 'standalone', messages: 2, delivered: 1, deferred: 0, failed: 0, unreachable: 0, busy: 1 });
    } finally {
      await spool.locks.unlock(held);
    }
  });
});

describe('crash: start-up after a crash during a mass expiry', () => {
  it('listens before it has finished the notices the crash interrupted, then finishes every one, once', async function () {
    this.timeout(60_000);
    // The DSNs go to a smarthost that is down: they stay queued, so the test can count them.
    const { dir, file } = writeTestConfig(baseConfig('relay: { probeInterval: 0.2 }\ndsn: { relay: { host: 127.0.0.1, port: 1 } }'));
    const spoolDir = join(dir, 'spool');
    try {
      const spool = await Spool.forDelivery(spoolDir);
      const total = 300;
      for (let i = 0; i < total; i++) {
        // Failed on expiry, notice recorded, not yet queued: what a kill -9 leaves.
        await spool.enqueue(newQueueId(), Buffer.from(message(`expired ${i}`)), {
          arrival: new Date(Date.now() - 86400_000).toISOString(),
          sender: 'sender@remote.example',
          recipients: [{ address: 'alice@d1.example', state: 'failed', status: '4.4.7' }],
          bodyType: '7bit',
          smtpUtf8: false,
          client: { address: '127.0.0.1', helo: 'x' },
          notice: { id: newQueueId(), action: 'failed', recipients: ['alice@d1.example'] },
        });
      }
      const daemon = await spawnDaemon(file);
      try {
        const listening = daemon.logs.findIndex((line) => line.event === 'listening');
        const notices = () => daemon.logs.filter((line) => line.event === 'dsn_queued' && line.action === 'failed').length;
        const beforeListening = daemon.logs.slice(0, listening).filter((line) => line.event === 'dsn_queued' && line.action === 'failed').length;
        assert.ok(beforeListening < total, `${beforeListening} of ${total} notices finished before listening`);
        await waitFor(() => notices() === total, 30_000);
        await waitFor(() => queuedIds(spoolDir).length === total, 10_000); // the originals left, their DSNs wait for the smarthost
        assert.ok(queuedIds(spoolDir).every((id) => queuedEnvelope(spoolDir, id).kind === 'dsn'));
      } finally {
        daemon.child.kill('SIGTERM');
        await daemon.exited;
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

function readBootId(): string {
  return execFileSync('cat', ['/proc/sys/kernel/random/boot_id'], { encoding: 'utf8' }).trim();
}
