import { existsSync } from 'node:fs';
import type { Config } from '../config/schema.js';
import { callDaemon } from '../control/client.js';
import type { StatusReport } from '../control/status.js';
import { directoryStore } from '../directory/store.js';
import { Spool } from '../spool/spool.js';
import { formatTable, shortTime } from './table.js';

/** `secondarymx status`: from the running daemon, or from the spool when none runs. */
export async function statusCommand(config: Config, json: boolean): Promise<number> {
  const report = (await callDaemon<StatusReport>(config.spool, 'GET', '/status')) ?? (await offlineStatus(config));
  process.stdout.write(json ? `${JSON.stringify(report, null, 2)}\n` : formatStatus(report));
  return 0;
}

async function offlineStatus(config: Config): Promise<StatusReport> {
  if (!existsSync(config.spool)) throw new Error(`spool ${config.spool} does not exist (check "spool:" in the config)`);
  const state = await directoryStore(config.spool).loadState();
  return {
    daemon: { running: false },
    sources: config.sources.map((source) => ({ name: source.name, ...(state[source.name] ?? { domains: 0, addresses: 0 }), type: source.type })),
    spool: await Spool.forReading(config.spool).summary(),
  };
}

export function formatStatus(report: StatusReport): string {
  const { daemon, directory, spool } = report;
  const lines = [
    daemon.running
      ? `daemon: running (pid ${daemon.pid}) since ${shortTime(daemon.startedAt)}, listening on ${daemon.listen?.join(', ')}`
      : 'daemon: not running',
  ];
  if (directory) {
    const state = directory.complete ? 'complete' : `incomplete: never loaded: ${directory.missingSources.join(', ')}`;
    lines.push(`directory: ${directory.domains} domains, ${directory.addresses} addresses (${state})`);
    for (const c of directory.conflicts) lines.push(`conflict: ${c.domain} is listed by ${c.keptBy} and ${c.claimedBy}; ${c.keptBy} keeps it`);
  }
  for (const p of report.primaries ?? []) lines.push(`primary ${p.primary}: ${p.up ? 'UP' : 'DOWN (probing)'}`);
  if (report.delivery) lines.push(`delivery: ${report.delivery}`);
  lines.push(`spool: ${spool.messages} ${spool.messages === 1 ? 'message' : 'messages'}, ${Math.ceil(spool.bytes / 1024)} KB`, '');
  const rows = report.sources.map((s) => [s.name, s.type, s.domains, s.addresses, shortTime(s.lastSuccess), shortTime(s.lastAttempt), describeSource(s)]);
  return lines.join('\n') + formatTable(['source', 'type', 'domains', 'addresses', 'last success', 'last attempt', 'state'], rows);
}

function describeSource(source: StatusReport['sources'][number]): string {
  const skipped = source.skipped ? ` (${source.skipped} rows left out as not valid)` : '';
  if (source.lastError) return `failing: ${source.lastError}`;
  if (source.held) return `held: ${source.held}${skipped}`;
  if (source.condition === 'stale') return `stale: no successful pull since ${shortTime(source.lastSuccess)}${skipped}`;
  return `ok${skipped}`;
}
