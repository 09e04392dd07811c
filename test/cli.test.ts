import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCli, spawnDaemon } from './helpers/cli.js';
import { makeCertificate } from './helpers/certificate.js';
import { baseConfig, writeTestConfig } from './helpers/daemon.js';
import { message, SmtpClient, queuedId } from './helpers/smtp-client.js';

interface QueueRow {
  id: string;
  sender: string;
  state: string;
  size: number;
  recipients: Array<{ address: string; state: string }>;
}

async function queueJson(configFile: string): Promise<QueueRow[]> {
  const result = await runCli(['queue', 'list', '--json', '--config', configFile]);
  assert.equal(result.status, 0, result.stderr);
  return JSON.parse(result.stdout) as QueueRow[];
}

describe('cli: the daemon as a process', () => {
  let dir: string;
  let file: string;
  beforeEach(() => ({ dir, file } = writeTestConfig(baseConfig())));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('keeps a message acknowledged with 250 when killed with SIGKILL right after, and lists it after restart', async () => {
    const first = await spawnDaemon(file);
    const { client } = await SmtpClient.session(first.port);
    const reply = await client.sendMail('sender@remote.example', ['alice@d1.example', 'x@d2.example'], message('survives kill -9'));
    assert.equal(reply.code, 250);
    first.child.kill('SIGKILL');
    assert.equal((await first.exited).signal, 'SIGKILL');
    client.destroy();
    const id = queuedId(reply.text);

    const offline = await queueJson(file);
    assert.deepEqual(
      offline.map((row) => [row.id, row.sender, row.state]),
      [[id, 'sender@remote.example', 'queued']],
    );

    const second = await spawnDaemon(file); // recovery runs, the stale lock is taken over
    try {
      const recovered = second.logs.find((line) => line.event === 'spool_recovered');
      assert.equal(recovered?.corrupt, 0);
      const online = await queueJson(file);
      assert.deepEqual(
        online.map((row) => row.id),
        [id],
      );
      assert.deepEqual(online[0].recipients, [
        { address: 'alice@d1.example', state: 'pending', source: 'local' },
        { address: 'x@d2.example', state: 'pending', source: 'local' },
      ]);
      const text = await runCli(['queue', 'list', '--config', file]);
      assert.match(text.stdout, new RegExp(`^${id} +\\d+ \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\dZ queued +sender@remote\\.example$`, 'm'));
      assert.match(text.stdout, /^ +alice@d1\.example \(pending\)$/m);
      assert.match(text.stdout, /in 1 message\.$/m);
    } finally {
      second.child.kill('SIGTERM');
      await second.exited;
    }
  });

  it('on SIGTERM lets a session in DATA finish with 250, closes idle sessions with 421, and exits 0', async () => {
    const daemon = await spawnDaemon(file);
    const { client: sending } = await SmtpClient.session(daemon.port);
    const { client: idle } = await SmtpClient.session(daemon.port);
    for (const step of ['MAIL FROM:<s@remote.example>', 'RCPT TO:<alice@d1.example>', 'DATA']) await sending.command(step);
    sending.write('Subject: in flight\r\n\r\nfirst half\r\n');
    daemon.child.kill('SIGTERM');
    const idleReply = await idle.reply();
    assert.deepEqual([idleReply.code, idleReply.enhanced], [421, '4.3.2']);
    sending.write('second half\r\n');
    const finished = await sending.data('');
    assert.equal(finished.code, 250);
    const afterwards = await sending.command('MAIL FROM:<s@remote.example>');
    assert.equal(afterwards.code, 421);
    assert.deepEqual(await daemon.exited, { code: 0, signal: null });
    assert.equal((await queueJson(file)).length, 1);
  });

  it('refuses to serve a spool that another daemon is serving', async () => {
    const daemon = await spawnDaemon(file);
    try {
      const second = await runCli(['serve', '--config', file]);
      assert.equal(second.status, 1);
      assert.match(second.stderr, new RegExp(`spool .* is in use by process ${daemon.child.pid}`));
    } finally {
      daemon.child.kill('SIGTERM');
      await daemon.exited;
    }
  });
});

