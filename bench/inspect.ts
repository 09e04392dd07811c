/*
 * The header scan of DATA (receive/inspect.ts) against a hostile client: a 260 KB
 * header in segments from 2 KB down to 32 bytes (a client can choose how its bytes are
 * cut). The CPU it takes should not grow as the segments shrink.
 */
import { MessageInspector } from '../src/receive/inspect.js';
import type { Report } from './figures.js';

export async function inspectBenchmarks(report: Report): Promise<void> {
  const data = Buffer.from(`X-A: ${'b'.repeat(70)}\r\n`.repeat(Math.ceil((260 * 1024) / 77)));
  for (const segment of [2048, 32]) {
    const started = process.cpuUsage();
    const inspector = new MessageInspector({ messageSize: 1e9, hops: 50, headerSize: 256 * 1024 });
    for (let at = 0; at < data.length; at += segment) inspector.inspect(data.subarray(at, at + segment));
    inspector.finish();
    const used = process.cpuUsage(started);
    report({
      name: 'header scan',
      value: (used.user + used.system) / 1000,
      unit: 'ms CPU',
      parameters: { header: `${Math.round(data.length / 1024)}KB`, segment },
    });
  }
}
