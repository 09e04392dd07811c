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
    try {
      return JSON.parse(buffer.toString('utf8', 0, read));
    } catch {
      throw new UnusableStateFile('not JSON'); // V8's message quotes the text
    }
  } finally {
    closeSync(fd);
  }
}
