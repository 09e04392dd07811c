import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { parseConfig } from '../src/config/load.js';
import type { MxlistSourceConfig } from '../src/config/schema.js';
import { SourceError } from '../src/directory/source-list.js';
import { pullMxlist } from '../src/directory/sources/mxlist.js';
import { clientKey } from '../src/receive/client-key.js';
import { MessageInspector } from '../src/receive/inspect.js';
import { runCli } from './helpers/cli.js';
import { baseConfig, startTestDaemon, writeTestConfig, type TestDaemon } from './helpers/daemon.js';
import { message, pick, queuedId, SmtpClient } from './helpers/smtp-client.js';

describe('security: resource use', () => {
  it('finds the end of the header and its fields at every way of cutting the message into chunks', () => {
    const text = `Received: from a\r\nReceived: from b\r\nMessage-ID: <cut@here>\r\nSubject: ${'s'.repeat(300)}\r\n\r\nbody\r\n\r\nMessage-ID: <not-a-header@body>\r\n`;
    const data = Buffer.from(text);
    for (const size of [1, 2, 3, 5, 7, 64, 1000]) {
      const inspector = new MessageInspector({ messageSize: 1e6, hops: 1, headerSize: 256 * 1024 });
      for (let at = 0; at < data.length; at += size) inspector.inspect(data.subarray(at, at + size));
      inspector.finish();
      assert.equal(inspector.messageId, '<cut@here>', `chunks of ${size}`);
      assert.deepEqual(
        [inspector.problem?.responseCode, inspector.problem?.enhancedCode],
        [554, '5.4.6'],
        `two Received headers counted with chunks of ${size}`,
      );
    }
  });

  it('keeps the header block of an unsigned message for DKIM and DMARC, at every chunking, and none of a signed one', () => {
    const header = 'From: a@remote.example\r\nSubject: s\r\n\r\n';
    for (const [text, expected] of [
      [`${header}body\r\n`, header],
      [`DKIM-Signature: v=1; d=remote.example\r\n${header}body\r\n`, undefined],
      [`ARC-Seal: i=1\r\n${header}body\r\n`, undefined],
    ] as const) {
      for (const size of [1, 3, 1000]) {
        const inspector = new MessageInspector({ messageSize: 1e6, hops: 5, headerSize: 256 * 1024 });
        const data = Buffer.from(text);
        for (let at = 0; at < data.length; at += size) inspector.inspect(data.subarray(at, at + size));
        inspector.finish();
        assert.equal(inspector.unsignedHeader?.toString(), expected, `chunks of ${size}`);
      }
    }
  });

  it("refuses an endless mxlist answer at the source's maxBytes instead of reading it all", async () => {
    const panel = createServer((_request, response) => {
      response.writeHead(200, { 'content-type': 'application/json' });
      const chunk = Buffer.alloc(64 * 1024, 'a');
      const pump = () => {
        while (response.write(chunk));
        response.once('drain', pump);
      };
      pump();
      response.on('close', () => response.removeAllListeners('drain'));
    });
    await new Promise<void>((resolve) => panel.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = panel.address() as AddressInfo;
      const yaml = `primary: { host: 127.0.0.1 }\nsources:\n  - { name: panel, type: mxlist, url: "http://127.0.0.1:${port}/mxlist.php", login: mx2, password: x, maxBytes: 1000000 }\n`;
      const source = parseConfig(yaml, '/x.yaml').sources[0] as MxlistSourceConfig;
      await assert.rejects(pullMxlist(source), (error: unknown) => error instanceof SourceError && /answer over 1000000 bytes/.test(error.message));
    } finally {
      panel.closeAllConnections();
      await new Promise<void>((resolve) => panel.close(() => resolve()));
    }
  });

  it('counts an IPv6 /64 (configurable) as one client for the per-client limit', () => {
    assert.equal(clientKey('2001:db8:1:2::1', 64), clientKey('2001:db8:1:2:ffff:ffff:ffff:ffff', 64));
    assert.notEqual(clientKey('2001:db8:1:2::1', 64), clientKey('2001:db8:1:3::1', 64));
    assert.equal(clientKey('2001:db8:1:2::1', 64), '2001:db8:1:2:0:0:0:0/64');
    assert.equal(clientKey('2001:db8::1', 128), '2001:db8:0:0:0:0:0:1/128');
    assert.equal(clientKey('::ffff:192.0.2.7', 64), '192.0.2.7');
    assert.equal(clientKey('192.0.2.7', 64), '192.0.2.7');
    assert.equal(clientKey('::ffff:c000:0207', 96), clientKey('::ffff:c000:0208', 96));
  });
});

