import { parentPort, Worker, workerData, type Transferable } from 'node:worker_threads';
import { redirectConsole } from '../log.js';

/**
 * A pool of worker threads for CPU-heavy work that must not hold the event loop (a
 * message's DKIM, ARC and DMARC checks). On node:worker_threads rather than piscina: a
 * check mostly waits on DNS, so each thread runs many at once, and piscina can cancel a
 * running task only by terminating its thread, with every other task on it. Here a task
 * past its deadline is given up by the caller and cancelled in its thread (an AbortSignal),
 * and only a thread that stops answering (its heartbeat late by `stallMs`: a loop or a block
 * no bound caught), crashes or runs out of heap is terminated and replaced; its tasks fail
 * with ThreadLost.
 */

/** The thread crashed, ran out of heap, or stopped answering: its tasks have no result. */
export class ThreadLost extends Error {}
/** The task was given up at its deadline (and cancelled in its thread). */
export class PastDeadline extends Error {}
/** The task itself failed in its thread; code and syscall are the thrown error's. */
export class TaskFailed extends Error {
  code?: string;
  syscall?: string;
}

type ToThread<Task> = { id: number; task: Task } | { cancel: number };
type FromThread<Result> =
  | { beat: true }
  | { output: string; level: 'debug' | 'warn' }
  | { id: number; result: Result }
  | { id: number; error: { message: string; code?: string; syscall?: string } };

interface Waiting {
  resolve(result: unknown): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
  settled: boolean;
}

interface Slot {
  thread: Worker;
  /** Tasks sent and not answered, given up ones included: they still load the thread. */
  outstanding: Map<number, Waiting>;
  lastBeat: number;
  /** Why it is being terminated (ThreadLost's message). */
  lost?: string;
  exited: boolean;
  /** It beat at least once. */
  started: boolean;
}

export interface PoolOptions {
  threads: number;
  /** How often a thread says it is alive. */
  heartbeatMs?: number;
  /** A thread silent this long is stuck: terminated, its tasks lost. */
  stallMs?: number;
  /** V8 heap of each thread (resourceLimits.maxOldGenerationSizeMb): past it the thread dies, not the daemon. */
  maxHeapMb?: number;
  /** A thread ended other than by close(): why, and how many tasks it took. */
  onLost?(reason: string, tasks: number): void;
  /** What a library in a thread wrote to its console (the thread's stdout is the daemon's, which carries JSON lines only). */
  onOutput?(level: 'debug' | 'warn', text: string): void;
}

const HEARTBEAT_MS = 200;
const STALL_MS = 10_000;
/** How long a new thread may take to start beating. */
const STARTUP_MS = 30_000;

export class ThreadPool<Task, Result> {
  private slots: Slot[] = [];
  /** Threads it may run: started as tasks need them (a daemon that checks nothing in a thread starts none). */
  private limit: number;
  private nextId = 1;
  private closed = false;
  /** Threads in a row that died before their first beat (a script that cannot load): replaced a second later, not in a loop. */
  private deadOnArrival = 0;
  private readonly watchdog: NodeJS.Timeout;
  private lastWatch = performance.now();
  private readonly heartbeatMs: number;
  private readonly stallMs: number;

  constructor(
    private readonly script: URL,
    private readonly options: PoolOptions,
  ) {
    this.heartbeatMs = options.heartbeatMs ?? HEARTBEAT_MS;
    this.stallMs = options.stallMs ?? STALL_MS;
    this.limit = options.threads;
    this.watchdog = setInterval(() => this.watch(), Math.max(50, this.stallMs / 4)).unref();
  }

  get size(): number {
    return this.limit;
  }

  /** Threads answering, and busy ones (their heartbeat late: a long task holds them); new tasks go to the answering ones. */
  states(): { answering: number; busy: number } {
    const busy = this.slots.filter((slot) => this.late(slot, performance.now())).length;
    return { answering: this.slots.length - busy, busy };
  }

  /** Runs `task` in a thread; rejects with PastDeadline after `deadlineMs`, ThreadLost, or TaskFailed. */
  run(task: Task, deadlineMs: number, transfer?: Transferable[]): Promise<Result> {
    if (this.closed) return Promise.reject(new ThreadLost('the thread pool is closed'));
    const slot = this.pick();
    if (slot.exited) return Promise.reject(new ThreadLost(slot.lost ?? 'exited'));
    const id = this.nextId++;
    return new Promise<Result>((resolve, reject) => {
      const waiting: Waiting = {
        resolve: resolve as (result: unknown) => void,
        reject,
        settled: false,
        timer: setTimeout(() => {
          this.settle(waiting, () => reject(new PastDeadline(`not done within ${Math.round(deadlineMs)} ms`)));
          slot.thread.postMessage({ cancel: id } satisfies ToThread<Task>);
        }, deadlineMs),
      };
      slot.outstanding.set(id, waiting);
      slot.thread.postMessage({ id, task } satisfies ToThread<Task>, transfer);
    });
  }

  /** Grows or shrinks the pool (a reload): a thread taken out finishes its tasks first. */
  resize(threads: number): void {
    this.limit = threads;
    for (const slot of this.slots.splice(threads)) this.retireWhenIdle(slot);
  }

