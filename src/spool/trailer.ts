import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { open, type FileHandle } from 'node:fs/promises';
import { CorruptEnvelopeError, parseEnvelope, type Envelope } from './envelope.js';

/*
 * A queued message file holds the message, then the envelope it was queued with:
 *
 *   <envelope.size bytes of message><envelope JSON>\n secondarymx-envelope 0000000123\n
 *
 * The last line (fixed length) gives the length of the JSON line before it. Queueing a
 * message thus creates, fsyncs and renames one file, not two. The envelope's later
 * states (delivery results, hold) go to <id>.env beside it, which takes precedence.
 */
const FOOTER_TAG = 'secondarymx-envelope ';
const LENGTH_DIGITS = 10;
const FOOTER_LENGTH = FOOTER_TAG.length + LENGTH_DIGITS + 1;
const FOOTER = new RegExp(`^${FOOTER_TAG}(\\d{${LENGTH_DIGITS}})\\n$`);
/** Bytes read from the end of the file at first: the whole trailer of a message with a few dozen recipients. */
const TAIL_GUESS = 4096;
/** A message file up to this size is read whole when it is about to be sent: envelope and bytes in one read. */
const WHOLE_FILE = 64 * 1024;

export function envelopeTrailer(envelope: Envelope): Buffer {
  const json = `${JSON.stringify(envelope)}\n`;
  const length = Buffer.byteLength(json);
  return Buffer.from(`${json}${FOOTER_TAG}${String(length).padStart(LENGTH_DIGITS, '0')}\n`);
}

/** Reads the envelope a message file was queued with, without reading the message. */
export async function readTrailer(path: string, id: string): Promise<Envelope> {
  const handle = await open(path, 'r');
  try {
    return await readTrailerOf(handle, (await handle.stat()).size, id);
  } finally {
    await handle.close();
  }
}

async function readTrailerOf(handle: FileHandle, fileSize: number, id: string): Promise<Envelope> {
  const reads = trailerReads(fileSize, id);
  for (let next = reads.next(); ;) {
    if (next.done) return next.value;
    const buffer = Buffer.alloc(next.value.length);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, next.value.position);
    next = reads.next(buffer.subarray(0, bytesRead));
  }
}

/** A message file's envelope, and its message bytes when the file is small enough to be read whole (WHOLE_FILE). */
export async function readQueuedFile(path: string, id: string): Promise<{ envelope: Envelope; bytes?: Buffer }> {
  const handle = await open(path, 'r');
  try {
    // One read finds out whether the file is small (it ends within the buffer): no stat for those.
    const buffer = Buffer.allocUnsafe(WHOLE_FILE + 1);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    if (bytesRead > WHOLE_FILE) return { envelope: await readTrailerOf(handle, (await handle.stat()).size, id) };
    const file = buffer.subarray(0, bytesRead);
    const reads = trailerReads(file.length, id);
    for (let next = reads.next(); ;) {
      if (next.done) return { envelope: next.value, bytes: file.subarray(0, next.value.size) };
      next = reads.next(file.subarray(next.value.position, next.value.position + next.value.length));
    }
  } finally {
    await handle.close();
  }
}

/** Start-up's one buffer for every file it reads (200,000 files: no 4 KB allocation each). */
const scratch = Buffer.allocUnsafe(WHOLE_FILE + 1);

/**
 * readTrailer, synchronously: for start-up recovery, where nothing else runs yet. A small
 * file is read whole into `scratch` by one read (no stat); only a bigger one is stat'd.
 */
export function readTrailerSync(path: string, id: string): Envelope {
  const fd = openSync(path, 'r');
  try {
    const bytesRead = readSync(fd, scratch, 0, scratch.length, 0);
    const small = bytesRead <= WHOLE_FILE;
    const reads = trailerReads(small ? bytesRead : fstatSync(fd).size, id);
    for (let next = reads.next(); ;) {
      if (next.done) return next.value;
      const { position, length } = next.value;
      if (small) next = reads.next(scratch.subarray(position, position + length));
      else {
        const buffer = Buffer.alloc(length);
        next = reads.next(buffer.subarray(0, readSync(fd, buffer, 0, length, position)));
      }
    }
  } finally {
    closeSync(fd);
  }
}

/** The reads that find the trailer (one, or two for a long envelope): the readers above drive it, from the file or from memory. */
function* trailerReads(fileSize: number, id: string): Generator<{ position: number; length: number }, Envelope, Buffer> {
  const tail = yield { position: Math.max(0, fileSize - TAIL_GUESS), length: Math.min(fileSize, TAIL_GUESS) };
  const length = trailerLength(tail, fileSize);
  const trailer = length <= tail.length ? tail.subarray(tail.length - length) : yield { position: fileSize - length, length };
  return parseTrailer(trailer, fileSize, id);
}

/** The trailer's length (envelope line and footer), from the footer at the end of `tail`. */
function trailerLength(tail: Buffer, fileSize: number): number {
  const footer = tail.subarray(tail.length - FOOTER_LENGTH).toString('latin1');
  const match = FOOTER.exec(footer);
  if (tail.length < FOOTER_LENGTH || !match) throw new CorruptEnvelopeError('no envelope at the end of the message file');
  const length = Number(match[1]) + FOOTER_LENGTH;
  if (length > fileSize) throw new CorruptEnvelopeError('envelope length beyond the start of the message file');
  return length;
}

function parseTrailer(trailer: Buffer, fileSize: number, id: string): Envelope {
  const envelope = parseEnvelope(trailer.subarray(0, trailer.length - FOOTER_LENGTH).toString('utf8'), id);
  if (envelope.size + trailer.length !== fileSize) {
    throw new CorruptEnvelopeError(`message file is ${fileSize} bytes, its envelope says ${envelope.size} + ${trailer.length}`);
  }
  return envelope;
}

/** A queued message's envelope, synchronously: its later state (<id>.env) when `updated`, else the one it was queued with. */
export function readEnvelopeSync(queueDir: string, id: string, updated: boolean): Envelope {
  return updated ? parseEnvelope(readFileSync(join(queueDir, `${id}.env`), 'utf8'), id) : readTrailerSync(join(queueDir, `${id}.msg`), id);
}