describe('security: SMTP', () => {
  let mx: TestDaemon;
  before(async () => {
    mx = await startTestDaemon({ extra: 'limits: { junkCommands: 5 }' });
  });
  after(async () => mx.stop());

  it('closes a session after limits.junkCommands NOOP, RSET, VRFY, ETRN or HELP', async () => {
    const { client } = await SmtpClient.session(mx.port);
    assert.equal((await client.command('MAIL FROM:<s@remote.example>')).code, 250);
    for (const command of ['NOOP', 'RSET', 'NOOP', 'VRFY x', 'NOOP']) assert.ok((await client.command(command)).code < 500, command);
    assert.deepEqual(pick(await client.command('NOOP')), [421, '4.7.0']);
    await client.closedByServer();
  });

  it('answers WIZ as the unknown command it is', async () => {
    const { client } = await SmtpClient.session(mx.port);
    const reply = await client.command('WIZ');
    assert.equal(reply.code, 500, reply.lines.join(' | '));
    await client.quit();
  });
});

describe('security: output and inputs', () => {
  it('escapes control and bidi characters in queue show and queue list, keeps JSON exact, and refuses a path as a queue id', async () => {
    const mx = await startTestDaemon();
    try {
      const { client } = await SmtpClient.session(mx.port); // smtp-server refuses control characters in EHLO and addresses itself
      const body = message('nice \u202egnp.exe', 'hi').replace('Subject:', 'X-Title: \u001b]0;pwned\u0007 \u001b[2J\r\nSubject:');
      const id = queuedId((await client.sendMail('s@remote.example', ['alice@d1.example'], body)).text);
      await client.quit();
      const show = await runCli(['queue', 'show', id, '--config', mx.file]);
      assert.equal(show.status, 0, show.stderr);
      assert.doesNotMatch(show.stdout, /[\u001b\u0007\u202e]/);
      assert.match(show.stdout, /X-Title: \\u001b\]0;pwned\\u0007 \\u001b\[2J/);
      assert.match(show.stdout, /Subject: nice \\u202egnp\.exe/);
      const json = JSON.parse((await runCli(['queue', 'show', id, '--json', '--config', mx.file])).stdout) as { headers: string[] };
      assert.ok(json.headers.includes('X-Title: \u001b]0;pwned\u0007 \u001b[2J'), 'JSON stays exact');
      const list = await runCli(['queue', 'list', '--config', mx.file]);
      assert.doesNotMatch(list.stdout, /[\u001b\u0007\u202e]/);
      const path = await runCli(['queue', 'show', '../../x', '--config', mx.file]);
      assert.equal(path.status, 1);
      assert.match(path.stderr, /"\.\.\/\.\.\/x" is not a queue id/);
    } finally {
      await mx.stop();
    }
  });

  it('refuses a control.listen that is not a loopback address, however it begins', async () => {
    for (const [listen, ok] of [
      ['127.attacker.example:9925', false],
      ['127.0.0.1.nip.io:9925', false],
      ['[::ffff:8.8.8.8]:9925', false],
      ['127.0.0.2:9925', true],
      ['[::1]:9925', true],
      ['[0:0:0:0:0:0:0:1]:9925', true],
      ['localhost:9925', true],
    ] as const) {
      const { dir, file } = writeTestConfig(baseConfig(`control: { listen: "${listen}" }`));
      try {
        const result = await runCli(['check', '--config', file]);
        assert.equal(result.status, ok ? 0 : 78, `${listen}: ${result.stderr}`);
        if (!ok) assert.match(result.stderr, /control\.listen.*must be a loopback address/);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  });

  it('never shows the password of an mxlist URL: not in the error, the log, status or the saved state', async () => {
    const secret = 'S3cretInUrl';
    const { dir, file } = writeTestConfig(
      baseConfig('', `  - { name: panel, type: mxlist, url: "http://mx2:${secret}@127.0.0.1:1/mxlist.php", login: mx2, password: x, timeout: 2 }`),
    );
    try {
      const sync = await runCli(['sync', '--config', file]);
      assert.equal(sync.status, 75);
      assert.match(sync.stdout, /cannot fetch http:\/\/mx2:\*{8}@127\.0\.0\.1:1\/mxlist\.php/);
      const status = await runCli(['status', '--json', '--config', file]);
      const state = readFileSync(join(dir, 'spool', 'directory', 'state.json'), 'utf8');
      for (const output of [sync.stdout, sync.stderr, status.stdout, state]) assert.ok(!output.includes(secret), output);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
