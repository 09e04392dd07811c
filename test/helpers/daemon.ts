import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { parseConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/log.js';
import { startDaemon, type Daemon } from '../../src/serve.js';
import { TestDnsServer } from './dns-server.js';

/**
 * Every test daemon's resolver (unless a test brings its own): a loopback DNS server that
 * knows no name, so SPF, DMARC and MX lookups get NXDOMAIN at once. A closed port did the
 * same until the kernel's ICMP rate limit (hundreds of lookups a second across the
 * parallel test files) let some queries wait for c-ares' timeouts instead.
 */
const nobodyKnows = new TestDnsServer();
await nobodyKnows.start();
nobodyKnows.unref();

/** The directory most tests use. */
export const DOMAINS = `
# d1: recipient-checked
d1.example
alice@d1.example
Bob.Smith@d1.example
postmaster@d1.example
# d2: catch-all
@d2.example
# d3: domain only
d3.example
# IDN, written in Unicode
bücher.example
info@bücher.example
`;

export interface TestDaemon {
  port: number;
  dir: string;
  /** The config file (the CLI can be pointed at it to talk to this daemon). */
  file: string;
  spoolDir: string;
  daemon: Daemon;
  /** Parsed pino lines logged so far. */
  logs: Array<Record<string, unknown>>;
  stop(): Promise<void>;
}

/** Writes a config (YAML text, with DOMAINS as domains.txt) to a fresh temp folder. */
export function writeTestConfig(yaml: string, domains = DOMAINS): { dir: string; file: string } {
  const dir = mkdtempSync(join(tmpdir(), 'secondarymx-test-'));
  writeFileSync(join(dir, 'domains.txt'), domains);
  const file = join(dir, 'secondarymx.yaml');
  writeFileSync(file, yaml);
  return { dir, file };
}

export const FILE_SOURCE = '  - { name: local, type: file, path: domains.txt }';

/**
 * A test config: loopback, ephemeral port, spool in the config's folder. Unless the
 * test brings its own, DNS goes to `nobodyKnows`: tests never ask the machine's
 * resolver (no traffic beyond loopback).
 */
export function baseConfig(extra = '', sources = FILE_SOURCE): string {
  const dns = /^dns:/m.test(extra) ? '' : `dns: { servers: ["${nobodyKnows.server}"] }\n`;
  const control = /^control:/m.test(extra) ? '' : 'control: { listen: "127.0.0.1:0" }\n'; // many daemons, no fixed port
  return `hostname: mx2.test.example
listen: ["127.0.0.1:0"]
spool: ./spool
primary: { host: 127.0.0.1, port: 1 }   # closed: tests that deliver start their own primary
sources:
${sources}
${extra}
${dns}${control}`;
}

/** The config with the primary on this loopback port (a TestPrimary's). */
export function withPrimary(yaml: string, port: number | undefined): string {
  return port === undefined ? yaml : yaml.replace(/^primary: .*$/m, `primary: { host: 127.0.0.1, port: ${port} }`);
}

/** Starts the daemon in this process on an ephemeral loopback port. */
export async function startTestDaemon(
  options: { extra?: string; sources?: string; domains?: string; spoolDir?: string; primaryPort?: number } = {},
): Promise<TestDaemon> {
  const yaml = withPrimary(baseConfig(options.extra, options.sources), options.primaryPort).replace(
    'spool: ./spool',
    `spool: ${options.spoolDir ?? './spool'}`,
  );
  const { dir, file } = writeTestConfig(yaml, options.domains);
  const config = parseConfig(yaml, file);
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) logs.push(JSON.parse(line) as Record<string, unknown>);
      callback();
    },
  });
  const daemon = await startDaemon({ file, config }, createLogger('debug', sink));
  await daemon.firstSync;
  const port = daemon.server.addresses[0].port;
  return {
    port,
    dir,
    file,
    spoolDir: config.spool,
    daemon,
    logs,
    async stop() {
      await daemon.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
