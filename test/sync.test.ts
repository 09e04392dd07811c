import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createConnection } from 'mysql2/promise';
import { parseConfig } from '../src/config/load.js';
import type { MxlistSourceConfig, MysqlSourceConfig } from '../src/config/schema.js';
import type { StatusReport } from '../src/control/status.js';
import { SourceError } from '../src/directory/source-list.js';
import { pullMxlist } from '../src/directory/sources/mxlist.js';
import { pullMysql } from '../src/directory/sources/mysql.js';
import type { SyncReport } from '../src/directory/sync.js';
import { runCli } from './helpers/cli.js';
import { startTestDaemon, type TestDaemon } from './helpers/daemon.js';
import { AlternCDatabase } from './helpers/mysql.js';
import { TcpProxy } from './helpers/proxy.js';
import { SmtpClient } from './helpers/smtp-client.js';

function mysqlSource(url: string): MysqlSourceConfig {
  const config = parseConfig(`primary: { host: 127.0.0.1 }\nsources:\n  - { name: alternc, type: mysql, url: "${url}", timeout: 5 }\n`, '/x.yaml');
  return config.sources[0] as MysqlSourceConfig;
}

/** The RCPT reply code (and enhanced code) for one address, in a fresh transaction. */
async function rcpt(port: number, address: string): Promise<string> {
  const { client } = await SmtpClient.session(port);
  try {
    await client.command('MAIL FROM:<s@remote.example>');
    const reply = await client.command(`RCPT TO:<${address}>`);
    return `${reply.code} ${reply.enhanced}`;
  } finally {
    await client.quit();
  }
}

function sourceYaml(url: string, name = 'alternc'): string {
  return `  - { name: ${name}, type: mysql, url: "${url}", timeout: 5 }`;
}

async function cliJson<T>(args: string[], file: string): Promise<{ status: number | null; report: T; stderr: string }> {
  const result = await runCli([...args, '--json', '--config', file]);
  return { status: result.status, report: JSON.parse(result.stdout || 'null') as T, stderr: result.stderr };
}

describe('sync: AlternC MySQL source (real MariaDB)', () => {
  let db: AlternCDatabase;
  afterEach(async () => db?.drop());

  it('pulls gesmx = 1 domains with their enabled addresses, catch-alls and mailman addresses', async () => {
    db = await AlternCDatabase.create();
    const d1 = await db.domain('D1.example');
    await db.address(d1, 'alice');
    await db.address(d1, 'Bob.Smith');
    await db.address(d1, 'gone', { enabled: 0 });
    await db.address(d1, 'leaving', { mail_action: 'DELETING' });
    for (const local of ['list', 'list-request', 'list-owner', 'list-bounces']) await db.address(d1, local, { type: 'mailman' });
    const d2 = await db.domain('d2.example');
    await db.address(d2, '', { type: 'catchall' });
    const nomx = await db.domain('nomx.example', { gesmx: 0 });
    await db.address(nomx, 'alice');
    const deleting = await db.domain('deleting.example', { dns_action: 'DELETE' });
    await db.address(deleting, 'still');
    await db.domain('noaddress.example');

    const { list } = await pullMysql(mysqlSource(db.url()));
    assert.deepEqual([...list.keys()].sort(), ['d1.example', 'd2.example', 'deleting.example', 'noaddress.example']);
    assert.deepEqual([...list.get('d1.example')!.localParts].sort(), ['alice', 'bob.smith', 'leaving', 'list', 'list-bounces', 'list-owner', 'list-request']);
    assert.deepEqual(list.get('d2.example'), { recipientCheck: true, catchAll: true, localParts: new Set() });
    assert.deepEqual(list.get('noaddress.example'), { recipientCheck: true, catchAll: false, localParts: new Set() });
    assert.deepEqual([...list.get('deleting.example')!.localParts], ['still']);
  });

  it('reads the upgraded schema (domaine varchar(255)) with a user holding only the documented grants', async () => {
    db = await AlternCDatabase.create({ domainColumn: 255 });
    const long = `${'a'.repeat(60)}.${'b'.repeat(60)}.${'c'.repeat(40)}.example`;
    await db.address(await db.domain(long), 'postmaster');
    const user = await db.readOnlyUser();
    const { list } = await pullMysql(mysqlSource(db.url(user)));
    assert.deepEqual([...list.keys()], [long]);
    const asUser = await createConnection({ uri: db.url(user) });
    try {
      await assert.rejects(asUser.query('UPDATE domaines SET gesmx = 0'), /UPDATE command denied/);
    } finally {
      await asUser.end();
    }
  });

  it('fails with a clear reason for a wrong password, an unreachable server, a missing table, an empty result and a bad row', async () => {
    db = await AlternCDatabase.create();
    const user = await db.readOnlyUser();
    const cases: Array<[string, RegExp]> = [
      [db.url({ name: user.name, password: 'wrong' }), /cannot connect to MySQL: ER_ACCESS_DENIED_ERROR/],
      ['mysql://root@127.0.0.1:1/alternc', /cannot connect to MySQL: ECONNREFUSED/],
      [db.url(user), /empty result/],
    ];
    for (const [url, reason] of cases) {
      await assert.rejects(pullMysql(mysqlSource(url)), (error: unknown) => error instanceof SourceError && reason.test(error.message));
    }
    // A bad row is left out and named; the rest of the source applies (one row must not freeze AlternC's whole list).
    const bad = await db.domain('bad domain.example');
    await db.address(bad, 'alice');
    await assert.rejects(
      pullMysql(mysqlSource(db.url(user))),
      /empty result: no domain at all \(1 rows not valid: not a valid domain: domaines\.id \d+ "bad domain\.example"\)/,
    );
    const ok = await db.domain('ok.example');
    await db.address(ok, 'with space');
    await db.address(ok, 'fine');
    const { list, skipped } = await pullMysql(mysqlSource(db.url(user)));
    assert.deepEqual([...list.keys()], ['ok.example']);
    assert.deepEqual([...list.get('ok.example')!.localParts], ['fine']);
    assert.deepEqual(skipped, [`not a valid domain: domaines.id ${bad} "bad domain.example"`, 'not a valid local part: "with space@ok.example"']);
    await db.execute('DROP TABLE {db}.address');
    await assert.rejects(pullMysql(mysqlSource(db.url())), /MySQL query failed: ER_NO_SUCH_TABLE/);
  });
});

