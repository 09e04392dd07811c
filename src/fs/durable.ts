import { constants } from 'node:fs';
import { open, rename, unlink, writeFile, type FileHandle } from 'node:fs/promises';

/**
 * Coalesces directory fsyncs (group commit): callers that arrive while one fsync
 * runs share the next one, which starts after all of their renames. Each caller's
 * promise resolves only after an fsync that began after its call. The directory stays
 * open while rounds follow one another (one threadpool job per round instead of open,
 * fsync and close, which took a quarter of a message's commit time under load) and is
 * closed once none is waiting, so an idle daemon holds no descriptor on it.
 */
export class DirectorySync {
  private inFlight: Promise<void> | undefined;
  private waiting: Promise<void> | undefined;
  private handle: FileHandle | undefined;

  constructor(readonly path: string) {}

  sync(): Promise<void> {
    if (this.waiting) return this.waiting;
    const previous = this.inFlight ?? Promise.resolve();
    const round: Promise<void> = (async () => {
      await previous.catch(() => undefined);
      this.waiting = undefined; // callers from now on need a later round
      try {
        this.handle ??= await open(this.path, 'r');
        await this.handle.sync();
      } catch (error) {
        await this.closeHandle();
        throw error;
      }
      if (!this.waiting) await this.closeHandle();
    })().finally(() => {
      if (this.inFlight === round) this.inFlight = undefined;
    });
    this.waiting = round;
    this.inFlight = round;
    return round;
  }

  private async closeHandle(): Promise<void> {
    const handle = this.handle;
    this.handle = undefined;
    await handle?.close().catch(() => undefined);
  }
}

/** Writes `data` to `temp`, fsyncs it and renames it to `target` (the caller syncs the directory). */
export async function writeFileSynced(temp: string, target: string, data: string | Buffer | Iterable<string | Buffer>, mode = 0o600): Promise<void> {
  const handle = await createExclusive(temp, mode);
  try {
    try {
      await writeFile(handle, data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, target);
  } catch (error) {
    await unlink(temp).catch(() => undefined); // a full disk leaves no half-written temp file behind
    throw error;
  }
}

/** A new file, never an existing one and never through a symlink; a leftover of a crash at that name is replaced. */
async function createExclusive(path: string, mode: number): Promise<FileHandle> {
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
  try {
    return await open(path, flags, mode);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    await unlink(path); // a file or a symlink: unlink removes the name, never what a symlink points to
    return open(path, flags, mode);
  }
}
