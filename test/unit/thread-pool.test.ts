import assert from 'node:assert/strict';
import { waitFor } from '../helpers/wait.js';
import { PastDeadline, TaskFailed, ThreadLost, ThreadPool } from '../../src/threads/pool.js';

type FixtureTask =
  { do: 'echo'; value: string } | { do: 'wait' | 'cancelled' | 'spin' | 'eat' } | { do: 'exit'; code: number } | { do: 'fail'; code: string; syscall: string };
const FIXTURE = new URL('../fixtures/pool-thread.mjs', import.meta.url);
type Answer = { threadId: number; value?: string | number };

describe('thread pool (threads/pool.ts) with real threads', () => {
  let pool: ThreadPool<FixtureTask, Answer>;
  const lost: string[] = [];
  const start = (threads = 2, stallMs = 1000) => {
    pool = new ThreadPool<FixtureTask, Answer>(FIXTURE, { threads, heartbeatMs: 50, stallMs, maxHeapMb: 32, onLost: (reason) => lost.push(reason) });
  };
  afterEach(async () => {
    await pool.close();
    lost.length = 0;
  });

  it('runs tasks in its threads and answers them', async () => {
    start();
    const answers = await Promise.all(Array.from({ length: 10 }, (_, i) => pool.run({ do: 'echo', value: `v${i}` }, 20_000)));
    assert.deepEqual(
      answers.map((answer) => answer.value),
      Array.from({ length: 10 }, (_, i) => `v${i}`),
    );
    assert.equal(new Set(answers.map((answer) => answer.threadId)).size, 2, 'both threads took tasks');
  });

  it('gives a task up at its deadline and cancels it in its thread, which goes on serving', async () => {
    start(1);
    await assert.rejects(pool.run({ do: 'wait' }, 100), PastDeadline);
    const after = await pool.run({ do: 'cancelled' }, 20_000);
    assert.equal(after.value, 1, 'the thread saw the cancellation');
    assert.deepEqual(lost, [], 'no thread was terminated');
  });

  it('terminates a thread that stops answering: its tasks fail with ThreadLost, a new thread takes the next ones', async () => {
    start(1, 500);
    await pool.run({ do: 'echo', value: 'started' }, 20_000); // a thread still starting is given longer
    const spinning = pool.run({ do: 'spin' }, 60_000);
    const waiting = pool.run({ do: 'wait' }, 60_000); // on the same thread: lost with it
    await assert.rejects(spinning, (error: Error) => error instanceof ThreadLost && /stopped answering/.test(error.message));
    await assert.rejects(waiting, ThreadLost);
    assert.equal(lost.length, 1);
    assert.equal((await pool.run({ do: 'echo', value: 'again' }, 20_000)).value, 'again');
  });

  it('replaces a thread that exits, and one that runs out of heap (resourceLimits), without taking the daemon down', async () => {
    start(1);
    await assert.rejects(pool.run({ do: 'exit', code: 3 }, 20_000), (error: Error) => error instanceof ThreadLost && /code 3/.test(error.message));
    assert.equal((await pool.run({ do: 'echo', value: 'after exit' }, 20_000)).value, 'after exit');
    await assert.rejects(pool.run({ do: 'eat' }, 60_000), (error: Error) => error instanceof ThreadLost && /memory/i.test(error.message));
    assert.equal((await pool.run({ do: 'echo', value: 'after heap' }, 20_000)).value, 'after heap');
    assert.equal(lost.length, 2);
  });

  it("passes a failing task its error code and syscall (a temp file that cannot be read is the spool's fault)", async () => {
    start(1);
    await assert.rejects(pool.run({ do: 'fail', code: 'EIO', syscall: 'read' }, 20_000), (error: TaskFailed) => {
      assert.ok(error instanceof TaskFailed);
      assert.deepEqual([error.message, error.code, error.syscall], ['no such file', 'EIO', 'read']);
      return true;
    });
  });

  it('sends new tasks to a thread that answers rather than to one held by a heavy task', async () => {
    start(2, 60_000);
    const spinning = pool.run({ do: 'spin' }, 60_000).catch(() => undefined);
    const held = (await pool.run({ do: 'echo', value: 'probe' }, 20_000)).threadId; // the other thread answered
    await waitFor(() => pool.states().busy === 1); // the spinning thread's heartbeat is late
    const answers = await Promise.all(Array.from({ length: 6 }, () => pool.run({ do: 'echo', value: 'x' }, 20_000)));
    assert.deepEqual(new Set(answers.map((answer) => answer.threadId)), new Set([held]));
    await pool.close();
    await spinning;
  });

  it('resizes: a thread taken out finishes its task first', async () => {
    start(2);
    const first = await Promise.all([pool.run({ do: 'echo', value: 'a' }, 20_000), pool.run({ do: 'echo', value: 'b' }, 20_000)]);
    assert.equal(new Set(first.map((answer) => answer.threadId)).size, 2);
    pool.resize(1);
    assert.equal(pool.size, 1);
    const answers = await Promise.all(Array.from({ length: 4 }, () => pool.run({ do: 'echo', value: 'c' }, 20_000)));
    assert.equal(new Set(answers.map((answer) => answer.threadId)).size, 1);
    pool.resize(3);
    assert.equal(pool.size, 3);
  });
});
