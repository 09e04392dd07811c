import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { parseConfig } from '../src/config/load.js';
import { Metrics } from '../src/control/metrics.js';
import { runtimeProblem } from '../src/signals.js';
import { CLI, runCli, spawnDaemon } from './helpers/cli.js';
import { baseConfig, writeTestConfig } from './helpers/daemon.js';
import { message, SmtpClient } from './helpers/smtp-client.js';
import { queueWaiting } from './helpers/spool-files.js';
import { waitFor } from './helpers/wait.js';

const UNIT = fileURLToPath(new URL('../deploy/secondarymx.service', import.meta.url));
const hasSystemd = spawnSync('systemd-analyze', ['--version']).status === 0;

describe('deploy: the systemd unit', () => {
  let dir: string;
  before(function () {
    if (!hasSystemd) this.skip(); // systemd-analyze is in Debian's systemd package (CI has it)
    dir = mkdtempSync(join(tmpdir(), 'secondarymx-unit-'));
    copyFileSync(UNIT, join(dir, 'secondarymx.service'));
  });
  after(() => dir && rmSync(dir, { recursive: true, force: true }));

  it('passes systemd-analyze verify', () => {
    const result = spawnSync('systemd-analyze', ['verify', join(dir, 'secondarymx.service')], { encoding: 'utf8' });
    assert.equal(result.status, 0, result.stderr);
    assert.equal(result.stderr.trim(), '', result.stderr);
  });

  it('scores an exposure of 2.0 or better in systemd-analyze security', () => {
    const output = execFileSync('systemd-analyze', ['security', '--offline=true', join(dir, 'secondarymx.service')], { encoding: 'utf8' });
    const score = Number(/Overall exposure level for secondarymx\.service: ([\d.]+)/.exec(output)?.[1]);
    assert.ok(score <= 2.0, `exposure ${score}`);
  });
});

