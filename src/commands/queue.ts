import { existsSync } from 'node:fs';
import { messageState, type Envelope } from '../spool/envelope.js';
import { Spool } from '../spool/spool.js';

/** `secondarymx queue list`: reads the spool directly, so it works with or without the daemon. */
export async function printQueue(spoolRoot: string, json: boolean): Promise<number> {
  if (!existsSync(spoolRoot)) throw new Error(`spool ${spoolRoot} does not exist (check "spool:" in the config)`);
  const spool = Spool.forReading(spoolRoot);
  const { envelopes, unreadable } = existsSync(spool.queueDir) ? await spool.list() : { envelopes: [], unreadable: [] };
  for (const { id, reason } of unreadable) process.stderr.write(`secondarymx: ${id}: unreadable envelope: ${reason}\n`);
  if (json) {
    const rows = envelopes.map((e) => ({ id: e.id, arrival: e.arrival, size: e.size, sender: e.sender, state: messageState(e), recipients: e.recipients }));
    process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
    return 0;
  }
  process.stdout.write(formatQueue(envelopes));
  return 0;
}

/** postqueue -p style: one block per message, recipients indented under the sender. */
export function formatQueue(envelopes: readonly Envelope[]): string {
  if (envelopes.length === 0) return 'Mail queue is empty\n';
  const lines = ['-Queue ID-          --Size-- ----Arrival Time---- -State-- -Sender/Recipient-------'];
  let bytes = 0;
  for (const envelope of envelopes) {
    bytes += envelope.size;
    const arrival = envelope.arrival.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
    lines.push(
      `${envelope.id} ${String(envelope.size).padStart(8)} ${arrival.padEnd(20)} ${messageState(envelope).padEnd(8)} ${envelope.sender || '<>'}`,
    );
    for (const recipient of envelope.recipients) lines.push(`${' '.repeat(60)}${recipient.address} (${recipient.state})`);
    lines.push('');
  }
  const count = envelopes.length;
  lines.push(`-- ${Math.ceil(bytes / 1024)} Kbytes in ${count} ${count === 1 ? 'message' : 'messages'}.`);
  return `${lines.join('\n')}\n`;
}
