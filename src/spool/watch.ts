import { EventEmitter } from 'node:events';
import { statfs } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { Spool } from './spool.js';

/** 'gone': the folders the daemon locked are no longer at the spool's path; 'low': too little free space to take a message. */
export type SpoolCondition = 'ok' | 'low' | 'gone';

/** How often the spool's folders and free space are looked at. */
const INTERVAL_MS = 1000;

/**
 * Watches what the SMTP side depends on: that the spool at the configured path is
 * still the one this daemon locked and recovered (not deleted, moved or replaced), and
 * that it has room for a message (Postfix's rule: 1.5 × the size limit free, else MAIL
 * gets 452). One log line per change of condition; 'change' events for the relay.
 */
export class SpoolWatch extends EventEmitter {
  private condition: SpoolCondition = 'ok';
  private why: string | undefined;
  private bytesFree = Infinity;
  private timer: NodeJS.Timeout | undefined;

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

  async check(): Promise<void> {
    const moved = await this.spool.movedFolder();
    if (!moved)
      this.bytesFree = await statfs(this.spool.root).then(
        (s) => s.bavail * s.bsize,
        () => Infinity,
      );
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
