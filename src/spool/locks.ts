import { readFileSync } from 'node:fs';
import { link, open, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/*
 * Two kinds of lock keep processes (the daemon, a `flush` without daemon, `queue`
 * commands) off each other's work:
 *   serve.pid             held by the running `serve`, for the whole spool
 *   locks/<id>            a message being delivered or edited (holds its holder's pid)
 *   locks/.holder.<pid>   the token every message lock of process <pid> is a hard link to
 */

export class SpoolLockedError extends Error {}

/** The pid of a live `serve` holding the spool at `root`, if any. */
export function runningDaemonPid(root: string): number | undefined {
  const holder = Number.parseInt(readFileIfAny(pidFileOf(root)), 10);
  return Number.isInteger(holder) && holder > 0 && processIsAlive(holder) ? holder : undefined;
}

/** Takes the daemon lock of the spool at `root`; a lock whose process is gone is taken over. */
export async function takeDaemonLock(root: string): Promise<void> {
  const pidFile = pidFileOf(root);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(pidFile, 'wx', 0o600);
      await handle.writeFile(`${process.pid}\n`);
      await handle.close();
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const holder = runningDaemonPid(root);
    if (holder) {
      throw new SpoolLockedError(`spool ${root} is in use by process ${holder} (another secondarymx serve); if that process is not secondarymx, remove ${pidFile}`);
    }
    await rm(pidFile, { force: true }); // stale: its process is gone
  }
  throw new SpoolLockedError(`cannot take the lock ${pidFile}`);
}

export async function releaseDaemonLock(root: string): Promise<void> {
  await rm(pidFileOf(root), { force: true });
}

/** Exclusive right to deliver or edit one queued message, across processes. */
export class MessageLocks {
  private token: Promise<string> | undefined;

  constructor(private readonly dir: string) {}

  /** Resolves false when another live process (or this one) holds the message; a lock whose process is gone is taken over. */
  async lock(id: string): Promise<boolean> {
    const path = join(this.dir, id);
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        // A hard link to this process's token: the lock appears with its pid in one step, nobody ever sees it empty.
        await link(await this.lockToken(), path);
        return true;
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') {
          this.token = undefined; // someone cleaned locks/ by hand: make the token again
          continue;
        }
        if (code !== 'EEXIST') throw error;
      }
      const holder = Number.parseInt(readFileIfAny(path), 10);
      if (holder === process.pid || processIsAlive(holder)) return false;
      await unlinkIfAny(path); // its process is gone
    }
    return false;
  }

  async unlock(id: string): Promise<void> {
    await unlinkIfAny(join(this.dir, id));
  }

  /** This process's lock token, created once; the tokens of processes that are gone are removed on the way. */
  private lockToken(): Promise<string> {
    this.token ??= (async () => {
      for (const name of await readdir(this.dir)) {
        const owner = /^\.holder\.(\d+)$/.exec(name)?.[1];
        if (owner && !processIsAlive(Number(owner))) await unlinkIfAny(join(this.dir, name));
      }
      const token = join(this.dir, `.holder.${process.pid}`);
      await writeFile(token, `${process.pid}\n`, { mode: 0o600 });
      return token;
    })();
    this.token.catch(() => (this.token = undefined)); // a failure (full disk) is retried by the next lock
    return this.token;
  }
}

/** unlink() without the lstat() that rm() adds; a file already gone is fine. */
export async function unlinkIfAny(path: string): Promise<void> {
  await unlink(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'ENOENT') throw error;
  });
}

function pidFileOf(root: string): string {
  return join(root, 'serve.pid');
}

function readFileIfAny(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

function processIsAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
