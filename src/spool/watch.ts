import { EventEmitter } from 'node:events';
import { statfs } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { Spool } from './spool.js';

/** 'gone': the folders the daemon locked are no longer at the spool's path; 'low': too little free space to take a message. */
export type SpoolCondition = 'ok' | 'low' | 'gone';

/** Room promised to SMTP transactions between the looks at the free space. */
export interface SpaceReservations {
  reserve(key: string, bytes: number): boolean;
  grow(key: string, bytes: number): void;
  release(key: string, written?: number): void;
}

/** How often the spool's folders and free space are looked at. */
const INTERVAL_MS = 1000;

/**
 * Watches what the SMTP side depends on: that the spool at the configured path is
 * still the one this daemon locked and recovered (not deleted, moved or replaced), and
 * that it has room for a message (Postfix's rule: 1.5 × the size limit free, else MAIL
 * gets 452). One log line per change of condition; 'change' events for the relay.
 */
export class SpoolWatch extends EventEmitter implements SpaceReservations {
  private condition: SpoolCondition = 'ok';
  private why: string | undefined;
  private bytesFree = Infinity;
  private timer: NodeJS.Timeout | undefined;
  /** Bytes promised to open transactions, by session: what they declared (SIZE), else the size limit. */
  private readonly promised = new Map<string, number>();
  private promisedBytes = 0;
  /** Bytes of messages committed since the free space was last read (statfs does not show them yet). */
  private writtenSinceLook = 0;

  constructor(
    private readonly spool: Spool,
    private minFree: number,
    private readonly log: Logger,
  ) {
    super();
  }

  /** The first look, then one every second. */
  async start(): Promise<void> {
    await this.check();
    this.timer = setInterval(() => {
      this.check().catch((error: unknown) => this.log.error({ err: error }, 'spool watch failed'));
    }, INTERVAL_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** A new limits.messageSize (SIGHUP). */
  updateMinFree(minFree: number): void {
    this.minFree = minFree;
  }

  get state(): SpoolCondition {
    return this.condition;
  }

  /** Why the spool cannot take mail, when it cannot. */
  get problem(): string | undefined {
    return this.why;
  }

  get freeBytes(): number {
    return this.bytesFree;
  }

  /**
   * A new transaction that may write `bytes`: taken when the free space, less what open
   * transactions were promised and what was written since the last look, keeps
   * 1.5 × limits.messageSize (ten senders at once each saw room for one message, and took
   * a 2 MB spool to 4 KB free).
   */
  reserve(key: string, bytes: number): boolean {
    this.release(key);
    if (this.bytesFree - this.promisedBytes - this.writtenSinceLook < this.minFree) return false;
    this.promised.set(key, bytes);
    this.promisedBytes += bytes;
    return true;
  }

  /** The transaction wrote more than it declared: what it holds grows with it (its limit still bounds it). */
  grow(key: string, bytes: number): void {
    const held = this.promised.get(key);
    if (held === undefined || bytes <= held) return;
    this.promised.set(key, bytes);
    this.promisedBytes += bytes - held;
  }

  /** The transaction ended; `written` bytes were committed to the spool. */
  release(key: string, written = 0): void {
    this.promisedBytes -= this.promised.get(key) ?? 0;
    this.promised.delete(key);
    this.writtenSinceLook += written;
  }

  async check(): Promise<void> {
    const moved = await this.spool.movedFolder();
    const written = this.writtenSinceLook;
    if (!moved)
      this.bytesFree = await statfs(this.spool.root).then(
        (s) => s.bavail * s.bsize,
        () => Infinity,
      );
    this.writtenSinceLook -= written; // shown by statfs now
    const [condition, why] = moved
      ? (['gone', `spool ${moved} is not the folder this daemon locked (deleted, moved or replaced): restart the daemon`] as const)
      : this.bytesFree < this.minFree
        ? (['low', `spool nearly full: ${mb(this.bytesFree)} free, a message may need ${mb(this.minFree)} (1.5 × limits.messageSize)`] as const)
        : (['ok', undefined] as const);
    if (condition === this.condition) return;
    const before = this.condition;
    this.condition = condition;
    this.why = why;
    if (condition === 'ok') this.log.info({ event: 'spool_ok', was: before }, 'spool can take mail again');
    else this.log.error({ event: condition === 'gone' ? 'spool_gone' : 'spool_low', reason: why }, `${why}: MAIL is refused meanwhile`);
    this.emit('change', condition);
  }
}

function mb(bytes: number): string {
  return `${(bytes / 1_048_576).toFixed(1)} MB`;
}
