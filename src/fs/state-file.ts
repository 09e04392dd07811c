import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';

/** A state file we cannot use: its reason names the file's kind or size, never its contents. */
export class UnusableStateFile extends Error {}

/**
 * Reads a JSON state file the daemon wrote itself in the spool (a cache): a regular file
 * only, opened without following a symlink (O_NOFOLLOW) and without blocking on a FIFO
 * (O_NONBLOCK), at most `maxBytes`. Undefined when there is none. A file that is anything
 * else is refused with a reason that quotes none of it (run as root, a link to /etc/shadow
 * must not reach the log).
 */
export function readStateFile(path: string, maxBytes: number): unknown {
  const text = readStateText(path, maxBytes);
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw new UnusableStateFile('not JSON'); // V8's message quotes the text
  }
}

/** readStateFile's checks, the text as it is (UTF-8). */
export function readStateText(path: string, maxBytes: number): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    throw new UnusableStateFile(code === 'ELOOP' ? 'a symbolic link, not followed' : `cannot be opened (${code})`);
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new UnusableStateFile('not a regular file');
    if (stat.size > maxBytes) throw new UnusableStateFile(`${stat.size} bytes, over the ${maxBytes} a valid one can have`);
    const buffer = Buffer.alloc(stat.size);
    let read = 0;
    try {
      for (let bytes = -1; read < buffer.length && bytes !== 0; read += bytes) bytes = readSync(fd, buffer, read, buffer.length - read, read);
    } catch (error) {
      throw new UnusableStateFile(`cannot be read (${(error as NodeJS.ErrnoException).code})`);
    }
    return buffer.toString('utf8', 0, read);
  } finally {
    closeSync(fd);
  }
}
