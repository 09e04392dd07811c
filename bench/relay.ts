/*
 * Relay benchmark: the real daemon queues BENCH_DRAIN messages (4 KB) while its primary
 * is down, then a fast local primary (smtp-server) starts: the delay from its return to
 * the first delivery, and the drain rate until the spool is empty.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { spawnDaemon } from '../test/helpers/cli.js';
import { baseConfig, withPrimary, writeTestConfig } from '../test/helpers/daemon.js';
import { freePort, TestPrimary } from '../test/helpers/primary.js';
import { message, SmtpClient } from '../test/helpers/smtp-client.js';
import { waitFor } from '../test/helpers/wait.js';
import { BODY } from './accept.js';
import { cpuSeconds, removeAfterRun, type Report } from './figures.js';

export async function relayBenchmarks(report: Report): Promise<void> {
  const total = Number(process.env.BENCH_DRAIN ?? 10000);
  const probeInterval = 10;
  const primary = new TestPrimary(await freePort(), { keepData: false });
  const { dir, file } = writeTestConfig(withPrimary(baseConfig(`relay: { probeInterval: ${probeInterval} }`), primary.port));
  const parameters = { messages: total, size: '4KB', concurrency: 10, probeInterval: `${probeInterval}s` };
  const daemon = await spawnDaemon(file);
  try {
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
    const queue = join(dir, 'spool', 'queue');
    const queued = () => readdirSync(queue).filter((name) => name.endsWith('.msg')).length;
    if (queued() !== total) throw new Error(`expected ${total} queued, found ${queued()}`);

    const daemonCpu = cpuSeconds(daemon.child.pid!);
    const benchCpu = process.cpuUsage();
    await primary.start();
    const back = Date.now();
    await waitFor(() => primary.received.length > 0, (probeInterval + 5) * 1000);
    const first = Date.now();
    report({ name: 'primary return to first delivery', value: (first - back) / 1000, unit: 's', parameters });
    await waitFor(() => primary.received.length >= total, 600_000); // cheap to poll, unlike the queue folder
    await waitFor(() => queued() === 0, 60_000);
    const seconds = (Date.now() - first) / 1000;
    report({ name: 'drain rate', value: total / seconds, unit: 'messages/s', parameters });
    report({ name: 'drain cpu', value: ((cpuSeconds(daemon.child.pid!) - daemonCpu) * 1000) / total, unit: 'ms CPU/message', parameters });
    const sinkCpu = process.cpuUsage(benchCpu);
    report({ name: 'drain sink cpu (the primary, in the bench process)', value: (sinkCpu.user + sinkCpu.system) / 1000 / total, unit: 'ms CPU/message', parameters });
    report({ name: 'peak connections to the primary', value: primary.peakConnections, unit: 'connections', parameters });
  } finally {
    daemon.child.kill('SIGTERM');
    await daemon.exited;
    await primary.stop();
    removeAfterRun(dir);
  }
}
