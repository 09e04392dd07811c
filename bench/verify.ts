/*
 * RCPT probes (issue 26): ten clients, each from an address of its own, pipeline 1,000
 * RCPTs to uncached addresses of a domain without a list while the primary is up; the
 * figures are the probe sessions open at the primary at once, the most probes it got in
 * one second, and the round trip of another client's commands meanwhile. Then the write
 * cost of a 100,000-entry cache under 100 RCPT/s of new addresses (wchar of the daemon:
 * every byte it wrote, the log's lines and its SMTP replies).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnDaemon } from '../test/helpers/cli.js';
import { baseConfig, withPrimary, writeTestConfig } from '../test/helpers/daemon.js';
import { freePort, TestPrimary } from '../test/helpers/primary.js';
import { removeAfterRun, type Report } from './figures.js';
import { RawClient } from './raw-client.js';

/** A flood is many refusals in one session: the error limit would cut it before the probes are measured. */
const FLOOD_LIMITS = 'limits: { recipients: 1000, errorsPerSession: 100000, junkCommands: 100000, messagesPerConnection: 100000 }';

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

function wchar(pid: number): number {
  return Number(/wchar: (\d+)/.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))?.[1] ?? 0);
}

export async function verifyBenchmarks(report: Report): Promise<void> {
  const primary = new TestPrimary(await freePort());
  await primary.start();
  const probeTimes = primary.rcptTimes;
  const { dir, file } = writeTestConfig(withPrimary(baseConfig(FLOOD_LIMITS), primary.port));
  removeAfterRun(dir);
  const daemon = await spawnDaemon(file);
  try {
    const clients = await Promise.all(Array.from({ length: 10 }, (_, i) => RawClient.open(daemon.port, `127.0.0.${i + 2}`)));
    const legit = await RawClient.open(daemon.port, '127.0.0.50');
    let flooding = true;
    const roundTrips: number[] = [];
    const measuring = (async () => {
      while (flooding && legit.open) {
        for (const command of ['MAIL FROM:<someone@remote.example>', 'RCPT TO:<alice@d1.example>', 'RSET']) {
          const started = process.hrtime.bigint();
          await legit.send(command);
          roundTrips.push(Number(process.hrtime.bigint() - started) / 1e6);
        }
      }
    })();
    const started = Date.now();
    await Promise.all(
      clients.map(async (client, c) => {
        await client.send('MAIL FROM:<forged@spam.example>');
        const rcpts = Array.from({ length: 1000 }, (_, i) => `RCPT TO:<c${c}u${i}@d3.example>`);
        await client.send(rcpts.join('\r\n'), rcpts.length);
      }),
    );
    const seconds = (Date.now() - started) / 1000;
    flooding = false;
    await measuring;
    const deferred = clients.reduce((sum, client) => sum + client.replies.filter((reply) => reply.startsWith('450')).length, 0);
    const peakPerSecond = probeTimes.reduce((most, at) => Math.max(most, probeTimes.filter((other) => other >= at && other < at + 1000).length), 0);
    const parameters = { clients: 10, rcptsPerClient: 1000, concurrency: 2, maxPerSecond: 20, perClientPerMinute: 60, primary: 'smtp-server' };
    report({ name: 'probe flood: probe sessions at the primary at once', value: primary.peakConnections, unit: 'connections', parameters });
    report({ name: 'probe flood: probe sessions opened', value: primary.connections, unit: 'connections', parameters });
    report({ name: 'probe flood: probes in the busiest second', value: peakPerSecond, unit: 'probes/s', parameters });
    report({ name: 'probe flood: probes in all', value: probeTimes.length, unit: 'probes', parameters: { ...parameters, deferred, seconds } });
    report({ name: "probe flood: another client's command round trip p50", value: percentile(roundTrips, 50), unit: 'ms', parameters });
    report({ name: "probe flood: another client's command round trip p99", value: percentile(roundTrips, 99), unit: 'ms', parameters });
    report({
      name: "probe flood: another client's command round trip max",
      value: roundTrips.reduce((most, ms) => Math.max(most, ms), 0),
      unit: 'ms',
      parameters,
    });
    report({
      name: "probe flood: another client's commands over 100 ms",
      value: roundTrips.filter((ms) => ms > 100).length,
      unit: 'commands',
      parameters: { ...parameters, of: roundTrips.length },
    });
    for (const client of [...clients, legit]) client.close();
  } finally {
    daemon.child.kill('SIGTERM');
    await daemon.exited;
  }
  await cacheWriteCost(report, primary);
  await primary.stop();
}

/** A 100,000-entry cache (a log on disk) under 100 RCPT/s of new addresses for 10 s: the bytes the daemon writes per second. */
async function cacheWriteCost(report: Report, primary: TestPrimary): Promise<void> {
  const { dir, file } = writeTestConfig(withPrimary(baseConfig(`verify: { maxPerSecond: 1000, perClientPerMinute: 100000 }\n${FLOOD_LIMITS}`), primary.port));
  removeAfterRun(dir);
  const until = Date.now() + 30 * 86400_000;
  const lines = Array.from({ length: 100_000 }, (_, i) => `${JSON.stringify({ k: `known${i}@d3.example`, u: until, v: { ok: true } })}\n`);
  const spool = join(dir, 'spool');
  mkdirSync(spool, { recursive: true });
  writeFileSync(join(spool, 'verified-recipients.json'), lines.join(''));
  const daemon = await spawnDaemon(file);
  try {
    const client = await RawClient.open(daemon.port, '127.0.0.60');
    await client.send('MAIL FROM:<s@remote.example>');
    const before = wchar(daemon.child.pid!);
    const started = Date.now();
    for (let second = 0; second < 10; second++) {
      const rcpts = Array.from({ length: 100 }, (_, i) => `RCPT TO:<new${second}x${i}@d3.example>`);
      await client.send(rcpts.join('\r\n'), rcpts.length);
      await client.send('RSET');
      await client.send('MAIL FROM:<s@remote.example>');
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, started + (second + 1) * 1000 - Date.now())));
    }
    await new Promise((resolve) => setTimeout(resolve, 1500)); // the last batch of the log
    const written = wchar(daemon.child.pid!) - before;
    report({
      name: 'verify cache: bytes written per second',
      value: written / ((Date.now() - started) / 1000) / 1024,
      unit: 'KB/s',
      parameters: { entries: 100_000, rcptPerSecond: 100, seconds: 10, counts: 'all writes of the daemon (wchar)' },
    });
    client.close();
  } finally {
    daemon.child.kill('SIGTERM');
    await daemon.exited;
  }
}
