import { request } from 'node:http';
import { z } from 'zod';
import type { Readable } from 'node:stream';
import { SmtpReply } from '../receive/replies.js';
import { unmapped } from '../net/ip.js';

export interface RspamdOptions {
  /** The normal worker, e.g. http://127.0.0.1:11333 (its /checkv2). */
  url: string;
  /** Seconds for the whole check. */
  timeout: number;
}

export interface RspamdEnvelope {
  ip: string;
  helo: string;
  sender: string;
  recipients: readonly string[];
  queueId: string;
  hostname: string;
}

export interface RspamdVerdict {
  action: string;
  score: number;
  /** The refusal its action asks for: reject → 550 5.7.1, soft reject and greylist → 451 4.7.1. */
  reply?: SmtpReply;
  /** Header lines for the stored message, CRLF-terminated. */
  headers: string;
  /** Scored as spam (add header, rewrite subject, reject): never bounced to its sender. */
  spam: boolean;
}

/** What we read of rspamd's answer (other fields are ignored); anything else is no verdict. */
const headerValue = z.union([z.string(), z.object({ value: z.string() })]);
const answerSchema = z.object({
  action: z.string().min(1).max(64),
  score: z.number().optional(),
  required_score: z.number().optional(),
  messages: z.object({ smtp_message: z.string().optional() }).optional(),
  milter: z.object({ add_headers: z.record(z.string(), z.union([headerValue, z.array(headerValue)])).optional() }).optional(),
});

/** Why rspamd gave no verdict: for the log line and the metric. */
export type RspamdFailure = 'unreachable' | 'timeout' | 'http_error' | 'bad_answer';

/** rspamd could not give a verdict (down, slow, or an answer we cannot read). */
export class RspamdUnavailable extends Error {
  constructor(
    readonly failure: RspamdFailure,
    message: string,
  ) {
    super(message);
  }
}

const SPAM_ACTIONS = new Set(['add header', 'rewrite subject', 'reject']);
/** Bytes of an answer read at most: a verdict with all its symbols and milter headers is a few KB. */
export const MAX_ANSWER_BYTES = 1024 * 1024;
/**
 * Bytes of our request's headers at most: rspamd's HTTP parser refuses a request whose
 * headers pass 80 KB (http_parser's HTTP_MAX_HEADER_SIZE), which we must never cause.
 */
const MAX_REQUEST_HEADER_BYTES = 32 * 1024;
/** Recipients named to rspamd (one Rcpt header each), the first of the message's. */
export const MAX_RSPAMD_RECIPIENTS = 100;
/** Header fields taken from rspamd's milter add_headers, and the bytes of a name. */
const MAX_MILTER_HEADERS = 50;
const MAX_NAME = 64;

/** One check of a message over rspamd's HTTP protocol (the same as its milter and proxy use). */
export async function rspamdCheck(options: RspamdOptions, envelope: RspamdEnvelope, message: Readable): Promise<RspamdVerdict> {
  const answer = await post(options, envelope, message);
  let json: unknown;
  try {
    json = JSON.parse(answer);
  } catch {
    throw new RspamdUnavailable('bad_answer', `not JSON: ${JSON.stringify(answer.slice(0, 80))}`);
  }
  const checked = answerSchema.safeParse(json);
  if (!checked.success)
    throw new RspamdUnavailable(
      'bad_answer',
      `an answer of the wrong shape: ${checked.error.issues[0]?.path.join('.') || 'the answer'}: ${checked.error.issues[0]?.message}`,
    );
  const parsed = checked.data;
  const action = parsed.action;
  const score = parsed.score ?? 0;
  const said = oneLine(parsed.messages?.smtp_message ?? '');
  let reply: SmtpReply | undefined;
  if (action === 'reject') reply = new SmtpReply(550, '5.7.1', said || 'Message rejected as spam');
  else if (action === 'soft reject' || action === 'greylist') reply = new SmtpReply(451, '4.7.1', said || 'Try again later');
  const headers = [`X-Rspamd-Action: ${oneLine(action)}`, `X-Rspamd-Score: ${score.toFixed(2)} / ${(parsed.required_score ?? 0).toFixed(2)}`];
  if (action === 'add header' || action === 'rewrite subject') headers.push('X-Spam: Yes');
  const milter = Object.entries(parsed.milter?.add_headers ?? {}).filter(([name]) => name.length <= MAX_NAME && /^[\x21-\x39\x3b-\x7e]+$/.test(name));
  for (const [name, values] of milter.slice(0, MAX_MILTER_HEADERS)) {
    for (const value of [values].flat().slice(0, 5)) headers.push(`${name}: ${oneLine(typeof value === 'string' ? value : value.value)}`);
  }
  return { action, score, reply, headers: headers.map((line) => `${line}\r\n`).join(''), spam: SPAM_ACTIONS.has(action) };
}

