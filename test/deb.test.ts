import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CLI } from './helpers/cli.js';
import { waitFor } from './helpers/wait.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PACKAGE = 'alternc-secondarymx';
const SPOOL = '/var/spool/secondarymx';

function run(command: string, args: string[]): { status: number; stdout: string; stderr: string } {
  const result = spawnSync(command, args, { encoding: 'utf8', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

const installed = () => run('dpkg-query', ['-W', '-f=${Status}', PACKAGE]).stdout.includes('ok installed');
const userExists = () => run('getent', ['passwd', 'secondarymx']).status === 0;

/** Removes what an earlier, interrupted run may have left on this machine. */
function clean(): void {
  if (run('dpkg-query', ['-W', PACKAGE]).status === 0) run('dpkg', ['--purge', PACKAGE]);
  rmSync(SPOOL, { recursive: true, force: true });
  if (userExists()) run('deluser', ['--system', '--quiet', 'secondarymx']);
}

describe('Debian package: npm run deb, install, check, purge', function () {
  this.timeout(120_000);
  let out: string;
  let deb: string;
  /** lintian takes ~10 s: it runs while the package is installed and removed. */
  let lintian: Promise<{ code: number | null; report: string }> | undefined;
  before(function () {
    if (userInfo().uid !== 0 || !existsSync('/usr/bin/dpkg-deb')) this.skip(); // CI runs as root on Debian
    out = mkdtempSync(join(tmpdir(), 'secondarymx-deb-'));
    deb = execFileSync('bash', [join(ROOT, 'deploy/debian/build.sh'), out], { encoding: 'utf8' }).trim();
    if (existsSync('/usr/bin/lintian')) {
      const child = spawn('lintian', ['--tag-display-limit', '0', deb], { stdio: ['ignore', 'pipe', 'ignore'] });
      let report = '';
      child.stdout.on('data', (chunk: Buffer) => (report += chunk.toString()));
      lintian = new Promise((resolve) => child.once('close', (code) => resolve({ code, report })));
    }
    clean();
  });
  after(() => {
    if (out) rmSync(out, { recursive: true, force: true });
  });

  it('builds an arch-all package with the code, its production dependencies, the unit, the conffiles and the man page', () => {
    assert.match(deb, /alternc-secondarymx_\d+\.\d+\.\d+_all\.deb$/);
    const files = new Set(
      execFileSync('dpkg-deb', ['-c', deb], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 })
        .split('\n')
        .map((line) => line.split(/\s+/)[5]),
    );
    for (const path of [
      './usr/bin/secondarymx',
      './usr/lib/systemd/system/secondarymx.service',
      './etc/secondarymx/secondarymx.yaml',
      './usr/share/man/man8/secondarymx.8.gz',
      './usr/share/doc/alternc-secondarymx/copyright',
      './usr/lib/alternc-secondarymx/dist/cli.js',
      './usr/lib/alternc-secondarymx/node_modules/smtp-server/package.json',
      './usr/lib/alternc-secondarymx/node_modules/mailauth/package.json',
    ])
      assert.ok(files.has(path), `${path} is missing`);
    for (const dev of ['mocha', 'typescript', 'eslint', 'tsx', 'prettier'])
      assert.ok(![...files].some((path) => path?.startsWith(`./usr/lib/alternc-secondarymx/node_modules/${dev}/`)), `dev dependency ${dev} shipped`);
    const info = execFileSync('dpkg-deb', ['-I', deb], { encoding: 'utf8' });
    assert.match(info, /^ Depends: nodejs \(>= 20\), adduser, procps$/m); // procps: /bin/kill, which ExecReload runs (not in a minimal Debian 13)
    assert.match(info, /^ Architecture: all$/m);
    for (const script of ['postinst', 'prerm', 'postrm']) assert.match(info, new RegExp(`\\d+ bytes, +\\d+ lines +\\* +${script} +#!/bin/sh`));
    assert.deepEqual(execFileSync('dpkg-deb', ['-f', deb, 'Package'], { encoding: 'utf8' }).trim(), PACKAGE);
    const conffiles = execFileSync('sh', ['-c', `dpkg-deb --ctrl-tarfile ${deb} | tar -xO ./conffiles`], { encoding: 'utf8' });
    assert.deepEqual(conffiles.trim().split('\n'), ['/etc/secondarymx/secondarymx.yaml', '/etc/secondarymx/domains.txt']);
    const unit = execFileSync('sh', ['-c', `dpkg-deb --fsys-tarfile ${deb} | tar -xO ./usr/lib/systemd/system/secondarymx.service`], { encoding: 'utf8' });
    assert.match(unit, /^ExecStart=\/usr\/bin\/secondarymx serve --config \/etc\/secondarymx\/secondarymx\.yaml$/m);
    const man = execFileSync('sh', ['-c', `dpkg-deb --fsys-tarfile ${deb} | tar -xO ./usr/share/man/man8/secondarymx.8.gz | gunzip`], { encoding: 'utf8' });
    const help = execFileSync('node', [CLI, '--help'], { encoding: 'utf8' });
    for (const line of help.split('\n').filter((l) => l.trim()))
      assert.ok(man.includes(line.replace(/\\/g, '\\e').replace(/-/g, '\\-')), `man page lacks: ${line}`);
  });

  it('installs (user, spool 0700, config 0640 root:secondarymx), checks its shipped config, serves as the unit would, and purges cleanly', async () => {
    const install = run('dpkg', ['-i', deb]);
    assert.equal(install.status, 0, install.stderr);
    assert.ok(installed());
    assert.ok(userExists());
    const spool = statSync(SPOOL);
    assert.equal(spool.mode & 0o777, 0o700);
    assert.equal(spool.uid, Number(run('id', ['-u', 'secondarymx']).stdout));
    const config = statSync('/etc/secondarymx/secondarymx.yaml');
    assert.deepEqual([config.mode & 0o777, config.uid, config.gid], [0o640, 0, Number(run('id', ['-g', 'secondarymx']).stdout)]);
    const check = run('/usr/bin/secondarymx', ['check']);
    assert.equal(check.status, 0, check.stderr);
    assert.match(check.stdout, /^# \/etc\/secondarymx\/secondarymx\.yaml: ok$/m);
    assert.match(run('man', ['-w', 'secondarymx']).stdout + run('ls', ['/usr/share/man/man8/secondarymx.8.gz']).stdout, /secondarymx\.8\.gz/);

    if (existsSync('/usr/bin/systemd-analyze')) {
      const verify = run('systemd-analyze', ['verify', '/usr/lib/systemd/system/secondarymx.service']);
      assert.deepEqual([verify.status, verify.stderr.trim()], [0, ''], 'the unit as systemd reads it');
    }
    // What systemd would run (User=secondarymx, AmbientCapabilities=CAP_NET_BIND_SERVICE): no systemd as PID 1 here.
    const serve = spawn(
      'setpriv',
      [
        '--reuid=secondarymx',
        '--regid=secondarymx',
        '--init-groups',
        '--inh-caps=+net_bind_service',
        '--ambient-caps=+net_bind_service',
        '/usr/bin/secondarymx',
        'serve',
        '--config',
        '/etc/secondarymx/secondarymx.yaml',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let output = '';
    serve.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    serve.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    try {
      await waitFor(() => /"event":"listening"/.test(output) || serve.exitCode !== null, 20_000);
      assert.match(output, /"event":"listening","listen":\["\[::\]:25"\]/, output);
      const greeting = await new Promise<string>((resolve, reject) => {
        const socket = connect(25, '127.0.0.1');
        socket.once('data', (data) => {
          resolve(data.toString());
          socket.destroy();
        });
        socket.once('error', reject);
      });
      assert.match(greeting, /^(220|421) /);
    } finally {
      serve.kill('SIGTERM');
      await new Promise((resolve) => serve.once('exit', resolve));
    }
    assert.equal(statSync(join(SPOOL, 'serve.pid'), { throwIfNoEntry: false }), undefined, 'the daemon removed its lock');

    // remove: the daemon's files go; config, spool and user stay.
    assert.equal(run('dpkg', ['--remove', PACKAGE]).status, 0);
    assert.ok(!existsSync('/usr/bin/secondarymx'));
    assert.ok(existsSync('/etc/secondarymx/secondarymx.yaml') && userExists(), 'remove keeps the config and the user');
    // A purge keeps a spool that still holds mail, and says so (postrm run as dpkg --purge runs it, package kept for the next step).
    mkdirSync(join(SPOOL, 'queue'), { recursive: true });
    writeFileSync(join(SPOOL, 'queue', '0MX0AAAAAAAAAAAAAAA.msg'), 'mail');
    const kept = run(`/var/lib/dpkg/info/${PACKAGE}.postrm`, ['purge']);
    assert.equal(kept.status, 0, kept.stderr);
    assert.match(kept.stderr, /kept \/var\/spool\/secondarymx: it holds 1 undelivered message/);
    assert.ok(existsSync(join(SPOOL, 'queue', '0MX0AAAAAAAAAAAAAAA.msg')) && userExists(), 'the spool and its owner stay');
    // With an empty spool, a purge removes config, spool and user.
    rmSync(join(SPOOL, 'queue'), { recursive: true });
    const purged = run('dpkg', ['--purge', PACKAGE]);
    assert.equal(purged.status, 0, purged.stderr);
    assert.ok(!existsSync(SPOOL) && !existsSync('/etc/secondarymx') && !userExists());
  });

  it('passes lintian without a tag, where lintian is installed', async function () {
    if (!lintian) this.skip();
    const { code, report } = await lintian!;
    assert.equal(code, 0, report);
    assert.deepEqual(
      report.split('\n').filter((line) => /^[EWIX]: /.test(line)),
      [],
    );
  });
});
