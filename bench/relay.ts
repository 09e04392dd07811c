/*
 * Relay benchmark: the real daemon queues BENCH_DRAIN messages (4 KB) while its primary
 * is down, then a fast local primary (smtp-server) starts: the delay from its return to
 * the first delivery, and the drain rate until the spool is empty. Then, if Postfix's
 * smtp-sink is there, the same again with it as the primary.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { spawnDaemon, type RunningDaemon } from '../test/helpers/cli.js';
import { baseConfig, withPrimary, writeTestConfig } from '../test/helpers/daemon.js';
import { freePort, TestPrimary } from '../test/helpers/primary.js';
import { message, SmtpClient } from '../test/helpers/smtp-client.js';
import { waitFor } from '../test/helpers/wait.js';
import { BODY } from './accept.js';
import { cpuSeconds, removeAfterRun, type Report } from './figures.js';

/** Postfix's C sink, when it is there (see the README): the drain against it, as Postfix's own drain is measured. */
const SMTP_SINK = process.env.BENCH_SMTP_SINK ?? '/usr/sbin/smtp-sink';

/** Sends `total` messages over 20 connections; the primary is down, so they stay queued. */
async function fill(daemon: RunningDaemon, queueDir: string, total: number): Promise<void> {
  let remaining = total;
  await Promise.all(
    Array.from({ length: 20 }, async () => {
      const { client } = await SmtpClient.session(daemon.port);
      while (remaining > 0) {
        remaining--;
        await client.sendMail('sender@remote.example', ['alice@d1.example'], message(`drain ${remaining}`, BODY));
      }
      await client.quit();
    }),
  );
  const queued = queuedCount(queueDir);
  if (queued !== total) throw new Error(`expected ${total} queued, found ${queued}`);
}

function queuedCount(queueDir: string): number {
  return readdirSync(queueDir).filter((name) => name.endsWith('.msg')).length;
}

/** Starts smtp-sink on `port`; `delivered()` reads its running message counter. */
function startSmtpSink(port: number): { delivered: () => number; stop: () => void } {
  const asRoot = process.getuid?.() === 0 ? ['-u', 'nobody'] : []; // it refuses to run as root otherwise
  const sink = spawn(SMTP_SINK, [...asRoot, '-c', `127.0.0.1:${port}`, '100'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let delivered = 0;
  sink.stdout.setEncoding('latin1').on('data', (text: string) => {
    const counts = text.match(/mesg=(\d+)/g);
    if (counts) delivered = Number(counts[counts.length - 1].slice('mesg='.length));
  });
  return { delivered: () => delivered, stop: () => sink.kill() };
}

export async function relayBenchmarks(report: Report): Promise<void> {
  const total = Number(process.env.BENCH_DRAIN ?? 10000);
  const probeInterval = 10;
  const primary = new TestPrimary(await freePort(), { keepData: false });
  const { dir, file } = writeTestConfig(withPrimary(baseConfig(`relay: { probeInterval: ${probeInterval} }`), primary.port));
  const parameters = { messages: total, size: '4KB', concurrency: 10, probeInterval: `${probeInterval}s` };
  const queueDir = join(dir, 'spool', 'queue');
  const daemon = await spawnDaemon(file);
  let sink: ReturnType<typeof startSmtpSink> | undefined;
  try {
    await fill(daemon, queueDir, total);
    const daemonCpu = cpuSeconds(daemon.child.pid!);
    const benchCpu = process.cpuUsage();
    await primary.start();
    const back = Date.now();
    await waitFor(() => primary.received.length > 0, (probeInterval + 5) * 1000);
    const first = Date.now();
    report({ name: 'primary return to first delivery', value: (first - back) / 1000, unit: 's', parameters });
    await waitFor(() => primary.received.length >= total, 600_000); // cheap to poll, unlike the queue folder
    await waitFor(() => queuedCount(queueDir) === 0, 60_000);
    const seconds = (Date.now() - first) / 1000;
    report({ name: 'drain rate', value: total / seconds, unit: 'messages/s', parameters });
    report({ name: 'drain cpu', value: ((cpuSeconds(daemon.child.pid!) - daemonCpu) * 1000) / total, unit: 'ms CPU/message', parameters });
    const sinkCpu = process.cpuUsage(benchCpu);
    report({
      name: 'drain sink cpu (the primary, in the bench process)',
      value: (sinkCpu.user + sinkCpu.system) / 1000 / total,
      unit: 'ms CPU/message',
      parameters,
    });
    report({ name: 'peak connections to the primary', value: primary.peakConnections, unit: 'connections', parameters });

    if (existsSync(SMTP_SINK)) {
      await primary.stop(); // down again: the next messages stay queued
      await fill(daemon, queueDir, total);
      const cpuBefore = cpuSeconds(daemon.child.pid!);
      sink = startSmtpSink(primary.port);
      await waitFor(() => sink!.delivered() > 0, (probeInterval + 5) * 1000);
      const started = Date.now();
      await waitFor(() => sink!.delivered() >= total && queuedCount(queueDir) === 0, 600_000);
      const bySink = { ...parameters, primary: 'smtp-sink' };
      report({ name: 'drain rate', value: total / ((Date.now() - started) / 1000), unit: 'messages/s', parameters: bySink });
      report({ name: 'drain cpu', value: ((cpuSeconds(daemon.child.pid!) - cpuBefore) * 1000) / total, unit: 'ms CPU/message', parameters: bySink });
    }
  } finally {
    sink?.stop();
    daemon.child.kill('SIGTERM');
    await daemon.exited;
    await primary.stop();
    removeAfterRun(dir);
  }
}
