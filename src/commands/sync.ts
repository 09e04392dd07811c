import { viaDaemonOr } from './via-daemon.js';
import type { Config } from '../config/schema.js';
import { Syncer, type SyncReport } from '../directory/sync.js';
import { createCliLogger } from '../log.js';
import { directoryStore } from '../directory/store.js';
import { EX_TEMPFAIL } from '../exit-codes.js';
import { withProgress } from './progress.js';
import { formatTable } from './table.js';

/** `secondarymx sync [--force]`: through the running daemon, or on its own when none runs. */
export async function syncCommand(config: Config, options: { force: boolean; json: boolean }): Promise<number> {
  const progress = (elapsed: number) => `syncing ${config.sources.length} source(s)… ${elapsed.toFixed(0)} s`;
  const { result: report, via } = await viaDaemonOr(
    config.spool,
    `/sync${options.force ? '?force=1' : ''}`,
    async () => {
      const syncer = await Syncer.open(config, directoryStore(config.spool), createCliLogger('error'), () => undefined);
      return withProgress(syncer.run({ force: options.force }), progress);
    },
    (work) => withProgress(work, progress),
  );
  process.stdout.write(options.json ? `${JSON.stringify({ via, ...report }, null, 2)}\n` : formatSync(report, via));
  return report.sources.every((source) => source.result === 'updated') ? 0 : EX_TEMPFAIL;
}

export function formatSync(report: SyncReport, via: string): string {
  const rows = report.sources.map((s) => [
    s.name,
    s.type,
    s.result,
    s.domains,
    s.addresses,
    `+${s.added.domains}/-${s.removed.domains}`,
    `+${s.added.addresses}/-${s.removed.addresses}`,
    [s.reason ? `${s.result === 'held' ? 'held' : 'kept old data'}: ${s.reason}` : '', s.skipped ? `${s.skipped.length} rows left out: ${s.skipped[0]}` : '']
      .filter(Boolean)
      .join('; '),
  ]);
  const { directory } = report;
  const summary =
    `sync (${via}${report.forced ? ', forced' : ''}): directory ${directory.domains} domains, ${directory.addresses} addresses` +
    `${directory.complete ? '' : ' (incomplete: a source has never loaded)'}\n`;
  const conflicts = directory.conflicts.map((c) => `conflict: ${c.domain} is listed by ${c.keptBy} and ${c.claimedBy}; ${c.keptBy} keeps it\n`);
  return summary + formatTable(['source', 'type', 'result', 'domains', 'addresses', 'domains±', 'addresses±', 'note'], rows) + conflicts.join('');
}