  /** Terminates every thread; what they were doing fails with ThreadLost. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.watchdog);
    const slots = this.slots.splice(0);
    await Promise.all(slots.map((slot) => this.terminate(slot, 'closed: the daemon stops')));
  }

  /**
   * A new thread while every thread has work and the limit allows; else one that answers
   * (recent heartbeat) before one busy with a heavy task, then the least loaded.
   */
  private pick(): Slot {
    if (this.slots.length < this.limit && this.slots.every((slot) => slot.outstanding.size > 0)) {
      const slot = this.spawn();
      this.slots.push(slot);
      return slot;
    }
    const now = performance.now();
    const late = (slot: Slot) => (this.late(slot, now) ? 1 : 0);
    return this.slots.reduce((best, slot) =>
      late(slot) < late(best) || (late(slot) === late(best) && slot.outstanding.size < best.outstanding.size) ? slot : best,
    );
  }

  private late(slot: Slot, now: number): boolean {
    return now - slot.lastBeat > 2 * this.heartbeatMs;
  }

  private spawn(): Slot {
    const thread = new Worker(this.script, {
      workerData: { heartbeatMs: this.heartbeatMs },
      ...(this.options.maxHeapMb ? { resourceLimits: { maxOldGenerationSizeMb: this.options.maxHeapMb } } : {}),
    });
    const slot: Slot = { thread, outstanding: new Map(), lastBeat: performance.now(), exited: false, started: false };
    thread.unref(); // tasks are awaited by the daemon; an idle pool does not keep it alive
    thread.on('message', (message: FromThread<Result>) => {
      slot.lastBeat = performance.now();
      if (!slot.started) this.deadOnArrival = 0;
      slot.started = true;
      if ('beat' in message) return;
      if ('output' in message) return this.options.onOutput?.(message.level, message.output);
      const waiting = slot.outstanding.get(message.id);
      slot.outstanding.delete(message.id);
      if (waiting) this.settle(waiting, () => ('result' in message ? waiting.resolve(message.result) : waiting.reject(taskFailed(message.error))));
      if (!this.slots.includes(slot) && slot.outstanding.size === 0) this.stop(slot, 'taken out of the pool');
    });
    thread.on('error', (error) => (slot.lost ??= error.message));
    thread.on('exit', (code) => {
      const reason = (slot.lost ??= `exited with code ${code}`);
      slot.exited = true;
      const lost = [...slot.outstanding.values()].filter((waiting) => !waiting.settled).length;
      for (const waiting of slot.outstanding.values()) this.settle(waiting, () => waiting.reject(new ThreadLost(reason)));
      slot.outstanding.clear();
      if (!this.slots.includes(slot)) return; // closed or retired
      this.options.onLost?.(reason, lost);
      const replace = () => {
        const at = this.slots.indexOf(slot);
        if (at !== -1 && !this.closed) this.slots[at] = this.spawn();
      };
      if (!slot.started) this.deadOnArrival++;
      if (this.deadOnArrival < 2) replace();
      else setTimeout(replace, 1000).unref();
    });
    return slot;
  }

  private settle(waiting: Waiting, outcome: () => void): void {
    if (waiting.settled) return;
    waiting.settled = true;
    clearTimeout(waiting.timer);
    outcome();
  }

  private retireWhenIdle(slot: Slot): void {
    if (slot.outstanding.size === 0) this.stop(slot, 'taken out of the pool');
  }

  private async terminate(slot: Slot, reason: string): Promise<void> {
    slot.lost ??= reason;
    await slot.thread.terminate();
  }

  /** terminate() without waiting: its 'exit' handler does the rest. */
  private stop(slot: Slot, reason: string): void {
    this.terminate(slot, reason).catch(() => undefined);
  }

  /** Terminates threads whose heartbeat stopped; skips a round when this loop itself was held (their beats are still queued). */
  private watch(): void {
    const now = performance.now();
    const held = now - this.lastWatch > this.stallMs / 2;
    this.lastWatch = now;
    if (held) return;
    for (const slot of this.slots) {
      // A thread still loading its modules (seconds on a loaded machine) is not stuck yet.
      const limit = slot.started ? this.stallMs : Math.max(this.stallMs, STARTUP_MS);
      if (slot.lost === undefined && now - slot.lastBeat > limit) this.stop(slot, `stopped answering for ${Math.round((now - slot.lastBeat) / 1000)} s`);
    }
  }
}

function taskFailed(error: { message: string; code?: string; syscall?: string }): TaskFailed {
  return Object.assign(new TaskFailed(error.message), error.code ? { code: error.code } : {}, error.syscall ? { syscall: error.syscall } : {});
}

/**
 * The thread's side: answers each task with `handler` (many at once; a cancelled one's
 * signal aborts) and beats every heartbeatMs, so the pool can tell a busy thread from a
 * stuck one. Its console goes to the pool's onOutput.
 */
export function serveTasks<Task, Result>(handler: (task: Task, signal: AbortSignal) => Promise<Result>): void {
  const port = parentPort!;
  redirectConsole((level, output) => port.postMessage({ output, level } satisfies FromThread<Result>));
  const running = new Map<number, AbortController>();
  port.on('message', (message: ToThread<Task>) => {
    if ('cancel' in message) {
      running.get(message.cancel)?.abort();
      return;
    }
    const { id, task } = message;
    const controller = new AbortController();
    running.set(id, controller);
    handler(task, controller.signal)
      .finally(() => running.delete(id))
      .then(
        (result) => port.postMessage({ id, result } satisfies FromThread<Result>),
        (error: NodeJS.ErrnoException) =>
          port.postMessage({
            id,
            error: { message: error instanceof Error ? error.message : String(error), code: error?.code, syscall: error?.syscall },
          } satisfies FromThread<Result>),
      );
  });
  setInterval(() => port.postMessage({ beat: true } satisfies FromThread<Result>), (workerData as { heartbeatMs: number }).heartbeatMs);
}
