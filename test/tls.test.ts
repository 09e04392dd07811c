import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { startTestDaemon, type TestDaemon } from './helpers/daemon.js';
import { message, SmtpClient } from './helpers/smtp-client.js';
import { queuedMessage } from './helpers/spool-files.js';

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
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=mx2.test.example',
      '-keyout', join(certDir, 'key.pem'), '-out', join(certDir, 'cert.pem'),
    ], { stdio: 'ignore' });
    mx = await startTestDaemon({ extra: `tls: { key: ${join(certDir, 'key.pem')}, cert: ${join(certDir, 'cert.pem')} }` });
  });
  after(async () => {
    await mx.stop();
    rmSync(certDir, { recursive: true, force: true });
  });

  it('offers STARTTLS when tls is configured', async () => {
    const { client, ehlo } = await SmtpClient.session(mx.port);
    await client.quit();
    assert.ok(ehlo.lines.some((line) => line.slice(4) === 'STARTTLS'), ehlo.lines.join(' | '));
  });

  it('accepts mail from nodemailer over STARTTLS and records ESMTPS in the Received header', async () => {
    const response = await sendWithNodemailer(mx.port, { requireTLS: true }, 'sender@remote.example', ['alice@d1.example'], message('over tls'));
    const id = /queued as (\w+)/.exec(response)![1];
    const stored = queuedMessage(mx.spoolDir, id).toString('utf8');
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
