import { request } from 'node:http';
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

interface CheckReply {
  action?: string;
  score?: number;
  required_score?: number;
  messages?: { smtp_message?: string };
  milter?: { add_headers?: Record<string, string | { value: string } | Array<string | { value: string }>> };
}

/** rspamd could not give a verdict (down, slow, or an answer we cannot read). */
export class RspamdUnavailable extends Error {}

const SPAM_ACTIONS = new Set(['add header', 'rewrite subject', 'reject']);

/** One check of a message over rspamd's HTTP protocol (the same as its milter and proxy use). */
export async function rspamdCheck(options: RspamdOptions, envelope: RspamdEnvelope, message: Readable): Promise<RspamdVerdict> {
  const answer = await post(options, envelope, message);
  let parsed: CheckReply;
  try {
    parsed = JSON.parse(answer) as CheckReply;
  } catch {
    throw new RspamdUnavailable(`not JSON: ${answer.slice(0, 80)}`);
  }
  const action = parsed.action;
  if (typeof action !== 'string') throw new RspamdUnavailable('no action in its answer');
  const score = Number(parsed.score ?? 0);
  const said = oneLine(parsed.messages?.smtp_message ?? '');
  let reply: SmtpReply | undefined;
  if (action === 'reject') reply = new SmtpReply(550, '5.7.1', said || 'Message rejected as spam');
  else if (action === 'soft reject' || action === 'greylist') reply = new SmtpReply(451, '4.7.1', said || 'Try again later');
  const headers = [`X-Rspamd-Action: ${action}`, `X-Rspamd-Score: ${score.toFixed(2)} / ${Number(parsed.required_score ?? 0).toFixed(2)}`];
  if (action === 'add header' || action === 'rewrite subject') headers.push('X-Spam: Yes');
  for (const [name, values] of Object.entries(parsed.milter?.add_headers ?? {})) {
    if (!/^[\x21-\x39\x3b-\x7e]+$/.test(name)) continue;
    for (const value of [values].flat()) headers.push(`${name}: ${oneLine(typeof value === 'string' ? value : value.value)}`);
  }
  return { action, score, reply, headers: headers.map((line) => `${line}\r\n`).join(''), spam: SPAM_ACTIONS.has(action) };
}

function post(options: RspamdOptions, envelope: RspamdEnvelope, message: Readable): Promise<string> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | string[]> = {
      IP: unmapped(envelope.ip),
      Helo: headerSafe(envelope.helo),
      From: headerSafe(envelope.sender),
      Rcpt: envelope.recipients.map(headerSafe),
      'Queue-Id': envelope.queueId,
      'MTA-Name': envelope.hostname,
    };
    if (!envelope.helo) delete headers.Helo;
    const sent = request(new URL('/checkv2', options.url), { method: 'POST', headers, timeout: options.timeout * 1000 }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('error', (error) => reject(new RspamdUnavailable(error.message)));
      response.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        if (response.statusCode !== 200) reject(new RspamdUnavailable(`HTTP ${response.statusCode}: ${body.slice(0, 80)}`));
        else resolve(body);
      });
    });
    const timer = setTimeout(() => sent.destroy(new RspamdUnavailable(`no answer within ${options.timeout} s`)), options.timeout * 1000);
    sent.on('close', () => clearTimeout(timer));
    sent.on('error', (error) => reject(error instanceof RspamdUnavailable ? error : new RspamdUnavailable(error.message)));
    message.on('error', (error) => sent.destroy(new RspamdUnavailable(`reading the message: ${error.message}`)));
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
