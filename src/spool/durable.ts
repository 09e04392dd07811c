import { open, rename, writeFile, type FileHandle } from 'node:fs/promises';

/** Makes the directory's entries (creations, renames) durable. */
export async function fsyncDirectory(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Coalesces directory fsyncs (group commit): callers that arrive while one fsync
 * runs share the next one, which starts after all of their renames. Each caller's
 * promise resolves only after an fsync that began after its call.
 */
export class DirectorySync {
  private inFlight: Promise<void> | undefined;
  private waiting: Promise<void> | undefined;

  constructor(readonly path: string) {}

  sync(): Promise<void> {
    if (this.waiting) return this.waiting;
    const previous = this.inFlight ?? Promise.resolve();
    const round: Promise<void> = (async () => {
      await previous.catch(() => undefined);
      this.waiting = undefined; // callers from now on need a later round
      await fsyncDirectory(this.path);
    })().finally(() => {
      if (this.inFlight === round) this.inFlight = undefined;
    });
    this.waiting = round;
    this.inFlight = round;
    return round;
  }
}

/** Writes `data` to `temp`, fsyncs it and renames it to `target` (the caller syncs the directory). */
export async function writeFileSynced(temp: string, target: string, data: string | Buffer | Iterable<string | Buffer>, mode = 0o600): Promise<void> {
  const handle: FileHandle = await open(temp, 'w', mode);
  try {
    await writeFile(handle, data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(temp, target);
}
