/** One header field of a message: its name, its unfolded value, and where its bytes are (end: after its last CRLF). */
export interface HeaderField {
  /** Lower case; '' for a line that is no field (no colon). */
  name: string;
  /** Unfolded, Latin-1 decoded (one character per byte), without the leading space. */
  value: string;
  start: number;
  end: number;
}

const CRLF = Buffer.from('\r\n');

/**
 * The fields of a header block (RFC 5322 §2.2): a line starting with a space or a tab
 * continues the field before it. `block` is the header fields with their CRLFs, without
 * the blank line; offsets are relative to it plus `base`.
 */
export function headerFields(block: Buffer, base = 0): HeaderField[] {
  const fields: HeaderField[] = [];
  const lines: Array<{ start: number; end: number }> = [];
  const flush = () => {
    if (lines.length === 0) return;
    const text = lines.map((line) => block.toString('latin1', line.start, line.end)).join('');
    const withEnd = (lines.at(-1)!.end === block.length ? block.length : lines.at(-1)!.end + CRLF.length) + base;
    const colon = text.indexOf(':');
    const name = colon > 0 && !/[\s]/.test(text.slice(0, colon)) ? text.slice(0, colon).toLowerCase() : '';
    fields.push({ name, value: name ? text.slice(colon + 1).replace(/^[ \t]+/, '') : text, start: lines[0].start + base, end: withEnd });
    lines.length = 0;
  };
  for (let start = 0; start < block.length;) {
    const eol = block.indexOf(CRLF, start);
    const end = eol === -1 ? block.length : eol;
    if (block[start] !== 0x20 && block[start] !== 0x09) flush();
    lines.push({ start, end });
    start = eol === -1 ? block.length : eol + CRLF.length;
  }
  flush();
  return fields;
}

/**
 * The authserv-id of an Authentication-Results value (RFC 8601 §2.2: `[CFWS] authserv-id`),
 * or of an ARC-Authentication-Results one (RFC 8617 §4.1.1: `i=N; authserv-id`): comments
 * (nested, with quoted pairs) and spacing skipped, a quoted-string unquoted, lower case.
 */
export function authservId(value: string, arc = false): string {
  let text = withoutComments(value).trim();
  if (arc) text = text.replace(/^i\s*=\s*\d+\s*;/i, '').trim();
  const quoted = /^"((?:[^"\\]|\\.)*)"/.exec(text);
  const id = quoted ? quoted[1].replace(/\\(.)/g, '$1') : (/^[^\s;]*/.exec(text)?.[0] ?? '');
  return id.toLowerCase().replace(/\.$/, '');
}

/** A header value with its RFC 5322 comments replaced by a space. */
export function withoutComments(value: string): string {
  let out = '';
  let depth = 0;
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === '\\' && (depth > 0 || quoted)) {
      if (depth === 0) out += value.slice(i, i + 2);
      i++;
    } else if (quoted) {
      out += c;
      if (c === '"') quoted = false;
    } else if (c === '(') depth++;
    else if (c === ')' && depth > 0) {
      depth--;
      if (depth === 0) out += ' ';
    } else if (depth === 0) {
      if (c === '"') quoted = true;
      out += c;
    }
  }
  return out;
}
