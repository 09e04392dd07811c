import { createReadStream, statSync, type Stats } from 'node:fs';
import { Readable } from 'node:stream';
import { mkdir, open, opendir, readdir, readFile, rename, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { DirectorySync, writeFileSynced } from '../fs/durable.js';
import { parseEnvelope, type Envelope } from './envelope.js';
import { MessageLocks, releaseDaemonLock, takeDaemonLock, unlinkIfAny } from './locks.js';
import { ownBuffer, readSource, type MessageSource } from './message-source.js';
import { newQueueId } from './queue-id.js';
import { recoverSpool } from './recovery.js';
import { SpaceReserve } from './reserve.js';
import { envelopeTrailer, readEnvelopeSync, readQueuedFile, readTrailer } from './trailer.js';

/*
 * Layout under the spool directory:
 *   tmp/<id>.msg, tmp/<id>.env   being written; never acknowledged, removed at start
 *   queue/<id>.msg               the message bytes, then the envelope it was queued with
 *                                (trailer.ts); immutable, and its rename here is the commit point
 *   queue/<id>.env               the envelope's later state (JSON), once it changed; it
 *                                takes precedence over the trailer
 *   corrupt/                     files recovery could not make sense of, kept for a human
 *   locks/, serve.pid            locks.ts
 */

/** What the receiver knows when it commits a message; the spool adds id, size and version. */
export type EnvelopeFields = Omit<Envelope, 'version' | 'id' | 'size'>;

export class Spool {
  readonly tmpDir: string;
  readonly queueDir: string;
  readonly corruptDir: string;
  readonly locksDir: string;
  readonly locks: MessageLocks;
  /** Room for serve.pid and the lock token on a full disk (the daemon writes it again once there is room). */
  readonly reserve: SpaceReserve;
  private readonly queueSync: DirectorySync;
  private recovered: Envelope[] | undefined;
  /** device:inode of the folders, taken when the daemon locked the spool. */
  private identity = new Map<string, string>();

  private constructor(readonly root: string) {
    this.tmpDir = join(root, 'tmp');
    this.queueDir = join(root, 'queue');
    this.corruptDir = join(root, 'corrupt');
    this.locksDir = join(root, 'locks');
    this.locks = new MessageLocks(this.locksDir);
    this.reserve = new SpaceReserve(join(root, 'space.reserve'));
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
    await spool.reserve.spend(() => spool.locks.prepare());
    return spool;
  }

  /** Opens the spool for the daemon: takes the lock, creates the layout, runs recovery. */
  static async openForServing(root: string, log: Logger): Promise<Spool> {
    const spool = new Spool(root);
    await spool.createLayout();
    await spool.reserve.spend(() => takeDaemonLock(root));
    spool.identity = new Map([spool.root, spool.tmpDir, spool.queueDir].map((path) => [path, identityOf(statSync(path))]));
    const stale = await spool.locks.clearStale();
    if (stale > 0) log.info({ event: 'stale_locks_removed', locks: stale }, 'stale message locks removed (their holders are gone)');
    // The lock token now, not at the first delivery: on a full disk that is when it finds no room.
    await spool.reserve.spend(() => spool.locks.prepare());
    if (!(await spool.reserve.ensure())) log.warn({ event: 'spool_full', reason: 'no room for SPOOL/space.reserve' }, 'spool full at start');
    spool.recovered = await recoverSpool(spool, log);
    return spool;
  }

  private async createLayout(): Promise<void> {
    for (const dir of [this.root, this.tmpDir, this.queueDir, this.corruptDir, this.locksDir]) {
      await mkdir(dir, { recursive: true, mode: 0o700 });
    }
  }

  /** The folder (the spool, tmp/ or queue/) that is no longer the one the daemon locked at start (deleted, moved, replaced), if any. */
  async movedFolder(): Promise<string | undefined> {
    for (const [path, identity] of this.identity) {
      if ((await stat(path).then(identityOf, () => 'missing')) !== identity) return path;
    }
    return undefined;
  }

  async unlock(): Promise<void> {
    await releaseDaemonLock(this.root);
  }

  /** The envelopes start-up recovery read, once (saves the relay a second scan of the queue). */
  takeRecovered(): Envelope[] | undefined {
    const recovered = this.recovered;
    this.recovered = undefined;
    return recovered;
  }

  /** Moves a queued message's files to corrupt/ for a human to look at. */
  async quarantine(id: string, reason: string, log: Logger): Promise<void> {
    for (const name of [`${id}.env`, `${id}.msg`]) {
      await rename(join(this.queueDir, name), join(this.corruptDir, name)).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== 'ENOENT') throw error;
      });
    }
    await this.queueSync.sync();
    log.error({ event: 'corrupt_set_aside', queueId: id, reason, movedTo: this.corruptDir }, 'corrupt spool file set aside');
  }

  /** A queued message's envelope: its latest state (.env), else the one it was queued with. */
  async readEnvelope(id: string): Promise<Envelope> {
    if (this.hasLaterEnvelope(id)) return this.readLaterEnvelope(id);
    return readTrailer(this.messagePath(id), id); // ENOENT here: no such message
  }

  /**
   * readEnvelope, for a message about to be sent: a message that never changed is read
   * whole when it is small, so that its bytes come with its envelope (for openMessage).
   */
  async readForDelivery(id: string): Promise<{ envelope: Envelope; bytes?: Buffer }> {
    if (this.hasLaterEnvelope(id)) return { envelope: await this.readLaterEnvelope(id) };
    return readQueuedFile(this.messagePath(id), id);
  }

  private async readLaterEnvelope(id: string): Promise<Envelope> {
    return parseEnvelope(await readFile(this.laterEnvelopePath(id), 'utf8'), id);
  }

  /**
   * Whether <id>.env exists. Most messages never get one: a synchronous stat (a lookup in
   * a cached folder) answers without the cost of a failed asynchronous read.
   */
  private hasLaterEnvelope(id: string): boolean {
    return statSync(this.laterEnvelopePath(id), { throwIfNoEntry: false }) !== undefined;
  }

  private laterEnvelopePath(id: string): string {
    return join(this.queueDir, `${id}.env`);
  }

  /** Every queued message, oldest first. Unreadable envelopes are reported, not thrown. */
  async list(): Promise<{ envelopes: Envelope[]; unreadable: { id: string; reason: string }[] }> {
    const envelopes: Envelope[] = [];
    const unreadable: { id: string; reason: string }[] = [];
    for await (const item of this.each()) {
      if ('envelope' in item) envelopes.push(item.envelope);
      else unreadable.push(item);
    }
    return { envelopes, unreadable };
  }

  /**
   * Every queued message's envelope, oldest first, one at a time: a listing of 200,000
   * messages holds one, not all. An unreadable one comes with its reason. Read
   * synchronously (as start-up does): its callers (`queue`, a `flush` without daemon) serve
   * nobody meanwhile, and the thread pool's four hops per file cost more than the reads.
   */
  async *each(): AsyncGenerator<{ envelope: Envelope } | { id: string; reason: string }> {
    const names = (await readdir(this.queueDir)).filter((name) => name.endsWith('.msg')).sort();
    for (const name of names) {
      const id = name.slice(0, -'.msg'.length);
      try {
        yield {
          envelope: readEnvelopeSync(this.queueDir, id, this.hasLaterEnvelope(id)),
        };
      } catch (error) {
        // ENOENT: delivered and removed between readdir and read.
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') yield { id, reason: (error as Error).message };
      }
    }
  }

  /** Queued messages and their bytes on disk (envelopes included), from file sizes only: cheap enough for every `status`. */
  async summary(): Promise<{ messages: number; bytes: number }> {
    // The folder streamed, 256 stats at a time: a 200,000-message spool costs no array of names or promises.
    let messages = 0;
    let bytes = 0;
    let batch: string[] = [];
    const sizeOf = (name: string) =>
      stat(join(this.queueDir, name)).then(
        (s) => s.size,
        () => 0,
      );
    const flush = async () => {
      for (const size of await Promise.all(batch.map(sizeOf))) bytes += size;
      batch = [];
    };
    const folder = await opendir(this.queueDir, { bufferSize: 256 }).catch(() => undefined);
    if (!folder) return { messages, bytes };
    for await (const entry of folder) {
      if (!entry.name.endsWith('.msg')) continue;
      messages++;
      batch.push(entry.name);
      if (batch.length === 256) await flush();
    }
    await flush();
    return { messages, bytes };
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
    if (
      await stat(this.messagePath(id)).then(
        () => true,
        () => false,
      )
    )
      return this.readEnvelope(id);
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

  tempPath(id: string): string {
    return join(this.tmpDir, `${id}.msg`);
  }

  messagePath(id: string): string {
    return join(this.queueDir, `${id}.msg`);
  }

  /**
   * The message as delivered: the headers added after DATA, then the bytes as received
   * (without the envelope stored after them), from `bytes` when readForDelivery gave them.
   */
  openMessage(envelope: Envelope, bytes?: Buffer): Readable {
    const stored = bytes
      ? Readable.from([bytes], { objectMode: false })
      : createReadStream(this.messagePath(envelope.id), { start: 0, end: envelope.size - 1 });
    const removed = envelope.removedHeaders ?? [];
    if (!envelope.addedHeaders && removed.length === 0) return stored;
    const added = envelope.addedHeaders ? [Buffer.from(envelope.addedHeaders)] : [];
    return Readable.from(
      (async function* () {
        yield* added;
        yield* removed.length === 0 ? stored : skipRanges(stored, removed);
      })(),
      { objectMode: false },
    );
  }

  /** Replaces a queued message's envelope durably (temp, fsync, rename, folder fsync). */
  async updateEnvelope(envelope: Envelope): Promise<void> {
    await writeFileSynced(join(this.tmpDir, `${envelope.id}.env`), this.laterEnvelopePath(envelope.id), JSON.stringify(envelope));
    await this.queueSync.sync();
  }

  /**
   * Takes a message out of the queue: the message first, so a crash leaves a lone .env
   * that recovery removes. The folder is not fsynced (as Postfix does not): the message is
   * delivered or reported already, and a power cut before the file system commits the
   * removal (ext4: within 5 s) can only bring back a message that had been sent, as a crash
   * between the primary's 250 and the unlink can. On a journaled ext4, that fsync was a
   * journal commit per round of removals and cost a fifth of the drain rate.
   */
  async remove(id: string): Promise<void> {
    await unlinkIfAny(this.messagePath(id));
    if (this.hasLaterEnvelope(id)) await unlinkIfAny(this.laterEnvelopePath(id));
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

  /** The bytes written so far (for the content checks before the 250): from memory (a copy of their own) or in the temp file. */
  async contents(): Promise<MessageSource> {
    // Most messages are still all in memory (under WRITE_BATCH): no write, open, read and close to read them back.
    if (this.unwrittenBytes === this.bytes) return { bytes: ownBuffer(this.unwritten, this.unwrittenBytes) };
    await this.flush();
    return { path: this.spool.tempPath(this.id), size: this.bytes };
  }

  async readBack(): Promise<Readable> {
    return readSource(await this.contents());
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

function identityOf(stats: Stats): string {
  return `${stats.dev}:${stats.ino}`;
}

/** The bytes of `stream` outside `ranges` ([start, end) offsets, in order). */
export async function* skipRanges(stream: AsyncIterable<Buffer> | Iterable<Buffer>, ranges: ReadonlyArray<readonly [number, number]>): AsyncGenerator<Buffer> {
  let offset = 0;
  let next = 0;
  for await (const chunk of stream) {
    let at = 0;
    while (at < chunk.length) {
      const range = ranges[next];
      const position = offset + at;
      if (!range || position < range[0]) {
        const until = range ? Math.min(chunk.length, range[0] - offset) : chunk.length;
        yield chunk.subarray(at, until);
        at = until;
      } else {
        at = Math.min(chunk.length, range[1] - offset);
        if (offset + at >= range[1]) next++;
      }
    }
    offset += chunk.length;
  }
}