/** The request's headers: the envelope, within MAX_REQUEST_HEADER_BYTES whatever the client sent (HELO and sender shortened, recipients capped). */
export function requestHeaders(envelope: RspamdEnvelope): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = {
    IP: unmapped(envelope.ip),
    'Queue-Id': envelope.queueId,
    'MTA-Name': envelope.hostname,
  };
  if (envelope.helo) headers.Helo = headerSafe(envelope.helo).slice(0, 255);
  const from = headerSafe(envelope.sender);
  if (from.length <= 1024) headers.From = from; // longer is no address; rspamd reads the message's own From then
  let budget = MAX_REQUEST_HEADER_BYTES - Object.entries(headers).reduce((sum, [name, value]) => sum + name.length + String(value).length + 4, 0);
  const rcpt: string[] = [];
  for (const address of envelope.recipients.slice(0, MAX_RSPAMD_RECIPIENTS)) {
    const value = headerSafe(address);
    budget -= value.length + 'Rcpt: \r\n'.length;
    if (budget < 0) break;
    rcpt.push(value);
  }
  headers.Rcpt = rcpt;
  return headers;
}

function post(options: RspamdOptions, envelope: RspamdEnvelope, message: Readable): Promise<string> {
  return new Promise((resolve, reject) => {
    const sent = request(
      new URL('/checkv2', options.url),
      { method: 'POST', headers: requestHeaders(envelope), timeout: options.timeout * 1000 },
      (response) => {
        const chunks: Buffer[] = [];
        let bytes = 0;
        response.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes <= MAX_ANSWER_BYTES) chunks.push(chunk);
          else sent.destroy(new RspamdUnavailable('bad_answer', `an answer over ${MAX_ANSWER_BYTES} bytes`));
        });
        response.on('error', (error) => reject(error instanceof RspamdUnavailable ? error : new RspamdUnavailable('unreachable', error.message)));
        response.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8');
          if (response.statusCode !== 200) reject(new RspamdUnavailable('http_error', `HTTP ${response.statusCode}: ${JSON.stringify(body.slice(0, 80))}`));
          else resolve(body);
        });
      },
    );
    const timer = setTimeout(() => sent.destroy(new RspamdUnavailable('timeout', `no answer within ${options.timeout} s`)), options.timeout * 1000);
    sent.on('close', () => clearTimeout(timer));
    sent.on('error', (error) => reject(error instanceof RspamdUnavailable ? error : new RspamdUnavailable('unreachable', error.message)));
    message.on('error', (error) => sent.destroy(new RspamdUnavailable('unreachable', `reading the message: ${error.message}`)));
    message.pipe(sent);
  });
}

/** A value that cannot end a header line early, its UTF-8 bytes as they are (node's HTTP headers are Latin-1). */
function headerSafe(value: string): string {
  return Buffer.from(value.replace(/[\r\n]/g, ' '), 'utf8').toString('latin1');
}

/** A reply or header value on one line, without control characters. */
function oneLine(text: string): string {
  return text
    .replace(/[\x00-\x1f\x7f]+/g, ' ')
    .trim()
    .slice(0, 400);
}
