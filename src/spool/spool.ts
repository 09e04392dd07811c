import { constants, createReadStream, readFileSync, type ReadStream } from 'node:fs';
import { link, mkdir, open, readdir, readFile, rename, rm, stat, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { DirectorySync, writeFileSynced } from './durable.js';
import { CorruptEnvelopeError, parseEnvelope, type Envelope } from './envelope.js';
import { newQueueId, QUEUE_ID } from './queue-id.js';
import { envelopeTrailer, readTrailer, readTrailerSync } from './trailer.js';

/*
 * Layout under the spool directory:
 *   tmp/<id>.msg, tmp/<id>.env   being written; never acknowledged, removed at start
 *   queue/<id>.msg               the message bytes, then the envelope it was queued with
 *                                (trailer.ts); immutable, and its rename here is the commit point
 *   queue/<id>.env               the envelope's later state (JSON), once it changed; it
 *                                takes precedence over the trailer
 *   corrupt/                     files recovery could not make sense of, kept for a human
 *   locks/<id>                   a message being delivered (holds the pid of its deliverer)
 *   locks/.holder.<pid>          the token every lock of process <pid> is a hard link to
 *   serve.pid                    held by the running `serve`
 */

export class SpoolLockedError extends Error {}

/** What the receiver knows when it commits a message; the spool adds id, size and version. */
export type EnvelopeFields = Omit<Envelope, 'version' | 'id' | 'size'>;

export class Spool {
  readonly tmpDir: string;
  readonly queueDir: string;
  readonly corruptDir: string;
  readonly locksDir: string;
  private readonly queueSync: DirectorySync;

  private constructor(readonly root: string) {
    this.tmpDir = join(root, 'tmp');
    this.queueDir = join(root, 'queue');
    this.corruptDir = join(root, 'corrupt');
    this.locksDir = join(root, 'locks');
    this.queueSync = new DirectorySync(this.queueDir);
  }

  /** Opens the spool for reading only (`queue list`): creates nothing, removes nothing. */
  static forReading(root: string): Spool {
    return new Spool(root);
  }

  /** Opens the spool to deliver or edit queued messages without a daemon (`flush`, `queue hold`…). */
  static async forDelivery(root: string): Promise<Spool> {
    const spool = new Spool(root);
    await spool.createLayout();
    return spool;
  }

  /** Opens the spool for the daemon: takes the lock, creates the layout, runs recovery. */
  static async openForServing(root: string, log: Logger): Promise<Spool> {
    const spool = new Spool(root);
    await spool.createLayout();
    await spool.lock();
    await spool.recover(log);
    return spool;
  }

  private async createLayout(): Promise<void> {
    for (const dir of [this.root, this.tmpDir, this.queueDir, this.corruptDir, this.locksDir]) {
      await mkdir(dir, { recursive: true, mode: 0o700 });
    }
  }

  private get pidFile(): string {
    return pidFileOf(this.root);
  }

  /** The pid of a live `serve` holding this spool, if any. */
  static runningDaemonPid(root: string): number | undefined {
    const holder = Number.parseInt(readFileIfAny(pidFileOf(root)), 10);
    return Number.isInteger(holder) && holder > 0 && processIsAlive(holder) ? holder : undefined;
  }

  private async lock(): Promise<void> {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const handle = await open(this.pidFile, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
        await handle.writeFile(`${process.pid}\n`);
        await handle.close();
        return;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      const holder = Spool.runningDaemonPid(this.root);
      if (holder) {
        throw new SpoolLockedError(
          `spool ${this.root} is in use by process ${holder} (another secondarymx serve); ` +
            `if that process is not secondarymx, remove ${this.pidFile}`,
        );
      }
      await rm(this.pidFile, { force: true }); // stale: its process is gone
    }
    throw new SpoolLockedError(`cannot take the lock ${this.pidFile}`);
  }

  async unlock(): Promise<void> {
    await rm(this.pidFile, { force: true });
  }

  /**
   * Start-up recovery: removes what was never acknowledged (everything in tmp/), the
   * envelope of a message whose removal was cut short, and moves unreadable messages
   * to corrupt/.
   */
  private async recover(log: Logger): Promise<void> {
    const leftovers = await readdir(this.tmpDir);
    await Promise.all(leftovers.map((name) => rm(join(this.tmpDir, name), { force: true })));
    const names = new Set(await readdir(this.queueDir));
    let removedEnvelopes = 0;
    let corrupt = 0;
    const messageIds: string[] = [];
    for (const name of names) {
      const match = /^(.*)\.(msg|env)$/.exec(name);
      const id = match?.[1] ?? '';
      if (!match || !QUEUE_ID.test(id)) {
        await this.quarantine(name, 'unexpected file in queue', log);
        corrupt++;
      } else if (match[2] === 'env' && !names.has(`${id}.msg`)) {
        await unlink(join(this.queueDir, name)); // remove() takes the message first, then this
        removedEnvelopes++;
      } else if (match[2] === 'msg') {
        messageIds.push(id);
      }
    }
    // Each envelope is read once and handed to the relay (takeRecovered). Synchronous reads:
    // nothing listens yet, and for 100,000 small files they take half the time of async ones.
    const recovered: Envelope[] = [];
    for (const id of messageIds.sort()) {
      const updated = names.has(`${id}.env`);
      try {
        const envelopeFile = join(this.queueDir, `${id}.env`);
        recovered.push(updated ? parseEnvelope(readFileSync(envelopeFile, 'utf8'), id) : readTrailerSync(this.messagePath(id), id));
      } catch (error) {
        if (!(error instanceof CorruptEnvelopeError)) throw error;
        if (updated) await this.quarantine(`${id}.env`, error.message, log);
        await this.quarantine(`${id}.msg`, error.message, log);
        corrupt++;
      }
    }
    this.recovered = recovered.sort((a, b) => (a.id < b.id ? -1 : 1));
    log.info({ removedTemp: leftovers.length, removedEnvelopes, corrupt, queued: recovered.length }, 'spool recovered');
  }

  private recovered: Envelope[] | undefined;

  /** The envelopes start-up recovery read, once (saves the relay a second scan of the queue). */
  takeRecovered(): Envelope[] | undefined {
    const recovered = this.recovered;
    this.recovered = undefined;
    return recovered;
  }

  private async quarantine(name: string, reason: string, log: Logger): Promise<void> {
    await rename(join(this.queueDir, name), join(this.corruptDir, name));
    log.error({ file: name, reason, movedTo: this.corruptDir }, 'corrupt spool file set aside');
  }

  /** A queued message's envelope: its latest state (.env), else the one it was queued with. */
  async readEnvelope(id: string): Promise<Envelope> {
    try {
      return parseEnvelope(await readFile(join(this.queueDir, `${id}.env`), 'utf8'), id);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    return readTrailer(this.messagePath(id), id); // ENOENT here: no such message
  }

  /** Every queued message, oldest first. Unreadable envelopes are reported, not thrown. */
  async list(): Promise<{ envelopes: Envelope[]; unreadable: { id: string; reason: string }[] }> {
    const names = (await readdir(this.queueDir)).filter((name) => name.endsWith('.msg')).sort();
    const envelopes: Envelope[] = [];
    const unreadable: { id: string; reason: string }[] = [];
    await forEachLimited(names, READ_PARALLELISM, async (name) => {
      const id = name.slice(0, -'.msg'.length);
      try {
        envelopes.push(await this.readEnvelope(id));
      } catch (error) {
        // ENOENT: delivered and removed between readdir and read.
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') unreadable.push({ id, reason: (error as Error).message });
      }
    });
    return { envelopes: envelopes.sort((a, b) => (a.id < b.id ? -1 : 1)), unreadable };
  }

  /** Queued messages and their bytes on disk (envelopes included), from file sizes only: cheap enough for every `status`. */
  async summary(): Promise<{ messages: number; bytes: number }> {
    const names = await readdir(this.queueDir).catch(() => [] as string[]);
    const queued = names.filter((name) => name.endsWith('.msg'));
    const sizes = await Promise.all(queued.map((name) => stat(join(this.queueDir, name)).then((s) => s.size, () => 0)));
    return { messages: queued.length, bytes: sizes.reduce((sum, size) => sum + size, 0) };
  }

  /** Starts receiving a message into tmp/. */
  async receive(): Promise<IncomingMessage> {
    const id = newQueueId();
    const handle = await open(join(this.tmpDir, `${id}.msg`), 'wx', 0o600);
    return new IncomingMessage(id, handle, this);
  }

  /** Moves a fully written and fsynced message (trailer included) into the queue; resolves once that is durable. */
  async commitMessage(id: string): Promise<void> {
    await this.publish(id, () => rename(join(this.tmpDir, `${id}.msg`), this.messagePath(id)));
  }

  /** Queues a message this MX wrote itself (a DSN) under a chosen id; no-op if it is already queued. */
  async enqueue(id: string, data: Buffer, fields: EnvelopeFields): Promise<Envelope> {
    const envelope: Envelope = { version: 1, id, size: data.length, ...fields };
    if (await stat(this.messagePath(id)).then(() => true, () => false)) return this.readEnvelope(id);
    await this.publish(id, () => writeFileSynced(join(this.tmpDir, `${id}.msg`), this.messagePath(id), [data, envelopeTrailer(envelope)]));
    return envelope;
  }

  /** Puts a message file in queue/ and makes that durable; on failure, takes it back out. */
  private async publish(id: string, place: () => Promise<void>): Promise<void> {
    try {
      await place();
      await this.queueSync.sync();
    } catch (error) {
      // Not acknowledged: take it back out so that the sender's retry is not a duplicate.
      await Promise.all([this.messagePath(id), join(this.tmpDir, `${id}.msg`)].map(unlinkIfAny));
      throw error;
    }
  }

  messagePath(id: string): string {
    return join(this.queueDir, `${id}.msg`);
  }

  /** The message's bytes as received (without the envelope stored after them). */
  openMessage(envelope: Envelope): ReadStream {
    return createReadStream(this.messagePath(envelope.id), { start: 0, end: envelope.size - 1 });
  }

  /** Replaces a queued message's envelope durably (temp, fsync, rename, folder fsync). */
  async updateEnvelope(envelope: Envelope): Promise<void> {
    await writeFileSynced(join(this.tmpDir, `${envelope.id}.env`), join(this.queueDir, `${envelope.id}.env`), JSON.stringify(envelope));
    await this.queueSync.sync();
  }

  /** Takes a message out of the queue: the message first, so a crash leaves a lone .env that recovery removes. */
  async remove(id: string): Promise<void> {
    await unlinkIfAny(this.messagePath(id));
    await unlinkIfAny(join(this.queueDir, `${id}.env`));
    await this.queueSync.sync();
  }

  /**
   * Exclusive right to deliver or edit a message, across processes (the daemon, a
   * `flush` without daemon, `queue` commands). A lock whose process is gone is taken over.
   */
  async lockMessage(id: string): Promise<boolean> {
    const path = join(this.locksDir, id);
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

  async unlockMessage(id: string): Promise<void> {
    await unlinkIfAny(join(this.locksDir, id));
  }

  private token: Promise<string> | undefined;

  /** This process's lock token, created once; the tokens of processes that are gone are removed on the way. */
  private lockToken(): Promise<string> {
    this.token ??= (async () => {
      for (const name of await readdir(this.locksDir)) {
        const owner = /^\.holder\.(\d+)$/.exec(name)?.[1];
        if (owner && !processIsAlive(Number(owner))) await unlinkIfAny(join(this.locksDir, name));
      }
      const token = join(this.locksDir, `.holder.${process.pid}`);
      await writeFile(token, `${process.pid}\n`, { mode: 0o600 });
      return token;
    })();
    return this.token;
  }

  async discardTemp(id: string): Promise<void> {
    await unlinkIfAny(join(this.tmpDir, `${id}.msg`));
  }
}

/**
 * Writes smaller than this are gathered in memory and written together: a 4 KB message
 * (our Received header, the data, the envelope) is then one write instead of three,
 * and each write is a threadpool job that waits behind other messages' fsyncs.
 */
const WRITE_BATCH = 64 * 1024;

/** A message being written to tmp/. Either commit() or discard() ends it. */
export class IncomingMessage {
  private bytes = 0;
  private closed = false;
  private unwritten: Buffer[] = [];
  private unwrittenBytes = 0;

  constructor(
    readonly id: string,
    private readonly handle: FileHandle,
    private readonly spool: Spool,
  ) {}

  get size(): number {
    return this.bytes;
  }

  async write(chunk: Buffer): Promise<void> {
    this.bytes += chunk.length;
    this.gather(chunk);
    if (this.unwrittenBytes >= WRITE_BATCH) await this.flush();
  }

  private gather(chunk: Buffer): void {
    this.unwritten.push(chunk);
    this.unwrittenBytes += chunk.length;
  }

  private async flush(): Promise<void> {
    let data = this.unwritten.length === 1 ? this.unwritten[0] : Buffer.concat(this.unwritten, this.unwrittenBytes);
    this.unwritten = [];
    this.unwrittenBytes = 0;
    while (data.length > 0) {
      const { bytesWritten } = await this.handle.write(data);
      data = data.subarray(bytesWritten);
    }
  }

  /** Appends the envelope, fsyncs, then queues the file: the caller may acknowledge once this resolves. */
  async commit(fields: EnvelopeFields): Promise<Envelope> {
    try {
      const envelope: Envelope = { version: 1, id: this.id, size: this.bytes, ...fields };
      this.gather(envelopeTrailer(envelope));
      await this.flush();
      await this.handle.sync();
      // The bytes are durable: closing may overlap the rename, its outcome changes nothing.
      const closing = this.close().catch(() => undefined);
      await this.spool.commitMessage(this.id);
      await closing;
      return envelope;
    } catch (error) {
      await this.discard();
      throw error;
    }
  }

  async discard(): Promise<void> {
    await this.close().catch(() => undefined);
    await this.spool.discardTemp(this.id);
  }

  private async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}

/** Envelope reads in flight at once when scanning the queue. */
const READ_PARALLELISM = 32;

/** Runs `work` on every item, at most `limit` at a time. */
async function forEachLimited<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await work(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
}

/** unlink() without the lstat() that rm() adds; a file already gone is fine. */
async function unlinkIfAny(path: string): Promise<void> {
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
