import { readdirSync, readFileSync } from 'node:fs';
import { link, open, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';

/*
 * Two kinds of lock keep processes (the daemon, a `flush` without daemon, `queue`
 * commands) off each other's work:
 *   serve.pid                   held by the running `serve`, for the whole spool
 *   locks/<id>                  a message being delivered or edited
 *   locks/.holder.<pid>.<start> the token every message lock of one process is a hard link to
 *
 * A lock names its holder by pid, the process's start time and the boot it started in,
 * so it dies with its holder whatever becomes of the pid: a pid reused by another
 * process (after a crash, or pid 1 in every container) or a reboot make it stale.
 * Kernel locks (flock) would say the same, but Node has no flock without a native
 * addon; on Linux /proc gives the start time, which is all this needs.
 */

export class SpoolLockedError extends Error {}

/** A lock's holder: what the lock files contain ("pid start boot"). */
interface Holder {
  pid: number;
  /** Start time in clock ticks since boot (/proc/<pid>/stat, field 22); '' in locks written before it was recorded. */
  start: string;
  boot: string;
}

const BOOT_ID = readFileIfAny('/proc/sys/kernel/random/boot_id').trim();

/** This process, as its locks name it. */
const SELF: Holder = { pid: process.pid, start: startTimeOf(process.pid) ?? '', boot: BOOT_ID };

function format(holder: Holder): string {
  return `${holder.pid} ${holder.start} ${holder.boot}\n`;
}

function parseHolder(text: string): Holder | undefined {
  const [pid, start = '', boot = ''] = text.trim().split(/\s+/);
  const number = Number(pid);
  return Number.isInteger(number) && number > 0 ? { pid: number, start, boot } : undefined;
}

/** Whether the process that wrote this lock still runs (it may be this one). */
function holderAlive(holder: Holder | undefined): boolean {
  if (!holder) return false;
  if (holder.boot && BOOT_ID && holder.boot !== BOOT_ID) return false; // written before a reboot
  if (!holder.start) return holder.pid !== process.pid && processIsAlive(holder.pid); // an older lock: only its pid to go by
  if (holder.pid === SELF.pid) return holder.start === SELF.start;
  const start = startTimeOf(holder.pid);
  return start === undefined ? processIsAlive(holder.pid) && !existsProc() : start === holder.start;
}

/** The pid of a live `serve` holding the spool at `root`, if any. */
export function runningDaemonPid(root: string): number | undefined {
  const holder = parseHolder(readFileIfAny(pidFileOf(root)));
  return holder && holderAlive(holder) ? holder.pid : undefined;
}

/** Takes the daemon lock of the spool at `root`; a lock whose holder is gone is taken over. */
export async function takeDaemonLock(root: string): Promise<void> {
  const pidFile = pidFileOf(root);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      return await createWith(pidFile, format(SELF));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const holder = runningDaemonPid(root);
    if (holder) {
      throw new SpoolLockedError(
        `spool ${root} is in use by process ${holder} (another secondarymx serve); if that process is not secondarymx, remove ${pidFile}`,
      );
    }
    await unlinkIfAny(pidFile); // stale: its holder is gone
  }
  throw new SpoolLockedError(`cannot take the lock ${pidFile}`);
}

export async function releaseDaemonLock(root: string): Promise<void> {
  await unlinkIfAny(pidFileOf(root));
}

/** Exclusive right to deliver or edit one queued message, across processes. */
export class MessageLocks {
  private token: Promise<string> | undefined;

  constructor(private readonly dir: string) {}

  /** Resolves false when a live process (this one included) holds the message; a lock whose holder is gone is taken over. */
  async lock(id: string): Promise<boolean> {
    const path = join(this.dir, id);
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        // A hard link to this process's token: the lock appears with its holder in one step, nobody ever sees it empty.
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
      if (holderAlive(parseHolder(readFileIfAny(path)))) return false;
      await unlinkIfAny(path); // its holder is gone
    }
    return false;
  }

  async unlock(id: string): Promise<void> {
    await unlinkIfAny(join(this.dir, id));
  }

  /** Removes the locks and tokens of processes that are gone (start-up: a crash leaves them behind). */
  async clearStale(): Promise<number> {
    let cleared = 0;
    for (const name of await readdir(this.dir)) {
      const path = join(this.dir, name);
      if (holderAlive(parseHolder(readFileIfAny(path)))) continue;
      await unlinkIfAny(path);
      if (!name.startsWith('.holder.')) cleared++;
    }
    return cleared;
  }

  /** Creates this process's lock token now (at start: not at the first delivery, when the disk may be full). */
  async prepare(): Promise<void> {
    await this.lockToken();
  }

  /** This process's lock token, created once; a new file, so no stale lock ever shares its inode. */
  private lockToken(): Promise<string> {
    this.token ??= (async () => {
      const token = join(this.dir, `.holder.${SELF.pid}.${SELF.start}`);
      await unlinkIfAny(token);
      await createWith(token, format(SELF));
      for (const name of await readdir(this.dir)) {
        if (name.startsWith('.holder.') && !holderAlive(parseHolder(readFileIfAny(join(this.dir, name))))) await unlinkIfAny(join(this.dir, name));
      }
      return token;
    })();
    this.token.catch(() => (this.token = undefined)); // a failure (full disk) is retried by the next lock
    return this.token;
  }
}

/** Creates `path` (never an existing file) holding `text`; a failed write leaves nothing behind. */
async function createWith(path: string, text: string): Promise<void> {
  const handle = await open(path, 'wx', 0o600);
  try {
    await handle.writeFile(text);
  } catch (error) {
    await unlinkIfAny(path).catch(() => undefined);
    throw error;
  } finally {
    await handle.close();
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

/** Field 22 of /proc/<pid>/stat (after the parenthesised command, which may hold spaces). */
function startTimeOf(pid: number): string | undefined {
  const stat = readFileIfAny(`/proc/${pid}/stat`);
  return stat ? stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] : undefined;
}

let procMounted: boolean | undefined;

/** Whether this system has /proc (then a live pid without a /proc entry is in another pid namespace, not ours). */
function existsProc(): boolean {
  procMounted ??= (() => {
    try {
      return readdirSync('/proc/self').length > 0;
    } catch {
      return false;
    }
  })();
  return procMounted;
}

function processIsAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
