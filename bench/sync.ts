/*
 * Sync benchmark: an AlternC-shaped database in the local MariaDB with 100,000 domains
 * and 1,000,000 addresses (BENCH_SYNC_DOMAINS, 10 addresses each), synced by the real
 * daemon: the first sync at start, a second one through `secondarymx sync`, and a
 * restart from the persisted list.
 */
import { runCli, spawnDaemon } from '../test/helpers/cli.js';
import { baseConfig, writeTestConfig } from '../test/helpers/daemon.js';
import { AlternCDatabase } from '../test/helpers/mysql.js';
import type { SyncReport } from '../src/directory/sync.js';
import { peakRssMb, removeAfterRun, rssMb, type Report } from './figures.js';

const ADDRESSES_PER_DOMAIN = 10;
const BATCH = 10_000;

async function populate(db: AlternCDatabase, domains: number): Promise<void> {
  for (let first = 1; first <= domains; first += BATCH) {
    const ids = Array.from({ length: Math.min(BATCH, domains - first + 1) }, (_, i) => first + i);
    await db.execute('INSERT INTO {db}.domaines (id, domaine, gesmx, dns_action) VALUES ?', [ids.map((id) => [id, `d${id}.bench.example`, 1, 'OK'])]);
    const rows = ids.flatMap((id) => Array.from({ length: ADDRESSES_PER_DOMAIN }, (_, n) => [id, n === 0 ? '' : `user${n}.name`]));
    await db.execute('INSERT INTO {db}.address (domain_id, address) VALUES ?', [rows]);
  }
}

export async function syncBenchmarks(report: Report): Promise<void> {
  const domains = Number(process.env.BENCH_SYNC_DOMAINS ?? 100_000);
  const db = await AlternCDatabase.create({ domainColumn: 255 });
  const { dir, file } = writeTestConfig(baseConfig('', `  - { name: alternc, type: mysql, url: "${db.url()}", timeout: 60 }`));
  const parameters = { domains, addresses: domains * ADDRESSES_PER_DOMAIN, source: 'mysql (local MariaDB)' };
  try {
    const filling = Date.now();
    await populate(db, domains);
    console.error(`(populated MariaDB in ${((Date.now() - filling) / 1000).toFixed(1)} s)`);

    let daemon = await spawnDaemon(file);
    const first = daemon.logs.find((line) => line.msg === 'source synced');
    report({ name: 'sync first', value: Number(first?.ms) / 1000, unit: 's', parameters });
    report({ name: 'sync first rss', value: rssMb(daemon.child.pid!), unit: 'MB RSS after', parameters });
    const again = await runCli(['sync', '--json', '--config', file]);
    const second = (JSON.parse(again.stdout) as SyncReport).sources[0];
    report({ name: 'sync again', value: second.durationMs / 1000, unit: 's', parameters });
    report({ name: 'sync again rss', value: rssMb(daemon.child.pid!), unit: 'MB RSS after', parameters });
    report({ name: 'sync peak rss', value: peakRssMb(daemon.child.pid!), unit: 'MB peak RSS', parameters });
    daemon.child.kill('SIGTERM');
    await daemon.exited;

    const start = Date.now();
    daemon = await spawnDaemon(file); // resolves after the start-up sync; "listening" comes first
    const listening = daemon.logs.find((line) => line.event === 'listening');
    const starting = daemon.logs.find((line) => line.msg === 'starting');
    report({
      name: 'start from persisted directory',
      value: (Date.parse(String(listening?.time)) - Date.parse(String(starting?.time))) / 1000,
      unit: 's to listening',
      parameters: { ...parameters, wallClockToFirstSyncDone: `${((Date.now() - start) / 1000).toFixed(1)}s` },
    });
    daemon.child.kill('SIGTERM');
    await daemon.exited;
  } finally {
    await db.drop();
    removeAfterRun(dir);
  }
}