describe('deploy: what systemd does not restart', () => {
  const prevented = (/^RestartPreventExitStatus=(.*)$/m.exec(readFileSync(UNIT, 'utf8'))?.[1] ?? '').split(/\s+/).map(Number);

  it('a config error exits with a status the unit does not restart (it would fail every 5 s forever)', async () => {
    const { dir, file } = writeTestConfig('listen: [unclosed');
    try {
      const result = await runCli(['serve', '--config', file]);
      assert.equal(result.status, 78, result.stderr);
      assert.ok(prevented.includes(78), `RestartPreventExitStatus=${prevented.join(' ')}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a Node.js older than 20 is named at start (exit 69, not restarted), before anything fails deep inside a library', () => {
    assert.match(runtimeProblem('v18.19.0') ?? '', /needs Node\.js 20 or later, this is v18\.19\.0/);
    assert.equal(runtimeProblem('v20.19.2'), undefined);
    assert.equal(runtimeProblem('v24.11.1'), undefined);
    assert.ok(prevented.includes(69));
  });
});

describe('deploy: import-legacy', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'secondarymx-legacy-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('turns an old alternc-secondarymx config into a sources: entry the config accepts', async () => {
    const legacy = join(dir, 'secondarymx.conf');
    writeFileSync(
      legacy,
      '# old alternc-secondarymx\nHOST="panel.example.org"\nLOGIN=mx2\nPASSWORD=\'s3cret\'\nMASTERIP=192.0.2.10\nPROTOCOL=https\nDEBUG=1\n',
    );
    const result = await runCli(['import-legacy', legacy]);
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stderr, /DEBUG is not used by secondarymx, ignored/);
    const parsed = parseYaml(result.stdout) as { sources: unknown[] };
    assert.deepEqual(parsed.sources, [
      {
        name: 'panel.example.org',
        type: 'mxlist',
        url: 'https://panel.example.org/admin/mxlist.php',
        login: 'mx2',
        password: 's3cret',
        primary: { host: '192.0.2.10', port: 25 },
      },
    ]);
    const config = parseConfig(`primary: { host: 127.0.0.1 }\n${result.stdout}`, '/x.yaml');
    assert.equal(config.sources[0].type, 'mxlist');
  });

  it('uses URL when given, and refuses a file that says nothing usable (exit 65)', async () => {
    const legacy = join(dir, 'slavedns.conf');
    writeFileSync(legacy, 'URL=http://10.0.0.1/admin/mxlist.php\nLOGIN=a\nPASSWORD=b\n');
    const parsed = parseYaml((await runCli(['import-legacy', legacy])).stdout) as { sources: Array<{ url: string; name: string }> };
    assert.deepEqual([parsed.sources[0].url, parsed.sources[0].name], ['http://10.0.0.1/admin/mxlist.php', '10.0.0.1']);
    writeFileSync(legacy, 'LOGIN=a\n');
    const bad = await runCli(['import-legacy', legacy]);
    assert.equal(bad.status, 65);
    assert.match(bad.stderr, /neither URL nor HOST is set/);
    writeFileSync(legacy, 'this is not a config\n');
    assert.match((await runCli(['import-legacy', legacy])).stderr, /slavedns\.conf:1: expected KEY=value/);
  });
});

describe('deploy: SIGHUP re-reads the config', () => {
  it('applies a new config (sources, limits) without a restart, and keeps the running one when the new one is bad', async () => {
    const { dir, file } = writeTestConfig(baseConfig());
    const daemon = await spawnDaemon(file);
    const rcpt = async (address: string) => {
      const { client } = await SmtpClient.session(daemon.port);
      await client.command('MAIL FROM:<s@remote.example>');
      const reply = await client.command(`RCPT TO:<${address}>`);
      await client.quit();
      return reply.code;
    };
    try {
      assert.equal(await rcpt('anyone@new.example'), 550);
      writeFileSync(join(dir, 'domains2.txt'), 'new.example\n');
      writeFileSync(
        file,
        baseConfig('limits: { messageSize: 600 }\nverify: { unverifiable: accept }', '  - { name: other, type: file, path: domains2.txt }').replace(
          '127.0.0.1:0',
          '127.0.0.1:2599',
        ),
      );
      daemon.child.kill('SIGHUP');
      await waitFor(() => daemon.logs.some((line) => line.event === 'sync_finished' && line.domains === 1));
      assert.deepEqual(daemon.logs.find((line) => line.event === 'config_restart_keys')?.keys, ['listen']);
      assert.equal(await rcpt('anyone@new.example'), 250);
      assert.equal(await rcpt('alice@d1.example'), 550);
      const { client } = await SmtpClient.session(daemon.port);
      assert.equal((await client.sendMail('s@remote.example', ['x@new.example'], message('big', 'y'.repeat(700)))).code, 552);
      await client.quit();

      writeFileSync(file, 'listen: [unclosed');
      daemon.child.kill('SIGHUP');
      await waitFor(() => daemon.logs.some((line) => line.msg === 'SIGHUP: new config refused, the running one is kept'));
      assert.equal(await rcpt('anyone@new.example'), 250);
    } finally {
      daemon.child.kill('SIGTERM');
      await daemon.exited;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** The names of every metric the daemon exports. */
async function exportedMetrics(): Promise<Set<string>> {
  const metrics = new Metrics({
    spool: async () => ({ messages: 0, bytes: 0, oldestArrival: undefined }),
    primaries: () => [],
    sources: () => [],
    sessions: () => 0,
    spoolFree: () => Infinity,
    checkThreads: () => undefined,
  });
  try {
    return new Set((await metrics.registry.getMetricsAsJSON()).map((metric) => metric.name));
  } finally {
    metrics.close();
  }
}

const deployFile = (name: string) => readFileSync(fileURLToPath(new URL(`../deploy/${name}`, import.meta.url)), 'utf8');

/** Whether `pid` has a handler for `signal` (its bit in /proc/PID/status SigCgt). */
function catches(pid: number, signal: number): boolean {
  const mask = /^SigCgt:\s*([0-9a-f]+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '0';
  return ((BigInt(`0x${mask}`) >> BigInt(signal - 1)) & 1n) === 1n;
}

describe('deploy: signals while starting', () => {
  it('a SIGHUP before the daemon is ready is held and applied once it is, not fatal', async () => {
    const { dir, file } = writeTestConfig(baseConfig());
    let sent = false;
    const daemon = await spawnDaemon(file, {
      onSpawn: (child) => {
        // As soon as serve listens for SIGHUP (its first step, ~0.4 s before the daemon is ready): systemctl reload after a start.
        const poll = setInterval(() => {
          try {
            if (!catches(child.pid!, 1)) return;
          } catch {
            return; // not exec'd yet, or gone
          }
          clearInterval(poll);
          sent = child.kill('SIGHUP');
        }, 1);
        child.once('exit', () => clearInterval(poll));
      },
    });
    try {
      assert.ok(sent);
      await waitFor(() => daemon.logs.some((line) => line.event === 'reload_held'));
      const listening = daemon.logs.findIndex((line) => line.event === 'listening');
      assert.ok(daemon.logs.findIndex((line) => line.event === 'reload_held') > listening, 'applied once started');
      assert.equal(daemon.child.exitCode, null, 'still running');
      const { client } = await SmtpClient.session(daemon.port);
      await client.quit();
    } finally {
      daemon.child.kill('SIGTERM');
      assert.deepEqual(await daemon.exited, { code: 0, signal: null });
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('deploy: Grafana dashboard', () => {
  it('has the panels an operator needs, and queries only metrics the daemon exports', async () => {
    const dashboard = JSON.parse(deployFile('grafana-dashboard.json')) as { panels: Array<{ title: string; targets: Array<{ expr: string }> }> };
    const exported = await exportedMetrics();
    const queried = new Set(dashboard.panels.flatMap((panel) => panel.targets.flatMap((target) => target.expr.match(/secondarymx_[a-z_]+/g) ?? [])));
    for (const name of queried) assert.ok(exported.has(name), `the dashboard queries ${name}, which is not exported`);
    for (const needed of [
      'secondarymx_messages_accepted_total',
      'secondarymx_refused_total',
      'secondarymx_deliveries_total',
      'secondarymx_spool_messages',
      'secondarymx_oldest_message_age_seconds',
      'secondarymx_primary_up',
      'secondarymx_sync_last_success_timestamp_seconds',
      'secondarymx_sync_domains',
      'secondarymx_smtp_sessions',
      'secondarymx_screen_decisions_total',
    ])
      assert.ok(queried.has(needed), `no panel shows ${needed}`);
  });
});

describe('deploy: alert rules', () => {
  it('only use metrics the daemon exports', async () => {
    const rules = parseYaml(deployFile('alerts.yml')) as {
      groups: Array<{ rules: Array<{ alert: string; expr: string }> }>;
    };
    const exported = await exportedMetrics();
    const alerts = rules.groups.flatMap((group) => group.rules);
    assert.deepEqual(
      alerts.map((rule) => rule.alert),
      [
        'SecondaryMxPrimaryDown',
        'SecondaryMxSpoolGrowing',
        'SecondaryMxOldestMessageNearExpiry',
        'SecondaryMxSyncFailing',
        'SecondaryMxDown',
        'SecondaryMxDiskNearlyFull',
        'SecondaryMxDnsListBroken',
        'SecondaryMxRspamdFailing',
        'SecondaryMxUndeliverableNoticeHeld',
      ],
    );
    for (const rule of alerts) {
      for (const name of rule.expr.match(/secondarymx_[a-z_]+/g) ?? []) assert.ok(exported.has(name), `${rule.alert} uses ${name}, which is not exported`);
    }
  });
});

describe('deploy: terminal niceties', () => {
  /**
   * Runs a command under a pseudo-terminal (util-linux `script`), like a person at a shell;
   * resolves with what it printed once it ends, or once that matches `until` (then it is ended).
   */
  function onTerminal(command: string, until?: RegExp): Promise<string> {
    const child = spawn('script', ['-qec', command, '/dev/null'], { stdio: ['ignore', 'pipe', 'inherit'], timeout: 20_000 });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (data: string) => {
      output += data;
      if (until?.test(output)) child.kill('SIGTERM'); // the pty closes: the command gets SIGHUP
    });
    return new Promise((resolve) => child.on('close', () => resolve(output)));
  }
  const hasScript = spawnSync('script', ['--version']).status === 0;

  it('pretty-prints the log on a terminal and writes JSON lines otherwise', async function () {
    if (!hasScript) this.skip();
    const { dir, file } = writeTestConfig(baseConfig());
    try {
      const pretty = await onTerminal(`node ${CLI} serve --config ${file}`, /listening/);
      assert.match(pretty, /INFO.*listening/);
      assert.doesNotMatch(pretty, /^\{"level"/m);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('under systemd (stdout is JOURNAL_STREAM), starts each line with its syslog priority, so journalctl -p warning shows our warnings', async () => {
    const { dir, file } = writeTestConfig(baseConfig()); // the primary is a closed port: a warning once a message waits
    await queueWaiting(join(dir, 'spool'), [{ subject: 'waiting' }]);
    const run = async (journal: boolean) => {
      const out = join(dir, journal ? 'journal.log' : 'plain.log');
      const fd = openSync(out, 'w');
      const stat = fstatSync(fd);
      const child = spawn(process.execPath, [CLI, 'serve', '--config', file], {
        stdio: ['ignore', fd, 'ignore'],
        env: { ...process.env, JOURNAL_STREAM: journal ? `${stat.dev}:${stat.ino}` : '0:0' },
      });
      closeSync(fd);
      try {
        await waitFor(() => /primary is DOWN/.test(readFileSync(out, 'utf8')));
      } finally {
        child.kill('SIGTERM');
        await once(child, 'exit');
      }
      return readFileSync(out, 'utf8').split('\n').filter(Boolean);
    };
    try {
      const journal = await run(true);
      assert.ok(
        journal.every((line) => /^<[2-7]>\{"level":/.test(line)),
        journal[0],
      );
      assert.match(
        journal.find((line) => line.includes('primary is DOWN'))!,
        /^<4>\{"level":40,/,
      );
      assert.match(
        journal.find((line) => line.includes('"event":"listening"'))!,
        /^<6>/,
      );
      const plain = await run(false); // JOURNAL_STREAM inherited, but stdout is not that stream (a pipe of its own)
      assert.ok(
        plain.every((line) => line.startsWith('{"level":')),
        plain[0],
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('keeps stdout JSON lines only: what a library prints there (mailauth, on an l= longer than the body) becomes a log line', async () => {
    const { dir, file } = writeTestConfig(baseConfig('log: { level: debug }'));
    const daemon = await spawnDaemon(file); // every stdout line is JSON.parse'd: a stray one fails the test
    try {
      const signature = 'DKIM-Signature: v=1; a=rsa-sha256; d=signed.test; s=sel; c=relaxed/relaxed; l=999999; h=from; bh=AAAA; b=AAAA\r\n';
      const { client } = await SmtpClient.session(daemon.port);
      assert.equal((await client.sendMail('s@remote.example', ['alice@d1.example'], signature + message('l= longer than the body'))).code, 250);
      await client.quit();
      await waitFor(() => daemon.logs.some((line) => line.event === 'library_output'));
      assert.match(String(daemon.logs.find((line) => line.event === 'library_output')?.text), /^TOTAL \d+ EXPECTING 999999$/);
    } finally {
      daemon.child.kill('SIGTERM');
      await daemon.exited;
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('flush on a terminal writes its warnings as sentences before its summary, never raw JSON', async function () {
    if (!hasScript) this.skip();
    const { dir, file } = writeTestConfig(baseConfig()); // the primary is a closed port
    try {
      await queueWaiting(join(dir, 'spool'), [{ subject: 'waiting' }]);
      const terminal = await onTerminal(`node ${CLI} flush --config ${file}`);
      assert.match(terminal, /^secondarymx: warning: primary is DOWN: delivery stopped, probing \(primary=127\.0\.0\.1:1, reason=.*ECONNREFUSED/m);
      assert.match(terminal, /flush \(standalone\): 1 messages: .*1 messages not attempted \(primary unreachable\), 0 busy elsewhere\r?\n$/);
      assert.doesNotMatch(terminal, /\{"level"/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('shows sync progress on a terminal only', async function () {
    if (!hasScript) this.skip();
    const panel = createServer((_request, response) => setTimeout(() => response.end('slow.example\n'), 2500));
    await new Promise<void>((resolve) => panel.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(panel.address() as { port: number }).port}/admin/mxlist.php`;
    const { dir, file } = writeTestConfig(baseConfig('', `  - { name: panel, type: mxlist, url: "${url}", login: a, password: b }`));
    try {
      const terminal = await onTerminal(`node ${CLI} sync --config ${file}`);
      assert.match(terminal, /syncing 1 source\(s\)… \d s/);
      const script = await runCli(['sync', '--config', file]);
      assert.equal(script.status, 0, script.stderr);
      assert.doesNotMatch(script.stderr + script.stdout, /syncing/);
    } finally {
      await new Promise<void>((resolve) => panel.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
