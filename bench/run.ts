/*
 * `npm run bench`: every benchmark on loopback against the built daemon; one line per
 * figure, and bench/last-run.json for comparison across commits.
 * BENCH_ONLY=inspect|accept|relay|sync|memory|verify|hostile runs one group.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { acceptBenchmarks } from './accept.js';
import { fileCreateCost, printingReport, removeLeftovers, type Figure } from './figures.js';
import { hostileBenchmarks } from './hostile.js';
import { inspectBenchmarks } from './inspect.js';
import { memoryBenchmarks } from './memory.js';
import { relayBenchmarks } from './relay.js';
import { syncBenchmarks } from './sync.js';
import { verifyBenchmarks } from './verify.js';

const groups: Record<string, (report: (figure: Figure) => void) => Promise<void>> = {
  inspect: inspectBenchmarks,
  accept: acceptBenchmarks,
  relay: relayBenchmarks,
  sync: syncBenchmarks,
  memory: memoryBenchmarks,
  verify: verifyBenchmarks,
  hostile: hostileBenchmarks,
};

/*
 * The cases' spools go under bench/.tmp, not /tmp: on ext4 without a journal (this
 * machine's kind) creating a file costs 0.4-1 ms of kernel CPU instead of ~30 µs while
 * its block group holds inodes deleted in the last minutes (ext4's recently_deleted
 * scan), and /tmp's group is where npm test deletes thousands of files. The first
 * figure printed is that cost, measured where the cases run.
 */
process.env.TMPDIR ??= (() => {
  const dir = new URL('./.tmp', import.meta.url).pathname;
  mkdirSync(dir, { recursive: true });
  return dir;
})();

async function main(): Promise<void> {
  const figures: Figure[] = [];
  const report = printingReport(figures);
  const only = process.env.BENCH_ONLY;
  report({ name: 'disk: file creation', value: fileCreateCost(), unit: 'µs CPU/file', parameters: { tmpdir: process.env.TMPDIR ?? '' } });
  try {
    for (const [name, run] of Object.entries(groups)) if (!only || only === name) await run(report);
  } finally {
    removeLeftovers();
  }
  const out = new URL('./last-run.json', import.meta.url).pathname;
  writeFileSync(out, `${JSON.stringify({ date: new Date().toISOString(), figures }, null, 2)}\n`);
  console.log('figures written to bench/last-run.json');
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
