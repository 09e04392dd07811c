import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { X509Certificate } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeCertificate } from './helpers/certificate.js';
import { CLI, runCli, spawnDaemon } from './helpers/cli.js';
import { baseConfig, startTestDaemon, writeTestConfig, type TestDaemon } from './helpers/daemon.js';
import { freePort, TestPrimary } from './helpers/primary.js';
import { message, pick, queuedId, SmtpClient } from './helpers/smtp-client.js';
import { queuedIds } from './helpers/spool-files.js';
import { waitFor } from './helpers/wait.js';

const isRoot = process.getuid?.() === 0;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('hardening: limits on hostile sessions', () => {
  let mx: TestDaemon;
  before(async () => {
    mx = await startTestDaemon({
      extra:
        'limits: { connectionsPerClient: 2, messagesPerConnection: 2, commandsBeforeMail: 5, errorsPerSession: 3, dataTimeout: 0.5, sessionTimeout: 2, commandLength: 600 }\n' +
        'screen: { passTtl: 0 }', // every connection waits for its greeting: the early-talker case needs a pause
    });
  });
  after(async () => mx.stop());

  it('allows limits.connectionsPerClient sessions per address, then 421 4.7.0', async () => {
    const first = await SmtpClient.session(mx.port);
    const second = await SmtpClient.session(mx.port);
    const third = await SmtpClient.connect(mx.port);
    assert.deepEqual(pick(await third.reply()), [421, '4.7.0']);
    await third.closedByServer();
    await first.client.quit();
    await second.client.quit();
  });

  it('asks a connection to reconnect after limits.messagesPerConnection messages', async () => {
    const { client } = await SmtpClient.session(mx.port);
    for (let i = 0; i < 2; i++) assert.equal((await client.sendMail('s@remote.example', ['alice@d1.example'], message(`n${i}`))).code, 250);
    assert.deepEqual(pick(await client.command('MAIL FROM:<s@remote.example>')), [421, '4.7.0']);
    await client.closedByServer();
  });

  it('closes a session that sends limits.commandsBeforeMail commands without a MAIL', async () => {
    const { client } = await SmtpClient.session(mx.port); // EHLO was the first command
    for (let i = 0; i < 4; i++) assert.equal((await client.command('NOOP')).code, 250);
    assert.deepEqual(pick(await client.command('NOOP')), [421, '4.7.0']);
    await client.closedByServer();
  });

  it('closes a session after limits.errorsPerSession error replies', async () => {
    const { client } = await SmtpClient.session(mx.port);
    await client.command('MAIL FROM:<s@remote.example>');
    assert.equal((await client.command('RCPT TO:<a@unknown.example>')).code, 550);
    assert.equal((await client.command('RCPT TO:<b@unknown.example>')).code, 550);
    const third = await client.command('RCPT TO:<c@unknown.example>');
    assert.equal(third.code, 550);
    assert.deepEqual(pick(await client.reply()), [421, '4.7.0']);
    await client.closedByServer();
  });

  it('answers a client that talks before the greeting with 554 and disconnects it', async () => {
    const socket = connect(mx.port, '127.0.0.1');
    socket.setEncoding('latin1');
    let received = '';
    socket.on('data', (data: string) => (received += data));
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.write('EHLO eager.example\r\nMAIL FROM:<s@remote.example>\r\n');
    await new Promise((resolve) => socket.once('close', resolve));
    assert.match(received, /^554 5\.5\.1 /m);
    assert.doesNotMatch(received, /^220 /m);
  });

  it('waits limits.greetingPause before greeting: 0.3 s after connecting is early with 1 s, in time with the default 0.1 s', async () => {
    const talkAfter = async (port: number) => {
      const socket = connect(port, '127.0.0.1');
      socket.setEncoding('latin1');
      let received = '';
      socket.on('data', (data: string) => (received += data));
      await new Promise((resolve) => socket.once('connect', resolve));
      await sleep(300);
      socket.write('QUIT\r\n');
      await new Promise((resolve) => socket.once('close', resolve));
      return received;
    };
    const slow = await startTestDaemon({ extra: 'limits: { greetingPause: 1 }' });
    try {
      const early = await talkAfter(slow.port);
      assert.match(early, /^554 5\.5\.1 /m);
      assert.doesNotMatch(early, /^220 /m);
    } finally {
      await slow.stop();
    }
    assert.match(await talkAfter(mx.port), /^220 [^]*^221 /m);
  });

  it('answers 503 5.5.0 to commands pipelined with EHLO, or after HELO, and disconnects', async () => {
    for (const [first, then] of [
      ['EHLO eager.example\r\nMAIL FROM:<s@remote.example>\r\n', undefined],
      ['HELO old.example\r\n', 'MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@d1.example>\r\n'],
    ] as const) {
      const client = await SmtpClient.connect(mx.port);
      assert.equal((await client.reply()).code, 220);
      client.write(first);
      assert.equal((await client.reply()).code, 250);
      if (then) {
        client.write(then);
        assert.equal((await client.reply()).code, 250);
      }
      assert.deepEqual(pick(await client.reply()), [503, '5.5.0']);
      await client.closedByServer();
    }
  });

  it('cuts off a slow-drip DATA after limits.dataTimeout and keeps nothing', async () => {
    const before = queuedIds(mx.spoolDir).length;
    const { client } = await SmtpClient.session(mx.port);
    for (const step of ['MAIL FROM:<s@remote.example>', 'RCPT TO:<alice@d1.example>', 'DATA']) await client.command(step);
    const started = Date.now();
    const drip = setInterval(() => client.write('x'), 100);
    try {
      assert.deepEqual(pick(await client.reply(5000)), [421, '4.4.2']);
      await client.closedByServer();
    } finally {
      clearInterval(drip);
    }
    assert.ok(Date.now() - started < 3000);
    await waitFor(() => readdirSync(join(mx.spoolDir, 'tmp')).length === 0);
    assert.equal(queuedIds(mx.spoolDir).length, before);
  });

  it('ends a session that outlasts limits.sessionTimeout even when it never goes idle', async () => {
    const { client } = await SmtpClient.session(mx.port);
    const started = Date.now();
    let reply;
    do {
      await sleep(300);
      reply = await client.command('MAIL FROM:<s@remote.example>'); // a transaction: not idle, not "commands without MAIL"
      if (reply.code === 250) reply = await client.command('RSET');
    } while (reply.code === 250 && Date.now() - started < 8000);
    assert.deepEqual(pick(reply), [421, '4.4.2']);
    assert.ok(Date.now() - started >= 1500);
  });

  it('refuses a command line over limits.commandLength and closes the session', async () => {
    const { client } = await SmtpClient.session(mx.port);
    client.write(`MAIL FROM:<${'a'.repeat(700)}@remote.example>\r\n`);
    assert.deepEqual(pick(await client.reply()), [500, '5.5.2']);
    await client.closedByServer();
  });

  it('refuses a non-ASCII local part without SMTPUTF8 (553 5.6.7), accepts it with', async () => {
    const { client } = await SmtpClient.session(mx.port);
    assert.deepEqual(pick(await client.command('MAIL FROM:<j\u00f6rg@remote.example>')), [553, '5.6.7']);
    assert.equal((await client.command('MAIL FROM:<s@remote.example>')).code, 250);
    assert.deepEqual(pick(await client.command('RCPT TO:<j\u00f6rg@d2.example>')), [553, '5.6.7']);
    await client.quit();
    const { client: utf8 } = await SmtpClient.session(mx.port);
    assert.equal((await utf8.command('MAIL FROM:<j\u00f6rg@remote.example> SMTPUTF8')).code, 250);
    assert.equal((await utf8.command('RCPT TO:<j\u00f6rg@d2.example>')).code, 250);
    await utf8.quit();
  });

  it('refuses NUL bytes in addresses (501) and in message data (550 5.6.0)', async () => {
    const { client } = await SmtpClient.session(mx.port);
    assert.equal((await client.command('MAIL FROM:<s\u0000x@remote.example>')).code, 501);
    const reply = await client.sendMail('s@remote.example', ['alice@d1.example'], 'Subject: nul\r\n\r\nbefore\u0000after\r\n');
    assert.deepEqual(pick(reply), [550, '5.6.0']);
    await client.quit();
  });
});

