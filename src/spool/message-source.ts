import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';

/** A message being received, for a reader before its 250: its bytes (still all in memory, in a buffer of their own), or the temp file holding them. */
export type MessageSource = { bytes: Uint8Array<ArrayBuffer> } | { path: string; size: number };

export function readSource(source: MessageSource): Readable {
  return 'path' in source ? createReadStream(source.path, { start: 0, end: Math.max(0, source.size - 1) }) : Readable.from([bytesOf(source)]);
}

/** The bytes themselves, or the temp file as a stream (mailauth reads either; a Buffer costs no stream per message). */
export function sourceInput(source: MessageSource): Buffer | Readable {
  return 'path' in source ? readSource(source) : bytesOf(source);
}

function bytesOf(source: { bytes: Uint8Array }): Buffer {
  return Buffer.from(source.bytes.buffer, source.bytes.byteOffset, source.bytes.byteLength);
}

/** `chunks` copied into one buffer of its own (not a slice of Node's shared pool): it can be moved to a thread. */
export function ownBuffer(chunks: readonly Uint8Array[], length: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(length);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return bytes;
}
