import { viaDaemonOr } from './via-daemon.js';
import type { Config } from '../config/schema.js';
import { createCliLogger } from '../log.js';
import type { FlushFilter } from '../relay/relay.js';
import { Spool } from '../spool/spool.js';
import { withProgress } from './progress.js';
import { EX_TEMPFAIL } from '../exit-codes.js';

/**
 * `secondarymx flush [--domain D] [--id ID]`: attempt delivery now, ignoring backoff,
 * through the running daemon, or by this process when none runs (message locks keep
 * two deliverers off the same message either way).
 */
export async function flushCommand(config: Config, filter: FlushFilter, json: boolean): Promise<number> {
  const query = new URLSearchParams(Object.entries(filter).filter((pair): pair is [string, string] => Boolean(pair[1])));
  const spool = Spool.forReading(config.spool);
  const before = (await spool.summary()).messages;
  const progress = async (elapsed: number) => {
    const left = (await spool.summary()).messages;
    return `flushing: ${left} messages left, ${((before - left) / elapsed).toFixed(0)} messages/s, ${elapsed.toFixed(0)} s`;
  };
  const { result: report, via } = await viaDaemonOr(
    config.spool,
    `/flush?${query}`,
    async () => {
      // Loaded only here: the relay (and the DSN writer's mail parsing) is most of this command's start-up, and the daemon usually answers.
      const { Relay } = await import('../relay/relay.js');
      const relay = new Relay(config, await Spool.forDelivery(config.spool), createCliLogger('warn'), false);
      await relay.load();
      try {
        return await withProgress(relay.flush(filter), progress);
      } finally {
        await relay.stop();
      }
    },
    (work) => withProgress(work, progress),
  );
  process.stdout.write(
    json
      ? `${JSON.stringify({ via, ...report }, null, 2)}\n`
      : `flush (${via}): ${report.messages} messages: ${report.delivered} recipients delivered, ${report.deferred} deferred, ` +
          `${report.failed} failed; ${report.unreachable} messages not attempted (primary unreachable), ${report.busy} busy elsewhere\n`,
  );
  return report.unreachable > 0 || report.busy > 0 ? EX_TEMPFAIL : 0; // something is left to try later
}
