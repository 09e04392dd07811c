import { get as httpGet } from 'node:http';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../src/config/load.js';
import { baseConfig, startTestDaemon } from './helpers/daemon.js';
import { freePort, TestPrimary } from './helpers/primary.js';
import { message, SmtpClient } from './helpers/smtp-client.js';
import { queueWaiting } from './helpers/spool-files.js';
import { waitFor } from './helpers/wait.js';

async function get(port: number, path: string): Promise<{ status: number; body: string; type: string }> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: response.status, body: await response.text(), type: response.headers.get('content-type') ?? '' };
}

/** The value of one sample of the Prometheus text format, e.g. sample(text, 'x_total{reason="a"}'). */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('monitoring: /metrics and /healthz on control.listen', () => {
  it('exposes every documented metric with the values of what happened', async () => {
    const primary = new TestPrimary(await freePort());
    await primary.start();
    const mx = await startTestDaemon({ primaryPort: primary.port, extra: 'relay: { probeInterval: 0.2 }' });
    try {
      const { client } = await SmtpClient.session(mx.port);
      assert.equal((await client.sendMail('s@remote.example', ['alice@d1.example'], message('counted'))).code, 250);
      await client.command('MAIL FROM:<s@remote.example>');
      await client.command('RCPT TO:<x@unknown.example>');
      await client.command('RCPT TO:<nobody@d1.example>');
      await client.command('RSET');
      assert.equal((await client.sendMail('s@remote.example', ['alice@d1.example'], 'Subject: x\r\n\r\nbare\nlf\r\n')).code, 550);
      await waitFor(() => primary.received.length === 1);
      const { status, body, type } = await get(mx.daemon.monitoringPort, '/metrics');
      assert.equal(status, 200);
      assert.match(type, /^text\/plain/);
      const expectations: Array<[string, (value: number) => boolean]> = [
        ['secondarymx_messages_accepted_total', (v) => v === 1],
        ['secondarymx_refused_total{reason="relay_denied"}', (v) => v === 1],
        ['secondarymx_refused_total{reason="unknown_user"}', (v) => v === 1],
        ['secondarymx_refused_total{reason="bad_data"}', (v) => v === 1],
        ['secondarymx_deliveries_total{status="sent"}', (v) => v === 1],
        ['secondarymx_spool_messages', (v) => v === 0],
        ['secondarymx_spool_bytes', (v) => v === 0],
        ['secondarymx_oldest_message_age_seconds', (v) => v === 0],
        [`secondarymx_primary_up{primary="127.0.0.1:${primary.port}"}`, (v) => v === 1],
        ['secondarymx_sync_last_success_timestamp_seconds{source="local"}', (v) => Math.abs(v - Date.now() / 1000) < 60],
        ['secondarymx_sync_domains{source="local"}', (v) => v === 4],
        ['secondarymx_sync_addresses{source="local"}', (v) => v === 5],
        ['secondarymx_smtp_sessions', (v) => v === 1],
      ];
      // The relay settles asynchronously: scrape until every figure holds, then report any that does not.
      const failing = (text: string) =>
        expectations.filter(([series, check]) => !check(sample(text, series) ?? NaN)).map(([series]) => `${series} = ${sample(text, series)}`);
      let text = body;
      await waitFor(async () => failing((text = (await get(mx.daemon.monitoringPort, '/metrics')).body)).length === 0).catch(() => undefined);
      assert.deepEqual(failing(text), []);
      await client.quit();
      await primary.stop();
      const { client: again } = await SmtpClient.session(mx.port);
      assert.equal((await again.sendMail('s@remote.example', ['alice@d1.example'], message('waiting'))).code, 250);
      await again.quit();
      await waitFor(
        async () => sample((await get(mx.daemon.monitoringPort, '/metrics')).body, `secondarymx_primary_up{primary="127.0.0.1:${primary.port}"}`) === 0,
      );
      const later = (await get(mx.daemon.monitoringPort, '/metrics')).body;
      assert.equal(sample(later, 'secondarymx_spool_messages'), 1);
      assert.ok(sample(later, 'secondarymx_spool_bytes')! > 100);
      assert.ok(sample(later, 'secondarymx_oldest_message_age_seconds')! > 0);
      assert.deepEqual(await get(mx.daemon.monitoringPort, '/healthz'), { status: 200, body: 'ok\n', type: 'text/plain' });
      assert.equal((await get(mx.daemon.monitoringPort, '/nothing')).status, 404);
    } finally {
      await mx.stop();
      await primary.stop();
    }
  });

  it('shows how long the event loop was held: a 300 ms block is in the next scrape, and the one after starts afresh', async () => {
    const mx = await startTestDaemon();
    try {
      await get(mx.daemon.monitoringPort, '/metrics'); // from here on
      const until = Date.now() + 300;
      while (Date.now() < until); // what one message's checks on the daemon's thread do to everybody else
      await new Promise((resolve) => setTimeout(resolve, 60)); // the timer's next run notes it
      const held = (await get(mx.daemon.monitoringPort, '/metrics')).body;
      assert.ok(
        sample(held, 'secondarymx_event_loop_delay_seconds{quantile="max"}')! >= 0.25, // the block, less up to one 50 ms interval
        held
          .split('\n')
          .filter((l) => l.includes('event_loop'))
          .join(' '),
      );
      await new Promise((resolve) => setTimeout(resolve, 120));
      const next = sample((await get(mx.daemon.monitoringPort, '/metrics')).body, 'secondarymx_event_loop_delay_seconds{quantile="max"}')!;
      assert.ok(next < sample(held, 'secondarymx_event_loop_delay_seconds{quantile="max"}')!, `${next}: the block is not counted twice`);
    } finally {
      await mx.stop();
    }
  });

  it("reports the CPU the daemon used (all its threads), its resident memory and its heap, under prom-client's names", async () => {
    const mx = await startTestDaemon();
    try {
      const first = (await get(mx.daemon.monitoringPort, '/metrics')).body;
      const used = process.cpuUsage(); // the daemon runs in this process
      const until = Date.now() + 200;
      while (Date.now() < until); // CPU on this thread (less of it with a busy core beside)
      const spent = process.cpuUsage(used);
      const second = (await get(mx.daemon.monitoringPort, '/metrics')).body;
      const counted = sample(second, 'process_cpu_seconds_total')! - sample(first, 'process_cpu_seconds_total')!;
      assert.ok(counted >= (spent.user + spent.system) / 1e6 - 0.001 && counted > 0.02, `${counted} s counted`);
      assert.ok(sample(second, 'process_resident_memory_bytes')! > 10_000_000);
      assert.ok(sample(second, 'nodejs_heap_size_used_bytes')! > 1_000_000);
      assert.doesNotMatch(second, /^nodejs_gc_duration_seconds/m, 'no GC observer: it cost 8-10 % of the accept rate');
    } finally {
      await mx.stop();
    }
  });

  it('reports the spool gauges right on the first scrape: at start on a non-empty spool, and just after one more message', async () => {
    const spoolDir = mkdtempSync(join(tmpdir(), 'secondarymx-spool-'));
    await queueWaiting(
      spoolDir,
      [0, 1, 2].map((i) => ({ subject: `waiting ${i}`, minutesAgo: 1 })),
    );
    const mx = await startTestDaemon({ spoolDir }); // primary on a closed port: nothing leaves
    try {
      const first = (await get(mx.daemon.monitoringPort, '/metrics')).body;
      assert.equal(sample(first, 'secondarymx_spool_messages'), 3);
      assert.ok(sample(first, 'secondarymx_spool_bytes')! > 300);
      assert.ok(sample(first, 'secondarymx_oldest_message_age_seconds')! >= 59);
      const { client } = await SmtpClient.session(mx.port);
      assert.equal((await client.sendMail('s@remote.example', ['alice@d1.example'], message('one more'))).code, 250);
      await client.quit();
      assert.equal(sample((await get(mx.daemon.monitoringPort, '/metrics')).body, 'secondarymx_spool_messages'), 4);
    } finally {
      await mx.stop();
      rmSync(spoolDir, { recursive: true, force: true });
    }
  });

  it('answers /healthz with 503 and the reason while the directory is incomplete', async () => {
    const mx = await startTestDaemon({ sources: '  - { name: alternc, type: mysql, url: "mysql://mx@127.0.0.1:1/alternc", timeout: 2 }' });
    try {
      assert.deepEqual(await get(mx.daemon.monitoringPort, '/healthz'), {
        status: 503,
        body: 'directory incomplete: never loaded: alternc\n',
        type: 'text/plain',
      });
    } finally {
      await mx.stop();
    }
  });

  it('answers only requests for its own address or localhost (a DNS-rebinding page names its own host)', async () => {
    const mx = await startTestDaemon();
    try {
      const asked = (host: string) =>
        new Promise<number>((resolve, reject) => {
          httpGet({ host: '127.0.0.1', port: mx.daemon.monitoringPort, path: '/metrics', headers: { host } }, (response) => {
            response.resume();
            resolve(response.statusCode!);
          }).on('error', reject);
        });
      const port = mx.daemon.monitoringPort;
      assert.equal(await asked(`rebind.attacker.example:${port}`), 421);
      assert.equal(await asked('127.0.0.2'), 421);
      assert.equal(await asked(`127.0.0.1:${port}`), 200);
      assert.equal(await asked(`LocalHost:${port}`), 200);
    } finally {
      await mx.stop();
    }
  });

  it('refuses a control.listen that is not loopback', () => {
    assert.throws(() => parseConfig(baseConfig('control: { listen: "0.0.0.0:9925" }'), '/x.yaml'), /control\.listen: must be a loopback address/);
    assert.equal(parseConfig(baseConfig('control: { listen: "[::1]:9925" }'), '/x.yaml').control.listen, '[::1]:9925');
  });
});
