const CRLF_DOT_CRLF = Buffer.from('\r\n.\r\n');
const DOT_CRLF = Buffer.from('.\r\n');
const DOT = 0x2e;
const LF = 0x0a;

export interface DotStuffer {
  (chunk: Buffer): Buffer;
  /** The end of data: the final dot, after a CRLF if the message did not end with one. */
  end(): Buffer;
}

/**
 * Transparency for DATA (RFC 5321 §4.5.2): a dot that starts a line is doubled.
 * The spool holds CRLF-only messages (bare CR and LF are refused at receive time),
 * so only line starts need looking at; chunks without any are passed on as they are.
 */
export function dotStuffer(): DotStuffer {
  let atLineStart = true;
  let last = LF;
  const stuff = (chunk: Buffer): Buffer => {
    if (chunk.length === 0) return chunk;
    const parts: Buffer[] = [];
    let from = 0;
    if (atLineStart && chunk[0] === DOT) {
      parts.push(Buffer.from('.'));
    }
    for (let at = chunk.indexOf('\n.'); at !== -1; at = chunk.indexOf('\n.', at + 2)) {
      parts.push(chunk.subarray(from, at + 2), Buffer.from('.'));
      from = at + 2;
    }
    last = chunk[chunk.length - 1];
    atLineStart = last === LF;
    if (parts.length === 0) return chunk;
    parts.push(chunk.subarray(from));
    return Buffer.concat(parts);
  };
  return Object.assign(stuff, { end: () => (last === LF ? DOT_CRLF : CRLF_DOT_CRLF) });
}
