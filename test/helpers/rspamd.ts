import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { freePort } from './primary.js';
import { TestDnsServer } from './dns-server.js';
import { waitFor } from './wait.js';

const RSPAMD = '/usr/bin/rspamd';
/** Compiled rules are kept between runs here: the first start compiles for tens of seconds, later ones take a few. */
const DB_DIR = '/var/tmp/secondarymx-test-rspamd-db';

/** A fresh machine (`npm ci && npm test` as root): Debian's package, as .ci/run installs it. */
function installRspamd(): void {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    execFileSync('apt-get', ['update', '-qq'], { env, stdio: 'ignore' });
    execFileSync('apt-get', ['install', '-y', '-qq', 'rspamd'], { env, stdio: 'ignore' });
  } catch (error) {
    throw new Error(`${RSPAMD} is missing and apt-get install rspamd failed: ${(error as Error).message}`);
  }
}

/**
 * Debian's rspamd in the foreground (`rspamd -f -u _rspamd -g _rspamd`), with a config
 * folder of its own that overrides the package's: the normal worker on a free loopback
 * port (no proxy, controller or fuzzy worker), its resolver on the tests' loopback DNS
 * server, and two test rules: a Subject with SPAMWORD scores 100 (add header at 50;
 * GTUBE still gives reject), one with SOFTWORD gets "soft reject".
 */
export class TestRspamd {
  private child: ChildProcess | undefined;
  private readonly dir = mkdtempSync(join(tmpdir(), 'secondarymx-rspamd-'));
  port = 0;
  readonly output: string[] = [];

  constructor(private readonly dnsServer: string) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts it; a port taken by another test between freePort() and rspamd's bind is retried with a new one. */
  async start(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.startOnce();
      } catch (error) {
        if (attempt === 3 || !/Address already in use/.test((error as Error).message)) throw error;
        this.output.length = 0;
      }
    }
  }

  private async startOnce(): Promise<void> {
    if (userInfo().uid !== 0) throw new Error('rspamd is started as root, which drops to _rspamd');
    if (!existsSync(RSPAMD)) installRspamd();
    this.port = await freePort();
    const { dir } = this;
    for (const sub of ['local.d', 'override.d', 'run']) mkdirSync(join(dir, sub), { recursive: true });
    mkdirSync(DB_DIR, { recursive: true });
    const files: Record<string, string> = {
      'local.d/options.inc': `dns { nameserver = ["${this.dnsServer}"]; timeout = 1s; retransmits = 1; }\n`,
      'override.d/worker-normal.inc': `bind_socket = "127.0.0.1:${this.port}";\ncount = 1;\n`,
      'override.d/worker-proxy.inc': 'enabled = false;\n',
      'override.d/worker-controller.inc': 'enabled = false;\n',
      'override.d/worker-fuzzy.inc': 'enabled = false;\n',
      // Its rules name rspamd.com's fuzzy servers, which rspamd resolves with getaddrinfo() (the machine's resolver) at start.
      'local.d/fuzzy_check.conf': 'enabled = false;\n',
      'override.d/logging.inc': 'type = "console";\nlevel = "error";\n',
      'override.d/actions.conf': 'reject = 150;\nadd_header = 50;\ngreylist = null;\nrewrite_subject = null;\n',
      'local.d/multimap.conf':
        `TEST_SPAMWORD { type = "header"; header = "Subject"; regexp = true; map = "${join(dir, 'spamwords.map')}"; score = 100.0; }\n` +
        `TEST_SOFTWORD { type = "header"; header = "Subject"; regexp = true; map = "${join(dir, 'softwords.map')}"; prefilter = true; action = "soft reject"; message = "Busy, come back later"; }\n`,
      'spamwords.map': '/SPAMWORD/\n',
      'softwords.map': '/SOFTWORD/\n',
    };
    for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
    const rspamdUser = execFileSync('id', ['-u', '_rspamd']).toString().trim();
    const rspamdGroup = execFileSync('id', ['-g', '_rspamd']).toString().trim();
    chmodSync(dir, 0o755);
    for (const path of [join(dir, 'run'), DB_DIR]) chownSync(path, Number(rspamdUser), Number(rspamdGroup));
    const child = spawn(
      RSPAMD,
      ['-f', '-u', '_rspamd', '-g', '_rspamd', '--var', `LOCAL_CONFDIR=${dir}`, '--var', `RUNDIR=${join(dir, 'run')}`, '--var', `DBDIR=${DB_DIR}`],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    this.child = child;
    for (const stream of [child.stdout!, child.stderr!]) stream.on('data', (chunk: Buffer) => this.output.push(chunk.toString()));
    let exited = false;
    child.once('exit', () => (exited = true));
    await waitFor(async () => {
      if (exited) throw new Error(`rspamd exited: ${this.output.join('').slice(-2000)}`);
      return fetch(`${this.url}/ping`).then(
        (response) => response.ok,
        () => false,
      );
    }, 120_000);
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (child && child.exitCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * For a mocha suite: a loopback DNS server and an rspamd resolving through it, started
 * before its tests and stopped after them (with the time a fresh machine needs to install
 * rspamd and compile its rules).
 */
export function useRspamd(suite: Mocha.Suite): { dns: TestDnsServer; rspamd: () => TestRspamd } {
  suite.timeout(180_000);
  const dns = new TestDnsServer();
  let rspamd: TestRspamd | undefined;
  suite.beforeAll(async () => {
    await dns.start();
    rspamd = new TestRspamd(dns.server);
    await rspamd.start();
  });
  suite.afterAll(async () => {
    await rspamd?.stop();
    await dns.stop();
  });
  return { dns, rspamd: () => rspamd! };
}
