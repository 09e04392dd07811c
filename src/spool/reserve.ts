import { open, unlink } from 'node:fs/promises';

/** Enough for the files a start and a drain need (serve.pid, the lock token): a few blocks. */
const RESERVE_BYTES = 64 * 1024;

/**
 * Room kept for the spool's own small files, so the daemon can start and deliver on a full
 * disk, where delivering is what frees space: a file written while there is room
 * (SPOOL/space.reserve), given back when one of those files finds none, written again once
 * there is room.
 */
export class SpaceReserve {
  constructor(private readonly path: string) {}

  /** Writes the reserve if it is missing; says whether it is there (a full disk is no error). */
  async ensure(): Promise<boolean> {
    let handle;
    try {
      handle = await open(this.path, 'wx', 0o600);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') return true;
      if ((error as NodeJS.ErrnoException).code === 'ENOSPC') return false;
      throw error;
    }
    try {
      await handle.write(Buffer.alloc(RESERVE_BYTES));
      await handle.sync(); // its blocks allocated for real, not promised
      return true;
    } catch (error) {
      await unlink(this.path).catch(() => undefined); // a partial reserve would be taken for a whole one
      if ((error as NodeJS.ErrnoException).code === 'ENOSPC') return false;
      throw error;
    } finally {
      await handle.close();
    }
  }

  /** Runs `write`; when it finds the disk full, gives the reserve back and runs it once more. */
  async spend<T>(write: () => Promise<T>): Promise<T> {
    try {
      return await write();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
      const released = await unlink(this.path).then(
        () => true,
        () => false,
      );
      if (!released) throw error;
      return write();
    }
  }
}
