import { domainOf } from '../mail/address.js';
import type { Envelope, Recipient } from '../spool/envelope.js';
import { MinHeap } from './heap.js';

/** Where a pending recipient goes: a route key ("host:port", or "mx:domain" for a DSN). */
export type RouteOf = (kind: Envelope['kind'], recipient: Pick<Recipient, 'address' | 'source'>) => string;

/**
 * One shared array per set of route keys: 200,000 messages to one primary hold one array
 * between them, not one each (an array grown by push reserves 17 slots).
 */
const keyLists = new Map<string, readonly string[]>();
function keyList(keys: readonly string[]): readonly string[] {
  const unique = keys.length < 2 ? keys : [...new Set(keys)];
  const name = unique.join('\n');
  let list = keyLists.get(name);
  if (list) return list;
  if (keyLists.size >= 10_000) keyLists.clear(); // DSN routes name sender domains: bounded; the lists in use stay valid
  keyLists.set(name, (list = Object.freeze([...unique])));
  return list;
}

/** Whether the message still has a pending recipient in `domain` (a flush --domain). */
export function hasPendingIn(entry: Scheduled, domain: string): boolean {
  return entry.pending.some((r) => domainOf(r.address) === domain);
}

export interface SchedulePolicy {
  /** Seconds a message may wait before its pending recipients expire. */
  queueLifetime: number;
  /** Seconds before the one delay notice; 0: none. */
  delayWarning: number;
  /** Seconds a retry waits at most: a stored next attempt further away (written while the wall clock was ahead) is brought back to it. */
  maxBackoff: number;
}

/** What the scheduler knows of one queued message: enough to decide when and where, nothing to deliver with. */
export interface Scheduled {
  readonly id: string;
  /** Epoch ms before which it is not attempted (backoff). */
  due: number;
  /** Epoch ms of its arrival, by the wall clock (shown: the oldest message's age). */
  readonly arrival: number;
  /** Its arrival on the schedule's clock, which lifetimes count from. */
  readonly since: number;
  /** Bytes of its message file. */
  readonly size: number;
  /** Epoch ms at which its pending recipients expire. */
  expires: number;
  /** Epoch ms of its delay notice; Infinity when none is owed. */
  warnAt: number;
  /** A notice was recorded but not yet queued (a crash or a storage fault came between). */
  readonly noticePending: boolean;
  readonly held: boolean;
  readonly kind: Envelope['kind'];
  /** What routing needs of its pending recipients (not their replies: 200,000 queued messages are held here). */
  readonly pending: readonly Pick<Recipient, 'address' | 'source'>[];
  /** Route keys that still have pending recipients of it (arrays, not Sets: a message has one or two). */
  routes: readonly string[];
  /** Epoch ms before which nothing is tried on it: another process held it (a concurrent flush or queue edit). */
  blockedUntil: number;
  /** When its timer fires; Infinity when none is set. */
  timerAt: number;
  /** Routes whose ready queue holds it. */
  readyFor: readonly string[];
}

/** Work on a message other than a delivery attempt, under its lock. */
export type Chore = 'expire' | 'warn' | 'notice';

/** Seconds before the next attempt after `deferrals` temporary failures: doubling from min, capped at max (Postfix's). */
export function backoff(deferrals: number, min: number, max: number): number {
  return Math.min(min * 2 ** Math.max(0, deferrals - 1), max);
}

/**
 * The queue's schedule, without I/O and without a clock of its own (every call is
 * given `now`): which message is due on which route, and which needs a chore. It never
 * scans the whole index (it holds the spool: 100,000s of messages while a primary is
 * down): a timer heap holds each message's next event (due, delay notice, expiry), and
 * each route has a ready heap of due messages, oldest first. Heap items go stale when
 * a message is re-indexed or taken; they are recognised and dropped when popped.
 */
