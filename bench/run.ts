/*
 * `npm run bench`: every benchmark on loopback against the built daemon; one line per
 * figure, and bench/last-run.json for comparison across commits.
 * BENCH_ONLY=accept|relay|sync|memory runs one group.
 */
import { writeFileSync } from 'node:fs';
import { acceptBenchmarks } from './accept.js';
import type { Figure } from './figures.js';
import { memoryBenchmarks } from './memory.js';
import { relayBenchmarks } from './relay.js';
import { syncBenchmarks } from './sync.js';

const groups: Record<string, (report: (figure: Figure) => void) => Promise<void>> = { accept: acceptBenchmarks, relay: relayBenchmarks, sync: syncBenchmarks, memory: memoryBenchmarks };

async function main(): Promise<void> {
  const figures: Figure[] = [];
  const report = (figure: Figure) => {
    figures.push(figure);
    const params = Object.entries(figure.parameters).map(([k, v]) => `${k}=${v}`).join(' ');
    console.log(`${figure.name}: ${figure.value.toFixed(figure.value < 10 ? 2 : 0)} ${figure.unit} (${params})`);
  };
  const only = process.env.BENCH_ONLY;
  for (const [name, run] of Object.entries(groups)) if (!only || only === name) await run(report);
  const out = new URL('./last-run.json', import.meta.url).pathname;
  writeFileSync(out, `${JSON.stringify({ date: new Date().toISOString(), figures }, null, 2)}\n`);
  console.log('figures written to bench/last-run.json');
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
