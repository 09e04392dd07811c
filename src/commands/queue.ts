import { viaDaemonOr } from './via-daemon.js';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import type { Config } from '../config/schema.js';
import { editMany, editQueued, type BulkEditResult, type QueueEdit } from '../spool/edit.js';
import { formatShape, queueShape, selects, type QueueSelection } from '../spool/select.js';
import { EX_TEMPFAIL, EX_USAGE } from '../exit-codes.js';
import { deliveredSize, messageState, type Envelope } from '../spool/envelope.js';
import { QUEUE_ID } from '../spool/queue-id.js';
import { Spool } from '../spool/spool.js';

/**
 * The queued messages a selection picks (all of them without one), oldest first, read from
 * the spool directly, with or without the daemon: streamed, so that a 200,000-message
 * queue is never held whole.
 */
async function* selected(spoolRoot: string, selection: QueueSelection): AsyncGenerator<Envelope> {
  if (!existsSync(spoolRoot)) throw new Error(`spool ${spoolRoot} does not exist (check "spool:" in the config)`);
  const spool = Spool.forReading(spoolRoot);
  if (!existsSync(spool.queueDir)) return;
  const now = Date.now();
  for await (const item of spool.each()) {
    if (!('envelope' in item)) process.stderr.write(`secondarymx: ${item.id}: unreadable envelope: ${item.reason}\n`);
    else if (selects(selection, item.envelope, now)) yield item.envelope;
  }
}

/** Writes to stdout, waiting when the reader is slower (a listing piped to less). */
async function out(text: string): Promise<void> {
  if (!process.stdout.write(text)) await new Promise((resolve) => process.stdout.once('drain', resolve));
}

/** `secondarymx queue list [selection]`: one block (or JSON object) per message as it is read. */
export async function printQueue(spoolRoot: string, json: boolean, selection: QueueSelection = {}): Promise<number> {
  let count = 0;
  let bytes = 0;
  for await (const envelope of selected(spoolRoot, selection)) {
    if (json) {
      const row = {
        id: envelope.id,
        arrival: envelope.arrival,
        size: deliveredSize(envelope),
        sender: envelope.sender,
        state: messageState(envelope),
        ...(envelope.heldReason ? { heldReason: envelope.heldReason } : {}),
        recipients: envelope.recipients,
      };
      // The same text as JSON.stringify(rows, null, 2), one row at a time.
      await out(`${count === 0 ? '[\n' : ',\n'}${JSON.stringify(row, null, 2).replace(/^/gm, '  ')}`);
    } else await out(printable(`${count === 0 ? `${QUEUE_HEADER}\n` : ''}${queueBlock(envelope)}`)); // line feeds and tabs are not escaped
    count++;
    bytes += deliveredSize(envelope);
  }
  if (json) await out(count === 0 ? '[]\n' : '\n]\n');
  else await out(count === 0 ? 'Mail queue is empty\n' : `-- ${Math.ceil(bytes / 1024)} Kbytes in ${count} ${count === 1 ? 'message' : 'messages'}.\n`);
  return 0;
}

const QUEUE_HEADER = '-Queue ID-          --Size-- ----Arrival Time---- -State-- -Sender/Recipient-------';

/** postqueue -p style: one block per message, recipients indented under the sender. */
function queueBlock(envelope: Envelope): string {
  const arrival = envelope.arrival.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  const lines = [
    `${envelope.id} ${String(deliveredSize(envelope)).padStart(8)} ${arrival.padEnd(20)} ${messageState(envelope).padEnd(8)} ${envelope.sender || '<>'}`,
  ];
  if (envelope.heldReason) lines.push(`${' '.repeat(20)}held by the relay: ${envelope.heldReason}`);
  for (const recipient of envelope.recipients) lines.push(`${' '.repeat(60)}${recipient.address} (${recipient.state})`);
  return `${lines.join('\n')}\n\n`;
}

/** `queue summary [selection]`: Postfix's qshape, recipient domains by age. */
export async function summaryCommand(spoolRoot: string, json: boolean, selection: QueueSelection = {}): Promise<number> {
  const shape = await queueShape(selected(spoolRoot, selection));
  process.stdout.write(json ? `${JSON.stringify(shape, null, 2)}\n` : printable(formatShape(shape)));
  return 0;
}

/** Thrown when a bulk edit needs a confirmation it cannot ask for. */
export class ConfirmationNeeded extends Error {
  readonly exitCode = EX_USAGE;
}

/**
 * `queue hold|release|delete --domain D | --sender S | --recipient R | --older-than T | --all`:
 * shows how many messages match, asks (on a terminal) or wants --yes (elsewhere), then
 * edits each under its lock, through the daemon when it runs.
 */
