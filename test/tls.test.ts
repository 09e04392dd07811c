import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { makeCertificate } from './helpers/certificate.js';
import { runCli, spawnDaemon } from './helpers/cli.js';
import { baseConfig, startTestDaemon, writeTestConfig, type TestDaemon } from './helpers/daemon.js';
import { freePort, TestPrimary } from './helpers/primary.js';
import { waitFor } from './helpers/wait.js';
import { message, SmtpClient, queuedId } from './helpers/smtp-client.js';
import { storedMessage } from './helpers/spool-files.js';

/** Sends one message with nodemailer's SMTP client, as a real sending MTA would. */
function sendWithNodemailer(port: number, options: { requireTLS: boolean }, from: string, to: string[], body: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const connection = new SMTPConnection({
      host: '127.0.0.1',
      port,
      name: 'sender.example',
      requireTLS: options.requireTLS,
      ignoreTLS: !options.requireTLS,
      tls: { rejectUnauthorized: false },
    });
    connection.once('error', reject);
    connection.connect(() => {
      connection.send({ from, to }, body, (error, info) => {
        connection.quit();
        if (error) reject(error);
        else resolve(info.response);
      });
    });
  });
}

describe('receive: STARTTLS and a real client', () => {
  let certDir: string;
  let mx: TestDaemon;

  before(async () => {
    certDir = mkdtempSync(join(tmpdir(), 'secondarymx-tls-'));
    makeCertificate(certDir, 'mx2.test.example');
    mx = await startTestDaemon({ extra: `tls: { key: ${join(certDir, 'key.pem')}, cert: ${join(certDir, 'cert.pem')} }` });
  });
  after(async () => {
    await mx.stop();
    rmSync(certDir, { recursive: true, force: true });
  });

  it('offers STARTTLS when tls is configured', async () => {
    const { client, ehlo } = await SmtpClient.session(mx.port);
    await client.quit();
    assert.ok(
      ehlo.lines.some((line) => line.slice(4) === 'STARTTLS'),
      ehlo.lines.join(' | '),
    );
  });

  it('accepts mail from nodemailer over STARTTLS and records ESMTPS in the Received header', async () => {
    const response = await sendWithNodemailer(mx.port, { requireTLS: true }, 'sender@remote.example', ['alice@d1.example'], message('over tls'));
    const id = queuedId(response);
    const stored = storedMessage(mx.spoolDir, id).toString('utf8');
    assert.match(stored, /^Received: from sender\.example \(\[127\.0\.0\.1\]\)\r\n\tby mx2\.test\.example \(alternc-secondarymx\) with ESMTPS id /);
  });

  it('gives nodemailer the RCPT refusal for an unknown domain', async () => {
    await assert.rejects(
      sendWithNodemailer(mx.port, { requireTLS: false }, 'sender@remote.example', ['someone@unknown.example'], message('relay')),
      (error: { responseCode?: number; response?: string }) => error.responseCode === 550 && /5\.7\.1/.test(error.response ?? ''),
    );
  });
});

describe('receive: without tls', () => {
  it('refuses STARTTLS', async () => {
    const mx = await startTestDaemon();
    try {
      const { client } = await SmtpClient.session(mx.port);
      const reply = await client.command('STARTTLS');
      assert.ok(reply.code >= 500 && reply.code < 600, reply.lines.join(' | '));
      await client.quit();
    } finally {
      await mx.stop();
    }
  });
});

describe('relay: a verified TLS session to the primary (primary.tls)', () => {
  let certDir: string;
  let tls: { key: Buffer; cert: Buffer };
  let fingerprint: string;
  before(() => {
    certDir = mkdtempSync(join(tmpdir(), 'secondarymx-primary-tls-'));
    makeCertificate(certDir, 'primary.test.example', ['subjectAltName=IP:127.0.0.1']);
    tls = { key: readFileSync(join(certDir, 'key.pem')), cert: readFileSync(join(certDir, 'cert.pem')) };
    fingerprint = execFileSync('openssl', ['x509', '-in', join(certDir, 'cert.pem'), '-noout', '-fingerprint', '-sha256'], { encoding: 'utf8' })
      .trim()
      .split('=')[1];
  });
  after(() => rmSync(certDir, { recursive: true, force: true }));

  const cases: Array<[string, () => string, boolean, RegExp | undefined, boolean?]> = [
    ['a certificate signed by the configured CA', () => `tls: { ca: ${join(certDir, 'cert.pem')} }`, true, undefined],
    ['the pinned fingerprint', () => `tls: { fingerprint: "${fingerprint}" }`, true, undefined],
    ['another fingerprint', () => `tls: { fingerprint: "${'AB:'.repeat(31)}AB" }`, false, /is not the pinned AB:AB/],
    ['an unknown CA (the system CAs)', () => 'tls: {}', false, /TLS: self[- ]signed certificate/],
    // Never a fallback to clear text when verification is asked.
    [
      'no STARTTLS at all',
      () => `tls: { fingerprint: "${fingerprint}" }`,
      false,
      /no STARTTLS offered, and primary\.tls requires a verified TLS session/,
      false,
    ],
  ];
  for (const [what, primaryTls, delivered, reason, offersTls = true] of cases) {
    it(`${delivered ? 'delivers' : 'never delivers'} to a primary presenting ${what}`, async () => {
      const primary = new TestPrimary(await freePort(), offersTls ? { tls } : {});
      await primary.start();
      const yaml = baseConfig('relay: { probeInterval: 300 }').replace(
        /^primary: .*$/m,
        `primary: { host: 127.0.0.1, port: ${primary.port}, ${primaryTls()} }`,
      );
      const { dir, file } = writeTestConfig(yaml);
      const daemon = await spawnDaemon(file);
      try {
        const { client } = await SmtpClient.session(daemon.port);
        assert.equal((await client.sendMail('s@remote.example', ['alice@d1.example'], message('verified'))).code, 250);
        await client.quit();
        if (delivered) await waitFor(() => primary.received.length === 1);
        else {
          await waitFor(() => daemon.logs.some((line) => line.event === 'primary_down'));
          assert.match(String(daemon.logs.find((line) => line.event === 'primary_down')?.reason), reason!);
          assert.equal(primary.received.length, 0);
        }
      } finally {
        daemon.child.kill('SIGTERM');
        await daemon.exited;
        await primary.stop();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }

  it('warns at check about sources that send credentials in clear', async () => {
    const sources = [
      '  - { name: panel, type: mxlist, url: "http://panel.example/admin/mxlist.php", login: mx2, password: x }',
      '  - { name: db, type: mysql, url: "mysql://mx:pw@db.example:3306/alternc" }',
      '  - { name: local, type: mysql, url: "mysql://mx:pw@127.0.0.1:3306/alternc" }',
    ].join('\n');
    const { dir, file } = writeTestConfig(baseConfig('', sources));
    try {
      const result = await runCli(['check', '--config', file]);
      assert.equal(result.status, 0, result.stderr);
      assert.match(result.stderr, /warning: source panel: http:\/\/panel\.example\/admin\/mxlist\.php is plain http/);
      assert.match(result.stderr, /warning: source db: MySQL at db\.example without TLS/);
      assert.doesNotMatch(result.stderr, /source local/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
