/*
 * Accept-rate benchmark: the real daemon (dist/cli.js serve) on loopback, a spool in
 * a temp folder on this disk, and real SMTP sessions sending 4 KB messages.
 *   A: many concurrent sessions, one message per connection (senders retrying to the backup MX)
 *   B: fewer sessions, many messages per connection (a big sender flushing its queue)
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import { spawnDaemon, type RunningDaemon } from '../test/helpers/cli.js';
import { baseConfig, writeTestConfig } from '../test/helpers/daemon.js';
import { message, SmtpClient } from '../test/helpers/smtp-client.js';
import { cpuSeconds, removeAfterRun, rssMb, type Report } from './figures.js';

export const BODY = `${'The quick brown fox jumps over the lazy dog. '.repeat(2).trim()}\r\n`.repeat(45); // ~4 KB
async function sendOnOneConnection(port: number, count: number, seq: () => number): Promise<void> {
  const { client } = await SmtpClient.session(port, 'bench.example');
  for (let i = 0; i < count; i++) {
    const reply = await client.sendMail('sender@remote.example', ['alice@d1.example'], message(`bench ${seq()}`, BODY));
    if (reply.code !== 250) throw new Error(`not accepted: ${reply.lines.join(' | ')}`);
  }
  await client.quit();
}

async function run(daemon: RunningDaemon, sessions: number, perSession: number, total: number): Promise<{ rate: number; cpuMs: number }> {
  let n = 0;
  const seq = () => n++;
  const pid = daemon.child.pid!;
  const cpuBefore = cpuSeconds(pid);
  const start = process.hrtime.bigint();
  let remaining = total;
  const worker = async () => {
    while (remaining > 0) {
      const count = Math.min(perSession, remaining);
      remaining -= count;
      await sendOnOneConnection(daemon.port, count, seq);
    }
  };
  await Promise.all(Array.from({ length: sessions }, worker));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const cpu = cpuSeconds(pid) - cpuBefore;
  return { rate: total / seconds, cpuMs: (cpu * 1000) / total };
}

/**
 * Postfix's C load generator, when it is there (Debian's postfix package, or its files
 * unpacked: see the README): it costs the shared CPUs far less than the JavaScript client.
 */
const SMTP_SOURCE = process.env.BENCH_SMTP_SOURCE ?? '/usr/sbin/smtp-source';

async function runSmtpSource(daemon: RunningDaemon, sessions: number, perSession: number, total: number): Promise<{ rate: number; cpuMs: number }> {
  const args = ['-s', String(sessions), '-m', String(total), '-l', '4096', '-f', 'sender@remote.example', '-t', 'alice@d1.example', '-M', 'bench.example'];
  if (perSession > 1) args.push('-d');
  const pid = daemon.child.pid!;
  const cpuBefore = cpuSeconds(pid);
  const start = process.hrtime.bigint();
  await promisify(execFile)(SMTP_SOURCE, [...args, `127.0.0.1:${daemon.port}`]);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  return { rate: total / seconds, cpuMs: ((cpuSeconds(pid) - cpuBefore) * 1000) / total };
}

export async function acceptBenchmarks(report: Report): Promise<void> {
  const acceptA = Number(process.env.BENCH_ACCEPT_A ?? 3000);
  const cases = [
    { name: 'accept A', sessions: 100, perSession: 1, total: acceptA, greetingPause: 0.1 },
    // The same without the pause before the greeting (Postfix's smtpd has none).
    { name: 'accept A, greetingPause 0', sessions: 100, perSession: 1, total: acceptA, greetingPause: 0 },
    // B: the messages are shared out over the 20 connections (150 each by default).
    {
      name: 'accept B',
      sessions: 20,
      perSession: Math.ceil(Number(process.env.BENCH_ACCEPT_B ?? 3000) / 20),
      total: Number(process.env.BENCH_ACCEPT_B ?? 3000),
      greetingPause: 0.1,
    },
  ];
  for (const c of cases) {
    // Every bench session comes from 127.0.0.1: lift the per-client limit a real MX keeps.
    const { dir, file } = writeTestConfig(baseConfig(`limits: { connectionsPerClient: 1000, greetingPause: ${c.greetingPause} }`));
    const daemon = await spawnDaemon(file);
    try {
      await run(daemon, 10, 5, 50); // warm-up
      const { rate, cpuMs } = await run(daemon, c.sessions, c.perSession, c.total);
      const parameters = { sessions: c.sessions, messagesPerConnection: c.perSession, messages: c.total, size: '4KB', fsync: 'yes' };
      report({ name: `${c.name} rate`, value: rate, unit: 'messages/s', parameters });
      report({ name: `${c.name} cpu`, value: cpuMs, unit: 'ms CPU/message', parameters });
      if (existsSync(SMTP_SOURCE)) {
        const bySmtpSource = await runSmtpSource(daemon, c.sessions, c.perSession, c.total);
        const generator = { ...parameters, generator: 'smtp-source' };
        report({ name: `${c.name} rate`, value: bySmtpSource.rate, unit: 'messages/s', parameters: generator });
        report({ name: `${c.name} cpu`, value: bySmtpSource.cpuMs, unit: 'ms CPU/message', parameters: generator });
      }
      report({ name: `${c.name} rss`, value: rssMb(daemon.child.pid!), unit: 'MB RSS after', parameters });
    } finally {
      daemon.child.kill('SIGTERM');
      await daemon.exited;
      removeAfterRun(dir);
    }
  }
}
