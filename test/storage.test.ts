import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnDaemon } from './helpers/cli.js';
import { baseConfig, startTestDaemon, writeTestConfig } from './helpers/daemon.js';
import { message, pick, SmtpClient } from './helpers/smtp-client.js';
import { waitFor } from './helpers/wait.js';

const isRoot = process.getuid?.() === 0;

async function healthz(port: number): Promise<[number, string]> {
  const response = await fetch(`http://127.0.0.1:${port}/healthz`);
  return [response.status, (await response.text()).trim()];
}

describe('storage: what /healthz says is what MAIL meets', () => {
  it('refuses MAIL with 452 4.3.1 and reports 503 while the spool has less than 1.5 x limits.messageSize free', async function () {
    if (!isRoot) this.skip(); // mounts need root; CI runs as root
    const mountPoint = mkdtempSync(join(tmpdir(), 'secondarymx-full-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m,mode=0700', 'tmpfs', mountPoint]);
    const mx = await startTestDaemon({ spoolDir: mountPoint, extra: 'limits: { messageSize: 2000000 }' });
    try {
      const { client } = await SmtpClient.session(mx.port);
      assert.equal((await client.sendMail('s@remote.example', ['alice@d1.example'], message('room'))).code, 250);
      const free = () => {
        const s = statfsSync(mountPoint);
        return s.bavail * s.bsize;
      };
      writeFileSync(join(mountPoint, 'filler'), Buffer.alloc(free() - 2_500_000)); // 2.5 MB left: a 4 KB message fits, a 2 MB one may not
      const [status, reason] = await healthz(mx.daemon.monitoringPort);
      assert.equal(status, 503);
      assert.match(reason, /^spool nearly full: 2\.\d MB free, a message may need 2\.9 MB \(1\.5 × limits\.messageSize\)$/);
      assert.deepEqual(pick(await client.command('MAIL FROM:<s@remote.example>')), [452, '4.3.1']);
      const metrics = await (await fetch(`http://127.0.0.1:${mx.daemon.monitoringPort}/metrics`)).text();
      const gauge = Number(/^secondarymx_spool_free_bytes (\d+)$/m.exec(metrics)?.[1]);
      assert.ok(gauge > 2_000_000 && gauge < 3_000_000, `secondarymx_spool_free_bytes ${gauge}`);
      rmSync(join(mountPoint, 'filler'));
      await waitFor(async () => (await healthz(mx.daemon.monitoringPort))[0] === 200);
      await waitFor(async () => (await client.command('MAIL FROM:<s@remote.example>')).code === 250, 3000);
      await client.quit();
      assert.deepEqual(
        mx.logs.filter((line) => ['spool_low', 'spool_gone', 'spool_ok'].includes(String(line.event))).map((line) => line.event),
        ['spool_low', 'spool_ok'],
      );
    } finally {
      await mx.stop();
      execFileSync('umount', [mountPoint]);
      rmSync(mountPoint, { recursive: true, force: true });
    }
  });

  it('counts the messages in flight: ten senders at once never take the spool below its free-space guard', async function () {
    if (!isRoot) this.skip();
    const mountPoint = mkdtempSync(join(tmpdir(), 'secondarymx-inflight-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', mountPoint]);
    const messageSize = 200_000;
    const mx = await startTestDaemon({ spoolDir: mountPoint, extra: `limits: { messageSize: ${messageSize} }` });
    try {
      const sessions = await Promise.all(Array.from({ length: 10 }, () => SmtpClient.session(mx.port)));
      // Every MAIL first, then every DATA: each sender saw the room the free space showed then.
      const mail = await Promise.all(sessions.map(({ client }) => client.command('MAIL FROM:<s@remote.example>')));
      const body = message('big', 'x'.repeat(180_000));
      const data = await Promise.all(
        sessions.map(async ({ client }, i) => {
          if (mail[i].code !== 250) return mail[i];
          await client.command('RCPT TO:<alice@d1.example>');
          await client.command('DATA');
          return client.data(body);
        }),
      );
      for (const { client } of sessions) await client.quit();
      const taken = mail.filter((reply) => reply.code === 250).length;
      assert.ok(taken > 0 && taken < 10, `${taken} of 10 taken at MAIL`);
      assert.deepEqual(mail.filter((reply) => reply.code !== 250).map(pick), Array(10 - taken).fill([452, '4.3.1']));
      assert.deepEqual(
        data.filter((reply) => reply.code !== 452).map((reply) => reply.code),
        Array(taken).fill(250),
        'a transaction taken at MAIL had room for its message',
      );
      const left = statfsSync(mountPoint);
      assert.ok(left.bavail * left.bsize >= messageSize, `${left.bavail * left.bsize} bytes free at the end`);
    } finally {
      await mx.stop();
      execFileSync('umount', [mountPoint]);
      rmSync(mountPoint, { recursive: true, force: true });
    }
  });

  it('promises a transaction without SIZE= at most 10 MB at MAIL: with a 20 MB limit, a 62 MB spool takes four such senders at once, not two', async function () {
    if (!isRoot) this.skip();
    const mountPoint = mkdtempSync(join(tmpdir(), 'secondarymx-undeclared-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=62m,mode=0700', 'tmpfs', mountPoint]);
    const mx = await startTestDaemon({ spoolDir: mountPoint, extra: 'limits: { messageSize: 20000000 }' });
    try {
      const sessions = await Promise.all(Array.from({ length: 6 }, () => SmtpClient.session(mx.port)));
      // The guard keeps 30 MB (1.5 x the limit): 62 MB less 10 MB promised to each, four times, leaves 22.
      const mail = [];
      for (const { client } of sessions) mail.push(pick(await client.command('MAIL FROM:<s@remote.example>')));
      assert.deepEqual(mail, [...Array(4).fill([250, '2.1.0']), [452, '4.3.1'], [452, '4.3.1']]);
      const declared = await SmtpClient.session(mx.port);
      assert.deepEqual(pick(await declared.client.command('MAIL FROM:<s@remote.example> SIZE=1000')), [452, '4.3.1'], 'no room left for anyone');
      for (const { client } of [...sessions, declared]) await client.quit();
    } finally {
      await mx.stop();
      execFileSync('umount', [mountPoint]);
      rmSync(mountPoint, { recursive: true, force: true });
    }
  });

  it('refuses mail (451 4.3.0), stops delivery and says so when the spool folder is deleted under it, even once a new one is made', async () => {
    const mx = await startTestDaemon();
    try {
      const { client } = await SmtpClient.session(mx.port);
      rmSync(mx.spoolDir, { recursive: true, force: true });
      await waitFor(() => mx.logs.some((line) => line.event === 'spool_gone'), 3000);
      assert.deepEqual(pick(await client.command('MAIL FROM:<s@remote.example>')), [451, '4.3.0']);
      for (const sub of ['tmp', 'queue']) mkdirSync(join(mx.spoolDir, sub), { recursive: true }); // someone recreates it
      await (await fetch(`http://127.0.0.1:${mx.daemon.monitoringPort}/healthz`)).text(); // the folder check, now
      assert.deepEqual(pick(await client.command('MAIL FROM:<s@remote.example>')), [451, '4.3.0']);
      const [status, reason] = await healthz(mx.daemon.monitoringPort);
      assert.equal(status, 503);
      assert.match(reason, /is not the folder this daemon locked \(deleted, moved or replaced\): restart the daemon$/);
      assert.ok(
        mx.logs.some((line) => line.event === 'spool_fault'),
        'delivery stopped too',
      );
      await client.quit();
    } finally {
      await mx.stop();
    }
  });
});

describe('storage: nothing left in tmp/', () => {
  it('removes the files of the sessions a graceful stop cut in the middle of DATA', async () => {
    const { dir, file } = writeTestConfig(baseConfig('limits: { shutdownTimeout: 1 }'));
    try {
      const daemon = await spawnDaemon(file);
      const clients: SmtpClient[] = [];
      for (let i = 0; i < 3; i++) {
        const { client } = await SmtpClient.session(daemon.port);
        for (const command of ['MAIL FROM:<s@remote.example>', 'RCPT TO:<alice@d1.example>', 'DATA']) await client.command(command);
        client.write('Subject: half\r\n\r\nhalf a message\r\n');
        clients.push(client);
      }
      const tmp = join(dir, 'spool', 'tmp');
      await waitFor(() => readdirSync(tmp).length === 3);
      daemon.child.kill('SIGTERM');
      await daemon.exited;
      assert.deepEqual(readdirSync(tmp), []);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