describe('hardening: idle clients', () => {
  it('closes a silent session after limits.idleTimeout', async () => {
    const mx = await startTestDaemon({ extra: 'limits: { idleTimeout: 0.5 }' });
    try {
      const { client } = await SmtpClient.session(mx.port);
      const started = Date.now();
      await client.closedByServer(5000);
      assert.ok(Date.now() - started >= 400);
    } finally {
      await mx.stop();
    }
  });
});

describe('hardening: a read-only spool', () => {
  it('answers 452 4.3.1 while the spool is read-only and accepts again once it is writable', async function () {
    if (!isRoot) this.skip(); // remounting needs root; CI runs as root
    const mountPoint = mkdtempSync(join(tmpdir(), 'secondarymx-ro-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m,mode=0700', 'tmpfs', mountPoint]);
    const mx = await startTestDaemon({ spoolDir: mountPoint, extra: 'limits: { messageSize: 1000000 }' });
    try {
      const { client } = await SmtpClient.session(mx.port);
      execFileSync('mount', ['-o', 'remount,ro', mountPoint]);
      assert.deepEqual(pick(await client.sendMail('s@remote.example', ['alice@d1.example'], message('read-only'))), [452, '4.3.1']);
      execFileSync('mount', ['-o', 'remount,rw', mountPoint]);
      assert.equal((await client.sendMail('s@remote.example', ['alice@d1.example'], message('writable'))).code, 250);
      assert.equal(queuedIds(mountPoint).length, 1);
      await client.quit();
    } finally {
      await mx.stop();
      execFileSync('umount', [mountPoint]);
      rmSync(mountPoint, { recursive: true, force: true });
    }
  });
});