export async function bulkEditCommand(config: Config, edit: QueueEdit, selection: QueueSelection, yes: boolean): Promise<number> {
  const ids: string[] = [];
  for await (const envelope of selected(config.spool, selection)) ids.push(envelope.id);
  process.stdout.write(`${ids.length} ${ids.length === 1 ? 'message matches' : 'messages match'}\n`);
  if (ids.length === 0) return 0;
  if (!yes) {
    if (!process.stdin.isTTY || !process.stdout.isTTY) throw new ConfirmationNeeded(`not on a terminal: add --yes to ${edit} ${ids.length} messages`);
    if (!(await confirm(`${edit} ${ids.length} messages? [y/N] `))) {
      process.stdout.write('nothing done\n');
      return 0;
    }
  }
  const batches: string[][] = [];
  for (let at = 0; at < ids.length; at += BULK_BATCH) batches.push(ids.slice(at, at + BULK_BATCH));
  const total: BulkEditResult = { edited: 0, gone: 0, busy: [] };
  let route: 'daemon' | 'standalone' | undefined;
  for (const batch of batches) {
    const query = new URLSearchParams([['bulk', '1'], ...batch.map((id): [string, string] => ['id', id])]);
    const { result, via } = await viaDaemonOr(config.spool, `/queue/${edit}?${query}`, async () =>
      editMany(await Spool.forDelivery(config.spool), batch, edit),
    );
    route ??= via;
    total.edited += result.edited;
    total.gone += result.gone;
    total.busy.push(...result.busy);
  }
  const done = edit === 'delete' ? 'deleted' : edit === 'hold' ? 'held' : 'released';
  process.stdout.write(
    `queue ${edit} (${route}): ${total.edited} ${done}, ${total.gone} gone meanwhile, ${total.busy.length} being delivered` +
      `${total.busy.length ? ` (try again: ${total.busy.join(' ')})` : ''}\n`,
  );
  return total.busy.length > 0 ? EX_TEMPFAIL : 0;
}

/** Messages per call to the daemon in a bulk edit. */
const BULK_BATCH = 500;

async function confirm(question: string): Promise<boolean> {
  const input = createInterface({ input: process.stdin, output: process.stdout });
  const answer = await new Promise<string>((resolve) => input.question(question, resolve));
  input.close();
  return /^y(es)?$/i.test(answer.trim());
}

/** `queue hold|release|delete ID`: through the daemon (so it re-indexes), or on the spool directly. */
export async function editCommand(config: Config, edit: QueueEdit, id: string): Promise<number> {
  await viaDaemonOr(config.spool, `/queue/${edit}?id=${encodeURIComponent(id)}`, async () => editQueued(await Spool.forDelivery(config.spool), id, edit));
  process.stdout.write(`${id}: ${edit === 'delete' ? 'deleted' : edit === 'hold' ? 'held' : 'released'}\n`);
  return 0;
}

/** `queue show ID`: the envelope, each recipient's state and last reply, and the message headers. */
export async function showCommand(config: Config, id: string, json: boolean): Promise<number> {
  if (!QUEUE_ID.test(id)) throw new Error(`${JSON.stringify(id)} is not a queue id`);
  const spool = Spool.forReading(config.spool);
  const envelope = await spool.readEnvelope(id).catch((error: NodeJS.ErrnoException) => {
    throw new Error(error.code === 'ENOENT' ? `${id}: no such message in the queue` : error.message);
  });
  const headers = await readHeaders(spool.openMessage(envelope));
  if (json) {
    process.stdout.write(`${JSON.stringify({ ...envelope, state: messageState(envelope), headers }, null, 2)}\n`);
    return 0;
  }
  const lines = [
    `id:          ${envelope.id} (${messageState(envelope)})`,
    `arrival:     ${envelope.arrival}`,
    `size:        ${deliveredSize(envelope)}`,
    `sender:      ${envelope.sender || '<>'}`,
    `client:      ${envelope.client.address} (${envelope.client.helo})`,
    `attempts:    ${envelope.deferrals ?? 0} deferred; last ${envelope.lastAttempt ?? 'never'}; next ${envelope.held ? 'held' : (envelope.nextAttempt ?? 'now')}`,
    ...(envelope.heldReason ? [`held:        ${envelope.heldReason}`] : []),
    'recipients:',
    ...envelope.recipients.map((r) => `  ${r.address} (${r.state})${r.reply ? ` ${r.reply}` : ''}`),
    'headers:',
    ...headers.map((line) => `  ${line}`),
  ];
  process.stdout.write(`${lines.map(printable).join('\n')}\n`);
  return 0;
}

/**
 * A line safe for a terminal: control characters (ESC sequences that retitle or clear
 * it) and bidirectional overrides (U+202E turning text around) from a sender's HELO,
 * addresses or headers are shown escaped, never interpreted. JSON output stays exact.
 */
export function printable(line: string): string {
  return line.replace(
    /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

async function readHeaders(message: Readable): Promise<string[]> {
  const lines: string[] = [];
  const input = createInterface({ input: message.setEncoding('utf8'), crlfDelay: Infinity });
  for await (const line of input) {
    if (line === '' || lines.length >= 200) break;
    lines.push(line);
  }
  input.close();
  message.destroy();
  return lines;
}