describe('cli: configuration errors and commands', () => {
  let dir: string;
  let file: string;
  beforeEach(() => ({ dir, file } = writeTestConfig(baseConfig())));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const cases: Array<[string, string, RegExp]> = [
    ['an unknown key', baseConfig('limits: { mesageSize: 10 }'), /secondarymx\.yaml:\d+: limits\.mesageSize: unknown key/],
    ['a wrong type', baseConfig('limits: { messageSize: "big" }'), /secondarymx\.yaml:\d+: limits\.messageSize: .*number/],
    ['a bad listen address', baseConfig().replace('127.0.0.1:0', '127.0.0.1'), /secondarymx\.yaml:2: listen\[0\]: expected "host:port"/],
    ['an unknown source type', baseConfig().replace('type: file', 'type: ldap'), /sources\[0\]\.type: /],
    ['a missing primary', baseConfig().replace(/^primary:.*$/m, ''), /: primary: /],
    ['invalid YAML', 'listen: [unclosed', /secondarymx\.yaml:\d+:\d+: invalid YAML/],
  ];
  for (const [what, yaml, pattern] of cases) {
    it(`exits 78 naming the file and the key for ${what}`, async () => {
      writeFileSync(file, yaml);
      for (const command of ['check', 'serve']) {
        const result = await runCli([command, '--config', file]);
        assert.equal(result.status, 78, result.stderr);
        assert.match(result.stderr, pattern);
        assert.ok(result.stderr.includes(file), result.stderr);
      }
    });
  }

  it('check exits 78 naming the file and line of a bad domain list entry', async () => {
    writeFileSync(join(dir, 'domains.txt'), 'd1.example\nalice@d1.example\nnot a domain\n');
    const result = await runCli(['check', '--config', file]);
    assert.equal(result.status, 78);
    assert.match(result.stderr, /sources: local: one entry per line expected: .*domains\.txt:3: "not a domain"/);
  });

  it('check and serve open the TLS files and say which one is wrong (missing, not PEM, key of another certificate)', async () => {
    for (const name of ['one', 'other']) mkdirSync(join(dir, name));
    const one = makeCertificate(join(dir, 'one'), 'one');
    const other = makeCertificate(join(dir, 'other'), 'other');
    writeFileSync(join(dir, 'garbage.pem'), 'not a certificate\n');
    const cases: Array<[string, RegExp]> = [
      [`tls: { key: ${join(dir, 'missing.pem')}, cert: ${one.cert} }`, /config error: tls\.key: cannot read .*missing\.pem: ENOENT/],
      [`tls: { key: ${one.key}, cert: ${join(dir, 'garbage.pem')} }`, /config error: tls\.cert: .*garbage\.pem is not a PEM certificate/],
      [`tls: { key: ${other.key}, cert: ${one.cert} }`, /config error: tls\.key: .*other.* is not the key of the certificate in .*one/],
    ];
    for (const [tls, expected] of cases) {
      const { dir: configDir, file: tlsFile } = writeTestConfig(baseConfig(tls));
      try {
        for (const command of ['check', 'serve']) {
          const result = await runCli([command, '--config', tlsFile]);
          assert.equal(result.status, 78, `${command}: ${result.stderr}`);
          assert.match(result.stderr, expected);
        }
      } finally {
        rmSync(configDir, { recursive: true, force: true });
      }
    }
    const { dir: goodDir, file: good } = writeTestConfig(baseConfig(`tls: { key: ${one.key}, cert: ${one.cert} }`));
    assert.equal((await runCli(['check', '--config', good])).status, 0);
    rmSync(goodDir, { recursive: true, force: true });
  });

  it('check prints the effective config with defaults and absolute paths', async () => {
    const result = await runCli(['check', '--config', file]);
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /messageSize: 100000000/);
    assert.match(result.stdout, new RegExp(`spool: ${join(dir, 'spool')}`));
    assert.match(result.stdout, new RegExp(`path: ${join(dir, 'domains.txt')}`));
  });

  it('finds the config by --config, then $SECONDARYMX_CONFIG, then ./config/secondarymx.yaml', async () => {
    mkdirSync(join(dir, 'config'));
    writeFileSync(join(dir, 'config', 'secondarymx.yaml'), baseConfig().replace('mx2.test.example', 'from-cwd.example'));
    writeFileSync(join(dir, 'domains.txt'), 'd1.example\n');
    writeFileSync(join(dir, 'config', 'domains.txt'), 'd1.example\n');
    const env = (value: string) => ({ ...process.env, SECONDARYMX_CONFIG: value });
    assert.match((await runCli(['check'], { cwd: dir, env: env('') })).stdout, /hostname: from-cwd\.example/);
    assert.match((await runCli(['check'], { cwd: dir, env: env(file) })).stdout, /hostname: mx2\.test\.example/);
    const other = join(dir, 'other.yaml');
    writeFileSync(other, baseConfig().replace('mx2.test.example', 'explicit.example'));
    assert.match((await runCli(['check', '--config', other], { cwd: dir, env: env(file) })).stdout, /hostname: explicit\.example/);
    const missing = await runCli(['check'], { cwd: join(dir, 'config'), env: env('') });
    // Unless this machine has /etc/secondarymx/secondarymx.yaml (test/deb.test.ts may be installing
    // or purging the package right now, in another worker), nothing is found.
    const readEtc = missing.status === 0 || /^secondarymx: config error: (sources: \w+: )?\/etc\/secondarymx\//.test(missing.stderr);
    if (!readEtc) {
      assert.equal(missing.status, 78);
      assert.match(missing.stderr, /no config file: tried .*config\/secondarymx\.yaml and \/etc\/secondarymx\/secondarymx\.yaml/);
    }
  });

  it('answers usage errors with exit 64 and the usage text', async () => {
    for (const args of [[], ['frobnicate'], ['queue'], ['queue', 'list', 'extra'], ['check', '--bogus']]) {
      const result = await runCli(args);
      assert.equal(result.status, 64, `${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, /usage: secondarymx <command>/);
    }
    assert.equal((await runCli(['--help'])).status, 0);
  });

  it('queue list says the queue is empty, and fails clearly when the spool does not exist', async () => {
    mkdirSync(join(dir, 'spool'));
    const empty = await runCli(['queue', 'list', '--config', file]);
    assert.deepEqual([empty.status, empty.stdout], [0, 'Mail queue is empty\n']);
    rmSync(join(dir, 'spool'), { recursive: true });
    const missing = await runCli(['queue', 'list', '--config', file]);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /spool .*spool does not exist/);
  });

  it('ships an example config that check accepts', async () => {
    const example = new URL('../config/secondarymx.example.yaml', import.meta.url).pathname;
    const result = await runCli(['check', '--config', example]);
    assert.equal(result.status, 0, result.stderr);
    assert.match(readFileSync(example, 'utf8'), /listen: \["127\.0\.0\.1:2525"\]/);
  });
});