describe('hardening: a misbehaving primary', () => {
  it('survives a primary that answers garbage or too slowly: no loss, no tight retry loop', async () => {
    let connections = 0;
    const garbage = createServer((socket) => {
      connections++;
      socket.end('HTTP/1.1 400 Bad Request\r\n\r\n\u0000\u00ff garbage\r\n');
    });
    const port = await freePort();
    await new Promise<void>((resolve) => garbage.listen(port, '127.0.0.1', resolve));
    const mx = await startTestDaemon({ primaryPort: port, extra: 'relay: { probeInterval: 0.5, commandTimeout: 0.5 }' });
    try {
      await (async () => {
        const { client } = await SmtpClient.session(mx.port);
        assert.equal((await client.sendMail('s@remote.example', ['alice@d1.example'], message('garbage'))).code, 250);
        await client.quit();
      })();
      await sleep(1500);
      assert.ok(connections >= 2 && connections <= 6, `${connections} connections in 1.5 s with probeInterval 0.5 s`);
      assert.equal(queuedIds(mx.spoolDir).length, 1);
      await new Promise<void>((resolve) => garbage.close(() => resolve()));
      const slow = new TestPrimary(port);
      slow.dataDelayMs = 1500; // longer than relay.commandTimeout: the attempt times out after the data
      await slow.start();
      await waitFor(() => mx.logs.some((line) => line.event === 'delivery' && line.status === 'deferred'), 10_000);
      const deferred = mx.logs.find((line) => line.event === 'delivery' && line.status === 'deferred');
      assert.match(String(deferred?.reply), /no answer from the primary for 0.5 s/);
      slow.dataDelayMs = 0;
      assert.equal((await runCli(['flush', '--config', mx.file])).status, 0);
      assert.deepEqual(queuedIds(mx.spoolDir), []);
      assert.ok(slow.messageIds().includes('<garbage@remote.example>'));
      await slow.stop();
    } finally {
      await mx.stop();
    }
  });
});

