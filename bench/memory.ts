/*
 * Memory and start-up benchmarks (the issue-8 targets): RSS growth while receiving a
 * 50 MB message, RSS with 1,000 idle sessions open, and the start-up (recovery scan and
 * relay index) of a spool of 100,000 messages (BENCH_SPOOL_MESSAGES), then what `status`,
 * `queue list` and `queue summary` cost with that spool.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { CLI, spawnDaemon } from '../test/helpers/cli.js';
import { baseConfig, writeTestConfig } from '../test/helpers/daemon.js';
import { SmtpClient } from '../test/helpers/smtp-client.js';
import type { Envelope } from '../src/spool/envelope.js';
import { newQueueId } from '../src/spool/queue-id.js';
import { envelopeTrailer } from '../src/spool/trailer.js';
import { peakRssMb, removeAfterRun, rssMb, type Report } from './figures.js';

const LIMITS = 'limits: { connectionsPerClient: 2000, connections: 2000, messageSize: 60000000, dataTimeout: 600 }';

export async function memoryBenchmarks(report: Report): Promise<void> {
  const { dir, file } = writeTestConfig(baseConfig(LIMITS));
  let daemon = await spawnDaemon(file);
  try {
    const pid = daemon.child.pid!;
    const before = rssMb(pid);
    const { client } = await SmtpClient.session(daemon.port);
    for (const step of ['MAIL FROM:<s@remote.example>', 'RCPT TO:<alice@d1.example>', 'DATA']) await client.command(step);
    const line = `${'x'.repeat(998)}\r\n`;
    client.write('Subject: big\r\n\r\n');
    let peak = before;
    for (let sent = 0; sent < 50 * 1024 * 1024; sent += line.length * 1000) {
      client.write(line.repeat(1000));
      peak = Math.max(peak, rssMb(pid));
      await new Promise((resolve) => setImmediate(resolve));
    }
    const reply = await client.data('');
    await client.quit();
    report({
      name: '50 MB message RSS growth',
      value: Math.max(peak, peakRssMb(pid)) - before,
      unit: 'MB',
      parameters: { reply: reply.code, baseline: `${before.toFixed(0)}MB` },
    });

    const sockets: Socket[] = [];
    const idleBefore = rssMb(pid);
    for (let i = 0; i < 1000; i++) {
      const socket = connect(daemon.port, '127.0.0.1');
      socket.on('error', () => undefined);
      sockets.push(socket);
      if (i % 100 === 99) await new Promise((resolve) => setTimeout(resolve, 200));
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
    report({ name: '1,000 idle sessions RSS', value: rssMb(pid), unit: 'MB', parameters: { sessions: 1000, before: `${idleBefore.toFixed(0)}MB` } });
    for (const socket of sockets) socket.destroy();
    daemon.child.kill('SIGTERM');
    await daemon.exited;

    const count = Number(process.env.BENCH_SPOOL_MESSAGES ?? 100_000);
    const queue = join(dir, 'spool', 'queue');
    mkdirSync(queue, { recursive: true });
    const body = 'Received: from x by y; Wed, 25 Nov 2026 10:00:00 +0000\r\nSubject: s\r\n\r\nhi\r\n';
    const base = Date.now() - 60_000;
    for (let i = 0; i < count; i++) {
      const id = newQueueId(base + i);
      const envelope: Envelope = {
        version: 1,
        id,
        arrival: new Date(base + i).toISOString(),
        sender: 's@remote.example',
        recipients: [{ address: 'alice@d1.example', state: 'pending', source: 'local' }],
        size: body.length,
        bodyType: '7bit',
        smtpUtf8: false,
        client: { address: '127.0.0.1', helo: 'x' },
      };
      writeFileSync(join(queue, `${id}.msg`), Buffer.concat([Buffer.from(body), envelopeTrailer(envelope)]));
    }
    const started = Date.now();
    daemon = await spawnDaemon(file);
    const listening = daemon.logs.find((l) => l.event === 'listening');
    const starting = daemon.logs.find((l) => l.msg === 'starting');
    report({
      name: 'start with a full spool',
      value: (Date.parse(String(listening?.time)) - Date.parse(String(starting?.time))) / 1000,
      unit: 's to listening',
      parameters: {
        messages: count,
        rss: `${rssMb(daemon.child.pid!).toFixed(0)}MB`,
        peak: `${peakRssMb(daemon.child.pid!).toFixed(0)}MB`,
        wall: `${((Date.now() - started) / 1000).toFixed(1)}s`,
      },
    });
    await queueTools(report, daemon.child.pid!, file, count);
  } finally {
    daemon.child.kill('SIGTERM');
    await daemon.exited;
    removeAfterRun(dir);
  }
}

/**
 * What an operator runs during a long outage, against the daemon holding `count` messages:
 * `status` (the daemon's RSS before and its peak while answering: it must not grow with
 * the queue), `queue list` and `queue summary` (wall time, output to /dev/null).
 */
async function queueTools(report: Report, pid: number, file: string, count: number): Promise<void> {
  writeFileSync(`/proc/${pid}/clear_refs`, '5'); // resets VmHWM: the peak from here on
  const before = rssMb(pid);
  const run = (args: string[]) => {
    const started = process.hrtime.bigint();
    const result = spawnSync(process.execPath, [CLI, ...args, '--config', file], { stdio: ['ignore', 'ignore', 'inherit'] });
    if (result.status !== 0) throw new Error(`${args.join(' ')}: exit ${result.status}`);
    return Number(process.hrtime.bigint() - started) / 1e9;
  };
  const statusSeconds = run(['status']);
  report({
    name: 'status with a full spool: daemon peak RSS',
    value: peakRssMb(pid),
    unit: 'MB',
    parameters: { messages: count, before: `${before.toFixed(0)}MB`, seconds: statusSeconds.toFixed(2) },
  });
  report({ name: 'queue list with a full spool', value: run(['queue', 'list']), unit: 's', parameters: { messages: count } });
  report({ name: 'queue summary with a full spool', value: run(['queue', 'summary']), unit: 's', parameters: { messages: count } });
}