export class Schedule {
  private readonly entries = new Map<string, Scheduled>();
  private readonly busy = new Set<string>();
  private readonly timers = new MinHeap<{ at: number; entry: Scheduled }>((a, b) => a.at < b.at);
  private readonly ready = new Map<string, MinHeap<Scheduled>>();
  private readonly chores: Array<{ chore: Chore; entry: Scheduled }> = [];
  /** Indexed messages per route. */
  private readonly users = new Map<string, number>();
  private totalBytes = 0;

  constructor(
    private policy: SchedulePolicy,
    private routeOf: RouteOf,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** Bytes of the indexed messages' files (`status`, metrics: counted as they come and go, no scan). */
  get bytes(): number {
    return this.totalBytes;
  }

  get(id: string): Scheduled | undefined {
    return this.entries.get(id);
  }

  values(): IterableIterator<Scheduled> {
    return this.entries.values();
  }

  /**
   * (Re)indexes a message from its envelope; one with nothing pending leaves the index.
   * `now` is the schedule's clock, `wallNow` the wall clock the envelope's times were
   * written by (they differ once the wall clock was stepped).
   */
  index(envelope: Envelope, now: number, wallNow = now): Scheduled | undefined {
    const pending = envelope.recipients.filter((r) => r.state === 'pending');
    this.delete(envelope.id);
    if (pending.length === 0 && !envelope.notice) return undefined;
    const arrival = Date.parse(envelope.arrival);
    const since = arrival + now - wallNow;
    const { queueLifetime, delayWarning, maxBackoff } = this.policy;
    const entry: Scheduled = {
      id: envelope.id,
      due: envelope.nextAttempt ? Math.min(Date.parse(envelope.nextAttempt) + now - wallNow, now + maxBackoff * 1000) : 0,
      arrival,
      since,
      size: envelope.size,
      expires: since + queueLifetime * 1000,
      warnAt: delayWarning > 0 && !envelope.delayWarned && envelope.kind !== 'dsn' ? since + delayWarning * 1000 : Infinity,
      noticePending: Boolean(envelope.notice),
      held: Boolean(envelope.held),
      kind: envelope.kind,
      pending: pending.map(({ address, source }) => (source === undefined ? { address } : { address, source })),
      routes: keyList(pending.map((r) => this.routeOf(envelope.kind, r))),
      blockedUntil: 0,
      timerAt: Infinity,
      readyFor: keyList([]),
    };
    this.entries.set(envelope.id, entry);
    this.count(entry, 1);
    if (entry.noticePending) this.chores.push({ chore: 'notice', entry });
    else this.setTimer(entry, Math.min(entry.due, entry.warnAt, entry.expires), now);
    return entry;
  }

  delete(id: string): void {
    const entry = this.entries.get(id);
    if (!entry) return;
    this.entries.delete(id);
    this.count(entry, -1);
  }

  /** Whether any indexed message has pending recipients on this route. */
  uses(route: string): boolean {
    return (this.users.get(route) ?? 0) > 0;
  }

  private count(entry: Scheduled, delta: 1 | -1): void {
    this.totalBytes += delta * entry.size;
    for (const key of entry.routes) {
      const users = (this.users.get(key) ?? 0) + delta;
      if (users > 0) this.users.set(key, users);
      else this.users.delete(key);
    }
  }

  /** New lifetimes and routes (a reloaded config) for every indexed message. */
  reconfigure(policy: SchedulePolicy, routeOf: RouteOf, now: number): void {
    this.policy = policy;
    this.routeOf = routeOf;
    this.users.clear();
    this.totalBytes = 0; // counted again below
    for (const entry of this.entries.values()) {
      const { queueLifetime, delayWarning } = policy;
      entry.expires = entry.since + queueLifetime * 1000;
      if (entry.warnAt !== Infinity) entry.warnAt = delayWarning > 0 ? entry.since + delayWarning * 1000 : Infinity;
      entry.routes = keyList(entry.pending.map((r) => routeOf(entry.kind, r)));
      this.count(entry, 1);
      entry.readyFor = keyList([]);
      entry.timerAt = Infinity;
      this.setTimer(entry, now, now);
    }
    this.ready.clear();
  }

  /** Marks a message taken by a job: nothing else is handed it until finish(). */
  take(entry: Scheduled): void {
    this.busy.add(entry.id);
  }

  isBusy(id: string): boolean {
    return this.busy.has(id);
  }

  /** Ends a job: the message (as the job left it, re-indexed or not) is examined again. */
  finish(entry: Scheduled, now: number): void {
    this.busy.delete(entry.id);
    const current = this.entries.get(entry.id);
    if (current) this.examine(current, now);
  }

  /** Looks at a message again now (a flush sets due to 0 first). */
  touch(entry: Scheduled, now: number): void {
    this.examine(entry, now);
  }

  /** Fires the timers that are due: due messages join their routes' ready queues, expiries and notices become chores. */
  advance(now: number): void {
    for (let timer = this.timers.peek(); timer && timer.at <= now; timer = this.timers.peek()) {
      this.timers.pop();
      const { entry } = timer;
      if (this.entries.get(entry.id) !== entry || entry.timerAt !== timer.at) continue; // superseded
      entry.timerAt = Infinity;
      this.examine(entry, now);
    }
  }

  /** The next chore to run, if any (each is handed out once; finish() re-examines the message). */
  nextChore(): { chore: Chore; entry: Scheduled } | undefined {
    for (let item = this.chores.shift(); item; item = this.chores.shift()) {
      if (this.entries.get(item.entry.id) === item.entry && !this.busy.has(item.entry.id)) return item;
    }
    return undefined;
  }

  /** Routes that have messages ready. */
  readyRoutes(): string[] {
    return [...this.ready].filter(([, queue]) => queue.size > 0).map(([key]) => key);
  }

  readyCount(route: string): number {
    return this.ready.get(route)?.size ?? 0;
  }

  /** The oldest ready message for this route; stale queue items are dropped on the way. */
  next(route: string, now: number): Scheduled | undefined {
    const queue = this.ready.get(route);
    for (let entry = queue?.pop(); entry; entry = queue?.pop()) {
      entry.readyFor = keyList(entry.readyFor.filter((key) => key !== route));
      if (this.entries.get(entry.id) !== entry || !entry.routes.includes(route)) continue;
      if (entry.held || entry.due > now || entry.blockedUntil > now || this.busy.has(entry.id)) continue; // its timer or job brings it back
      return entry;
    }
    if (queue?.size === 0) this.ready.delete(route);
    return undefined;
  }

  /** Epoch ms of the next timer; Infinity when none. */
  nextWake(): number {
    return this.timers.peek()?.at ?? Infinity;
  }

  private examine(entry: Scheduled, now: number): void {
    if (entry.held || this.busy.has(entry.id)) return; // a release or the end of its job re-examines it
    if (entry.blockedUntil > now) return this.setTimer(entry, entry.blockedUntil, now);
    if (entry.noticePending) return void this.chores.push({ chore: 'notice', entry });
    if (now >= entry.expires) return void this.chores.push({ chore: 'expire', entry });
    if (now >= entry.warnAt) return void this.chores.push({ chore: 'warn', entry });
    if (entry.due > now) return this.setTimer(entry, Math.min(entry.due, entry.warnAt, entry.expires), now);
    this.setTimer(entry, Math.min(entry.warnAt, entry.expires), now); // it may wait for a down route that long
    for (const key of entry.routes) {
      if (entry.readyFor.includes(key)) continue;
      entry.readyFor = keyList([...entry.readyFor, key]);
      let queue = this.ready.get(key);
      if (!queue) this.ready.set(key, (queue = new MinHeap<Scheduled>((a, b) => a.id < b.id))); // ids sort by arrival
      queue.push(entry);
    }
  }

  private setTimer(entry: Scheduled, at: number, now: number): void {
    if (at === Infinity || at >= entry.timerAt) return; // the earlier timer re-examines it anyway
    entry.timerAt = Math.max(at, now);
    this.timers.push({ at: entry.timerAt, entry });
  }
}