describe('hardening: secrets', () => {
  it('never shows a MySQL password in logs, check, status or sync output, and warns about a world-readable config', async () => {
    const secret = 'Sup3rS3cretPw';
    const sources = `  - { name: alternc, type: mysql, url: "mysql://mx:${secret}@127.0.0.1:1/alternc", timeout: 2 }`;
    const { dir, file } = writeTestConfig(baseConfig('', sources));
    try {
      chmodSync(file, 0o644);
      const daemon = await spawnDaemon(file);
      const outputs = [
        (await runCli(['check', '--config', file])).stdout,
        (await runCli(['status', '--config', file])).stdout,
        (await runCli(['status', '--json', '--config', file])).stdout,
        (await runCli(['sync', '--config', file])).stdout,
      ];
      daemon.child.kill('SIGTERM');
      await daemon.exited;
      const logs = JSON.stringify(daemon.logs);
      for (const text of [...outputs, logs]) assert.ok(!text.includes(secret), `password shown in: ${text.slice(0, 300)}`);
      assert.match(outputs[1], /failing: cannot connect to MySQL: ECONNREFUSED/);
      assert.ok(daemon.logs.some((line) => /world-readable/.test(String(line.msg))));
      chmodSync(file, 0o600);
      const quiet = await spawnDaemon(file);
      quiet.child.kill('SIGTERM');
      await quiet.exited;
      assert.ok(!quiet.logs.some((line) => /world-readable/.test(String(line.msg))));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('hardening: TLS', () => {
  let dir: string;
  const makeCert = (name: string) => makeCertificate(dir, name);
  /** SHA-256 of the certificate now in cert.pem, as TLS peers see it. */
  const fingerprint = () => new X509Certificate(readFileSync(join(dir, 'cert.pem'))).fingerprint256;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'secondarymx-tls2-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('refuses TLS below tls.minVersion (TLSv1.2 by default)', async () => {
    makeCert('mx2.test.example');
    const mx = await startTestDaemon({ extra: `tls: { key: ${join(dir, 'key.pem')}, cert: ${join(dir, 'cert.pem')} }` });
    try {
      const { client } = await SmtpClient.session(mx.port);
      await assert.rejects(client.startTls({ maxVersion: 'TLSv1.1', minVersion: 'TLSv1' }));
      client.destroy();
      const { client: modern } = await SmtpClient.session(mx.port);
      const secure = await modern.startTls();
      assert.match(secure.getProtocol() ?? '', /^TLSv1\.[23]$/);
      modern.destroy();
    } finally {
      await mx.stop();
    }
  });

  it('reloads the certificate on SIGHUP without dropping an open session', async () => {
    makeCert('old.example');
    const { dir: configDir, file } = writeTestConfig(baseConfig(`tls: { key: ${join(dir, 'key.pem')}, cert: ${join(dir, 'cert.pem')} }`));
    const daemon = await spawnDaemon(file);
    try {
      const { client: before } = await SmtpClient.session(daemon.port);
      const old = await before.startTls();
      assert.equal(String(old.getPeerCertificate().subject.CN), 'old.example');
      makeCert('new.example');
      const newPrint = fingerprint();
      daemon.child.kill('SIGHUP');
      await waitFor(() => daemon.logs.some((line) => line.event === 'tls_reloaded'));
      const { client: after } = await SmtpClient.session(daemon.port);
      const fresh = await after.startTls();
      assert.equal(String(fresh.getPeerCertificate().subject.CN), 'new.example');
      assert.equal(fresh.getPeerCertificate().fingerprint256, newPrint, 'the new certificate, not merely one named like it');
      assert.equal((await before.command('EHLO again.example')).code, 250); // the old session lives on
      before.destroy();
      after.destroy();
    } finally {
      daemon.child.kill('SIGTERM');
      await daemon.exited;
      rmSync(configDir, { recursive: true, force: true });
    }
  });
});

describe('hardening: least privilege', () => {
  it('started as root with user: nobody, binds, then runs as nobody and still spools', async function () {
    if (!isRoot) this.skip();
    const { dir, file } = writeTestConfig(`${baseConfig()}user: nobody\n`);
    chmodSync(dir, 0o755); // the service user must be able to reach its spool
    try {
      const daemon = await spawnDaemon(file);
      const status = readFileSync(`/proc/${daemon.child.pid}/status`, 'utf8');
      const uid = Number(execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }));
      assert.match(status, new RegExp(`^Uid:\\s+${uid}\\s+${uid}\\s+${uid}\\s+${uid}$`, 'm'));
      const { client } = await SmtpClient.session(daemon.port);
      assert.equal((await client.sendMail('s@remote.example', ['alice@d1.example'], message('as nobody'))).code, 250);
      await client.quit();
      const [id] = queuedIds(join(dir, 'spool'));
      assert.equal(statSync(join(dir, 'spool', 'queue', `${id}.msg`)).uid, uid);
      assert.equal((statSync(join(dir, 'spool', 'queue', `${id}.msg`)).mode & 0o777).toString(8), '600');
      assert.equal((statSync(join(dir, 'spool', 'queue')).mode & 0o777).toString(8), '700');
      daemon.child.kill('SIGTERM');
      assert.equal((await daemon.exited).code, 0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('serves no session before it runs as the service user, however large the spool', async function () {
    if (!isRoot) this.skip();
    this.timeout(60_000);
    const { dir, file } = writeTestConfig(`${baseConfig()}user: nobody\n`);
    chmodSync(dir, 0o755);
    const spool = join(dir, 'spool');
    const nobody = Number(execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }));
    try {
      mkdirSync(join(spool, 'corrupt'), { recursive: true });
      for (let i = 0; i < 20_000; i++) writeFileSync(join(spool, 'corrupt', `f${i}`), ''); // a start used to walk (chown) them all
      execFileSync('chown', ['-R', 'nobody', spool]);
      const child = spawn(process.execPath, ['--expose-gc', CLI, 'serve', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
      let port: number | undefined;
      createInterface({ input: child.stdout! }).on('line', (line) => {
        const entry = JSON.parse(line) as { event?: string; listen?: string[] };
        if (entry.event === 'listening') port = Number(entry.listen![0].split(':').pop());
      });
      await waitFor(() => port !== undefined, 10_000);
      let served = 0;
      for (let attempt = 0; attempt < 200 && served < 3; attempt++) {
        const socket = connect(port!, '127.0.0.1');
        const greeting = await new Promise<string>((resolve) => {
          socket.once('data', (data) => resolve(data.toString()));
          socket.once('error', () => resolve(''));
          socket.once('close', () => resolve(''));
        });
        const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))![1]);
        socket.destroy();
        if (greeting.startsWith('220')) {
          served++;
          assert.equal(uid, nobody, 'a session was greeted while the daemon ran as root');
        } else assert.match(greeting, /^421 4\.3\.2 .*starting/);
      }
      assert.ok(served > 0);
      child.kill('SIGTERM');
      await once(child, 'exit');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a spool the service user does not own, naming the chown to run, and changes no owner', async function () {
    if (!isRoot) this.skip();
    const { dir, file } = writeTestConfig(`${baseConfig()}user: nobody\n`);
    chmodSync(dir, 0o755);
    const spool = join(dir, 'spool');
    const secret = join(dir, 'root-only');
    try {
      writeFileSync(secret, 'root only\n', { mode: 0o600 });
      mkdirSync(join(spool, 'queue'), { recursive: true });
      symlinkSync(secret, join(spool, 'queue', 'planted'));
      const result = await runCli(['serve', '--config', file]);
      assert.equal(result.status, 1);
      assert.match(result.stderr, new RegExp(`spool ${spool} is not a folder owned by nobody \\(uid \\d+\\): run "chown -R nobody ${spool}"`));
      assert.equal(statSync(secret).uid, 0, 'no chown through a symlink');
      assert.equal(statSync(spool).uid, 0, 'no chown at all');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("runs a spool-writing command typed as root as the spool's owner: no root-owned file, no write through a planted symlink", async function () {
    if (!isRoot) this.skip();
    const { dir, file } = writeTestConfig(`${baseConfig()}user: nobody\n`);
    chmodSync(dir, 0o755);
    const spool = join(dir, 'spool');
    const secret = join(dir, 'root-only');
    const nobody = Number(execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }));
    try {
      writeFileSync(secret, 'root only\n', { mode: 0o600 });
      const daemon = await spawnDaemon(file);
      const { client } = await SmtpClient.session(daemon.port);
      const id = queuedId((await client.sendMail('s@remote.example', ['alice@d1.example'], message('held by root'))).text);
      await client.quit();
      daemon.child.kill('SIGTERM');
      await daemon.exited;
      symlinkSync(secret, join(spool, 'tmp', `${id}.env`)); // the service user, compromised, plants this
      const hold = await runCli(['queue', 'hold', id, '--config', file]); // typed as root, no daemon running
      assert.equal(hold.status, 0, hold.stderr);
      assert.equal(readFileSync(secret, 'utf8'), 'root only\n', 'nothing written through the symlink');
      assert.equal(statSync(join(spool, 'queue', `${id}.env`)).uid, nobody);
      assert.equal((await runCli(['sync', '--config', file])).status, 0);
      for (const name of readdirSync(join(spool, 'directory'))) assert.equal(statSync(join(spool, 'directory', name)).uid, nobody, name);
      const again = await spawnDaemon(file); // and the daemon, as nobody, starts on what root's commands left
      again.child.kill('SIGTERM');
      assert.equal((await again.exited).code, 0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses user: for a daemon not started as root, and an unknown user', async () => {
    const { dir, file } = writeTestConfig(`${baseConfig()}user: no-such-user-here\n`);
    try {
      const result = await runCli(['serve', '--config', file]);
      assert.equal(result.status, 1);
      assert.match(result.stderr, isRoot ? /no such user: no-such-user-here/ : /not started as root/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
