import { headerFields, type HeaderField } from './header-fields.js';
import { SmtpReply } from './replies.js';

const CR = 0x0d;
const LF = 0x0a;
const HEADER_END = Buffer.from('\r\n\r\n');

export interface InspectorLimits {
  /** Bytes the stored message may have, our Received header included: what the primary will be sent. */
  messageSize: number;
  hops: number;
  /** Bytes of the header block: every field is read (and judged) before the 250, so its size is bounded. */
  headerSize: number;
}

/**
 * Watches the DATA bytes as they stream to disk, without holding the message:
 * counts the size, refuses bare CR or LF (only CRLF may end a line, so nothing
 * after a lone LF can be read as a second message by the primary: SMTP smuggling),
 * and reads the header block for the Received count and the Message-ID.
 */
export class MessageInspector {
  size = 0;
  messageId: string | undefined;
  /**
   * The header block (and the blank line after it) when it holds no DKIM or ARC
   * signature: all that DKIM, ARC and DMARC need of such a message, without its body.
   */
  unsignedHeader: Buffer | undefined;
  /** The header fields as received, their offsets in the stored file (our Received header first). */
  fields: HeaderField[] = [];
  private afterCR = false;
  private header: Buffer[] = [];
  private headerBytes = 0;
  /** The last bytes of the header seen so far (at most 3). */
  private tail = Buffer.alloc(0);
  private headerDone = false;
  private refusal: SmtpReply | undefined;

  /** `stored`: bytes the spool holds before the data (our Received header); they count against the size limit. */
  constructor(
    private readonly limits: InspectorLimits,
    private readonly stored = 0,
  ) {}

  /** The first reason to refuse the message, once there is one; it never goes away. */
  get problem(): SmtpReply | undefined {
    return this.refusal;
  }

  inspect(chunk: Buffer): void {
    this.size += chunk.length;
    if (this.refusal) return; // only the byte count matters any more
    if (this.stored + this.size > this.limits.messageSize) {
      this.refuse(new SmtpReply(552, '5.3.4', `Message size exceeds fixed limit of ${this.limits.messageSize} bytes`));
    } else if (chunk.includes(0)) {
      this.refuse(new SmtpReply(550, '5.6.0', 'NUL character in message data'));
    } else if (this.hasBareLineEnding(chunk)) {
      this.refuse(new SmtpReply(550, '5.6.0', 'Bare CR or LF in message data: lines must end with CRLF'));
    } else if (!this.headerDone) {
      this.captureHeader(chunk);
    }
  }

  /** Call at the end of DATA: checks what needs the whole message. */
  finish(): void {
    if (this.refusal) return;
    if (this.afterCR) {
      this.refuse(new SmtpReply(550, '5.6.0', 'Bare CR or LF in message data: lines must end with CRLF'));
      return;
    }
    if (!this.headerDone) this.endHeader(Buffer.concat(this.header));
  }

  private refuse(reply: SmtpReply): void {
    this.refusal = reply;
    this.header = [];
  }

  /** Every LF must follow a CR and every CR precede an LF, across chunk boundaries. */
  private hasBareLineEnding(chunk: Buffer): boolean {
    let lineFeeds = 0;
    for (let at = chunk.indexOf(LF); at !== -1; at = chunk.indexOf(LF, at + 1)) {
      const precededByCR = at === 0 ? this.afterCR : chunk[at - 1] === CR;
      if (!precededByCR) return true;
      lineFeeds++;
    }
    let carriageReturns = this.afterCR ? 1 : 0;
    for (let at = chunk.indexOf(CR); at !== -1; at = chunk.indexOf(CR, at + 1)) carriageReturns++;
    this.afterCR = chunk.length > 0 ? chunk[chunk.length - 1] === CR : this.afterCR;
    // Each LF consumed one CR; what is left is at most the CR ending this chunk.
    return carriageReturns - lineFeeds !== (this.afterCR ? 1 : 0);
  }

  /**
   * Looks for the blank line that ends the header in the new bytes only (plus the last
   * three of what came before, for a CRLFCRLF split across chunks), and joins the
   * chunks once at the end: the work is linear in the header, whatever the chunking.
   */
  private captureHeader(chunk: Buffer): void {
    const before = this.headerBytes;
    const tail = this.tail;
    this.header.push(chunk);
    this.headerBytes += chunk.length;
    this.tail = Buffer.concat([tail, chunk.subarray(Math.max(0, chunk.length - 3))]).subarray(-3);
    let end = -1;
    if (before === 0 && chunk.subarray(0, 2).equals(HEADER_END.subarray(0, 2)))
      end = 0; // no header at all
    else {
      const found = Buffer.concat([tail, chunk]).indexOf(HEADER_END);
      if (found !== -1) end = before - tail.length + found;
    }
    if (end === -1 ? this.headerBytes <= this.limits.headerSize : end <= this.limits.headerSize) {
      if (end === -1) return;
      const block = Buffer.concat(this.header, this.headerBytes);
      // The fields with the CRLF of the last one; the whole block with the blank line after it.
      return this.endHeader(block.subarray(0, end === 0 ? 0 : end + 2), end > 0 ? block.subarray(0, end + HEADER_END.length) : undefined);
    }
    this.refuse(new SmtpReply(552, '5.3.4', `Message header exceeds fixed limit of ${this.limits.headerSize} bytes`));
  }

  private endHeader(block: Buffer, whole?: Buffer): void {
    this.headerDone = true;
    this.header = [];
    this.fields = headerFields(block, this.stored);
    let received = 0;
    let signed = false;
    for (const { name, value } of this.fields) {
      if (name === 'received') received++;
      else if (name === 'dkim-signature' || name === 'arc-seal' || name === 'arc-message-signature') signed = true;
      else if (this.messageId === undefined && name === 'message-id') {
        this.messageId = Buffer.from(value.trim(), 'latin1').toString('utf8').slice(0, 998);
      }
    }
    if (whole && !signed) this.unsignedHeader = whole;
    if (received > this.limits.hops) {
      this.refuse(new SmtpReply(554, '5.4.6', `Too many hops: ${received} Received headers, the limit is ${this.limits.hops} (mail loop?)`));
    }
  }
}