describe('sync: the daemon follows AlternC', () => {
  let db: AlternCDatabase;
  let mx: TestDaemon | undefined;
  let d1: number;
  beforeEach(async () => {
    db = await AlternCDatabase.create();
    d1 = await db.domain('d1.example');
    await db.address(d1, 'alice');
    for (const name of ['d2.example', 'd3.example', 'd4.example']) await db.address(await db.domain(name), 'postmaster');
  });
  afterEach(async () => {
    await mx?.stop();
    mx = undefined;
    await db.drop();
  });

  it('accepts an address added in MySQL after the next sync and refuses a removed one, without a restart', async () => {
    mx = await startTestDaemon({ sources: sourceYaml(db.url()) });
    assert.equal(await rcpt(mx.port, 'alice@d1.example'), '250 2.1.5');
    assert.equal(await rcpt(mx.port, 'carol@d1.example'), '550 5.1.1');
    await db.address(d1, 'carol');
    await db.execute("DELETE FROM {db}.address WHERE address = 'alice'");
    const sync = await cliJson<SyncReport & { via: string }>(['sync'], mx.file);
    assert.equal(sync.status, 0, sync.stderr);
    assert.equal(sync.report.via, 'daemon');
    assert.deepEqual(sync.report.sources[0].added, { domains: 0, addresses: 1 });
    assert.deepEqual(sync.report.sources[0].removed, { domains: 0, addresses: 1 });
    assert.equal(await rcpt(mx.port, 'carol@d1.example'), '250 2.1.5');
    assert.equal(await rcpt(mx.port, 'alice@d1.example'), '550 5.1.1');
  });

  it('keeps the old data when MySQL becomes unreachable, and serves the persisted list after a restart with MySQL down', async () => {
    const proxy = new TcpProxy(Number(new URL(db.url()).port || 3306));
    await proxy.start();
    const spoolDir = mkdtempSync(join(tmpdir(), 'secondarymx-spool-'));
    const url = db.url().replace(/@[^/]+\//, `@127.0.0.1:${proxy.port}/`);
    try {
      mx = await startTestDaemon({ sources: sourceYaml(url), spoolDir });
      await proxy.stop();
      const sync = await cliJson<SyncReport>(['sync'], mx.file);
      assert.equal(sync.status, 75);
      assert.equal(sync.report.sources[0].result, 'kept');
      assert.match(sync.report.sources[0].reason!, /cannot connect to MySQL: ECONNREFUSED/);
      assert.equal(await rcpt(mx.port, 'alice@d1.example'), '250 2.1.5');
      await mx.stop();

      // MySQL down at this start: port 1, which nothing here listens on (the proxy's port, free again, may be taken by another test meanwhile).
      mx = await startTestDaemon({ sources: sourceYaml(url.replace(`:${proxy.port}/`, ':1/')), spoolDir });
      assert.equal(mx.logs.find((line) => line.event === 'sync_finished')?.complete, true);
      assert.equal(await rcpt(mx.port, 'alice@d1.example'), '250 2.1.5');
      assert.equal(await rcpt(mx.port, 'nobody@d1.example'), '550 5.1.1');
      const status = await cliJson<StatusReport>(['status'], mx.file);
      assert.equal(status.report.daemon.running, true);
      const source = status.report.sources[0];
      assert.equal(source.domains, 4);
      assert.match(source.lastError!, /ECONNREFUSED/);
      assert.ok(source.lastSuccess && source.lastAttempt && source.lastSuccess < source.lastAttempt);
      const text = (await runCli(['status', '--config', mx.file])).stdout;
      assert.match(text, /^alternc +mysql +4 +4 +\S+ \S+ +\S+ \S+ +failing: cannot connect to MySQL: ECONNREFUSED/m);
    } finally {
      await proxy.stop();
      await mx?.stop();
      mx = undefined;
      rmSync(spoolDir, { recursive: true, force: true });
    }
  });

  it('answers 451 4.3.0 for unknown domains while a source has never loaded, instead of bouncing them', async () => {
    mx = await startTestDaemon({ sources: sourceYaml('mysql://root@127.0.0.1:1/alternc') });
    assert.equal(await rcpt(mx.port, 'alice@d1.example'), '451 4.3.0');
  });

  it('holds back the removals of a shrink beyond sync.maxShrink (additions apply at once) until sync --force, and refuses an empty result', async () => {
    mx = await startTestDaemon({ sources: sourceYaml(db.url()), extra: 'sync: { shrinkFloor: 0 }' });
    await db.execute("DELETE FROM {db}.domaines WHERE domaine IN ('d3.example', 'd4.example')");
    await db.address(await db.domain('new.example'), 'postmaster'); // added at the same moment
    const held = await cliJson<SyncReport>(['sync'], mx.file);
    assert.equal(held.status, 75);
    assert.equal(held.report.sources[0].result, 'held');
    assert.match(
      held.report.sources[0].reason!,
      /^2 of 4 domains would be removed \(50\.0%\), over sync\.maxShrink 25%: removals held back, additions applied; run "secondarymx sync --force"/,
    );
    assert.equal(await rcpt(mx.port, 'postmaster@d3.example'), '250 2.1.5', 'the removal waits');
    assert.equal(await rcpt(mx.port, 'postmaster@new.example'), '250 2.1.5', 'the addition does not');
    const text = await runCli(['sync', '--config', mx.file]);
    assert.equal(text.status, 75);
    assert.match(text.stdout, /^alternc +mysql +held +5 +5 .*held: 2 of 5 domains would be removed/m); // still held at the next sync
    const health = await fetch(`http://127.0.0.1:${mx.daemon.monitoringPort}/healthz`);
    assert.equal(health.status, 200, 'mail is still served');
    assert.match(await health.text(), /^degraded: source alternc held: 2 of 5 domains would be removed/);
    assert.match((await runCli(['status', '--config', mx.file])).stdout, /^alternc +mysql .* held: 2 of 5 domains would be removed/m);
    const metrics = await (await fetch(`http://127.0.0.1:${mx.daemon.monitoringPort}/metrics`)).text();
    assert.match(metrics, /^secondarymx_sync_source_state\{source="alternc",state="held"\} 1$/m);

    const forced = await cliJson<SyncReport>(['sync', '--force'], mx.file);
    assert.equal(forced.status, 0);
    assert.deepEqual(forced.report.sources[0].removed, { domains: 2, addresses: 2 });
    assert.equal(await rcpt(mx.port, 'postmaster@d3.example'), '550 5.7.1');
    assert.equal(await (await fetch(`http://127.0.0.1:${mx.daemon.monitoringPort}/healthz`)).text(), 'ok\n');

    await db.execute('DELETE FROM {db}.domaines');
    const empty = await cliJson<SyncReport>(['sync', '--force'], mx.file);
    assert.equal(empty.status, 75);
    assert.match(empty.report.sources[0].reason!, /empty result/);
    assert.equal(await rcpt(mx.port, 'alice@d1.example'), '250 2.1.5');
    assert.match(await (await fetch(`http://127.0.0.1:${mx.daemon.monitoringPort}/healthz`)).text(), /^degraded: source alternc failing: empty result/);
  });

  it('applies a small drop at once (sync.shrinkFloor): deleting one domain of three is not a collapse', async () => {
    mx = await startTestDaemon({ sources: sourceYaml(db.url()) });
    await db.execute("DELETE FROM {db}.domaines WHERE domaine IN ('d3.example', 'd4.example')");
    const report = await cliJson<SyncReport>(['sync'], mx.file);
    assert.deepEqual([report.status, report.report.sources[0].result], [0, 'updated']);
    assert.equal(await rcpt(mx.port, 'postmaster@d3.example'), '550 5.7.1');
  });

  it('gives a domain claimed by two sources to the first one, logs it and shows it in status', async () => {
    mx = await startTestDaemon({
      sources: `  - { name: local, type: file, path: domains.txt }\n${sourceYaml(db.url())}`,
      domains: 'd1.example\nbob@d1.example\nonly-local.example\n',
    });
    assert.equal(await rcpt(mx.port, 'bob@d1.example'), '250 2.1.5');
    assert.equal(await rcpt(mx.port, 'alice@d1.example'), '550 5.1.1');
    assert.equal(await rcpt(mx.port, 'postmaster@d2.example'), '250 2.1.5');
    assert.ok(mx.logs.some((line) => line.domain === 'd1.example' && line.keptBy === 'local' && line.claimedBy === 'alternc'));
    const status = await cliJson<StatusReport>(['status'], mx.file);
    assert.deepEqual(status.report.directory?.conflicts, [{ domain: 'd1.example', keptBy: 'local', claimedBy: 'alternc' }]);
    assert.match((await runCli(['status', '--config', mx.file])).stdout, /conflict: d1\.example is listed by local and alternc; local keeps it/);
  });

  it('syncs on its own when no daemon runs, and the daemon then starts from that list', async () => {
    const spoolDir = mkdtempSync(join(tmpdir(), 'secondarymx-spool-'));
    const dir = mkdtempSync(join(tmpdir(), 'secondarymx-cfg-'));
    const file = join(dir, 'secondarymx.yaml');
    writeFileSync(file, `listen: ["127.0.0.1:0"]\nspool: ${spoolDir}\nprimary: { host: 127.0.0.1 }\nsources:\n${sourceYaml(db.url())}\n`);
    try {
      const never = await cliJson<StatusReport>(['status'], file);
      assert.equal(never.status, 0, never.stderr);
      assert.deepEqual([never.report.daemon.running, never.report.sources[0].domains, never.report.sources[0].lastSuccess], [false, 0, undefined]);
      const sync = await cliJson<SyncReport & { via: string }>(['sync'], file);
      assert.equal(sync.status, 0, sync.stderr);
      assert.equal(sync.report.via, 'standalone');
      assert.deepEqual(sync.report.sources[0].added, { domains: 4, addresses: 4 });
      const status = await cliJson<StatusReport>(['status'], file);
      assert.equal(status.report.daemon.running, false);
      assert.equal(status.report.sources[0].domains, 4);
      await db.execute('DROP TABLE {db}.address');
      mx = await startTestDaemon({ sources: sourceYaml(db.url()), spoolDir });
      assert.equal(await rcpt(mx.port, 'alice@d1.example'), '250 2.1.5');
    } finally {
      rmSync(dir, { recursive: true, force: true });
      rmSync(spoolDir, { recursive: true, force: true });
    }
  });
});

/** A stand-in for AlternC's admin/mxlist.php: Basic auth, plain or ?json=1 answers. */
class MxlistPanel {
  domains = ['d1.example', 'd2.example'];
  mode: 'json' | 'plain' | 'bad-integrity' | 'truncated' | 'empty' = 'json';
  delayMs = 0;
  requests = 0;
  inFlight = 0;
  maxInFlight = 0;
  private readonly server: Server = createServer((request, response) => {
    this.handle(request, response).catch(() => response.destroy()); // the panel fails as a broken one would
  });
  port = 0;

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as { port: number }).port;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}/admin/mxlist.php`;
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    this.requests++;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      if (this.delayMs) await new Promise((resolve) => setTimeout(resolve, this.delayMs));
      if (request.headers.authorization !== `Basic ${Buffer.from('mx2:s3cret').toString('base64')}`) {
        response.writeHead(401, { 'www-authenticate': 'Basic realm="MX List Authentication"' });
        return void response.end('Unauthorized');
      }
      const json = new URL(request.url!, 'http://x').searchParams.get('json') === '1';
      const plain = this.domains.map((domain) => `${domain}\n`).join('');
      if (this.mode === 'empty') return void response.end('');
      if (this.mode === 'truncated') return void response.end(plain.slice(0, -3));
      if (this.mode === 'plain' || !json) return void response.end(plain);
      const integrity = createHash('md5')
        .update(this.mode === 'bad-integrity' ? 'tampered' : this.domains.join(''))
        .digest('hex');
      response.end(JSON.stringify({ integrity, items: this.domains }));
    } finally {
      this.inFlight--;
    }
  }
}

describe('sync: mxlist.php source', () => {
  let panel: MxlistPanel;
  beforeEach(async () => {
    panel = new MxlistPanel();
    await panel.start();
  });
  afterEach(async () => panel.stop());

  function source(password = 's3cret'): MxlistSourceConfig {
    const yaml = `primary: { host: 127.0.0.1 }\nsources:\n  - { name: panel, type: mxlist, url: "${panel.url}", login: mx2, password: "${password}", timeout: 5 }\n`;
    return parseConfig(yaml, '/x.yaml').sources[0] as MxlistSourceConfig;
  }

  it('reads the JSON form, checks its integrity, and lists domains without recipient check', async () => {
    const { list } = await pullMxlist(source());
    assert.deepEqual([...list.keys()], ['d1.example', 'd2.example']);
    assert.equal(list.get('d1.example')!.recipientCheck, false);
  });

  it('leaves out a bad domain line, names it, and keeps the others', async () => {
    panel.domains = ['d1.example', 'bad_domain!', '_mail.d1.example'];
    const { list, skipped } = await pullMxlist(source());
    assert.deepEqual([...list.keys()], ['d1.example', '_mail.d1.example']);
    assert.deepEqual(skipped, ['not a valid domain: "bad_domain!"']);
  });

  it('reads the plain form of an older panel', async () => {
    panel.mode = 'plain';
    assert.deepEqual([...(await pullMxlist(source())).list.keys()], ['d1.example', 'd2.example']);
  });

  const failures: Array<[string, () => void, RegExp]> = [
    ['wrong credentials', () => undefined, /401 Unauthorized: check login and password/],
    ['a bad integrity hash', () => (panel.mode = 'bad-integrity'), /integrity check failed/],
    ['a truncated plain answer', () => ((panel.mode = 'plain'), (panel.mode = 'truncated')), /does not end with a newline/],
    ['an empty answer', () => (panel.mode = 'empty'), /empty result/],
    [
      'an answer with no valid domain',
      () => (panel.domains = ['bad_domain!']),
      /empty result: no domain at all \(1 rows not valid: not a valid domain: "bad_domain!"\)/,
    ],
  ];
  for (const [what, arrange, reason] of failures) {
    it(`refuses ${what}`, async () => {
      arrange();
      const password = what === 'wrong credentials' ? 'wrong' : 's3cret';
      await assert.rejects(pullMxlist(source(password)), (error: unknown) => error instanceof SourceError && reason.test(error.message));
    });
  }

  it('reports a panel that does not answer', async () => {
    const url = panel.url;
    await panel.stop();
    panel = new MxlistPanel();
    await panel.start();
    const dead = { ...source(), url };
    await assert.rejects(pullMxlist(dead), /cannot fetch .*ECONNREFUSED/);
  });

  it('never runs two syncs at once, even when a scheduled run comes while one is slow', async () => {
    panel.delayMs = 1500;
    const mx = await startTestDaemon({
      sources: `  - { name: panel, type: mxlist, url: "${panel.url}", login: mx2, password: s3cret, timeout: 5 }`,
      extra: 'sync: { schedule: "* * * * * *" }',
    });
    try {
      const [a, b] = await Promise.all([mx.daemon.syncer.run(), mx.daemon.syncer.run()]);
      assert.equal(a, b); // the second request shared the running sync
      await new Promise((resolve) => setTimeout(resolve, 3500));
      assert.ok(panel.requests >= 3, `requests: ${panel.requests}`);
      assert.equal(panel.maxInFlight, 1);
      assert.ok(mx.logs.some((line) => /not recipient-checked/.test(String(line.msg))));
      // Known (not 550 5.7.1): an mxlist domain has no address list, and its primary is closed here.
      assert.equal(await rcpt(mx.port, 'anyone@d2.example'), '450 4.1.1');
    } finally {
      await mx.stop();
    }
  });
});
