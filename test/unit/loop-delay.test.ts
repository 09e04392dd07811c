import assert from 'node:assert/strict';
import { LoopDelay } from '../../src/control/metrics.js';

describe('event-loop delay (control/metrics.ts): how long the loop was held lately, for /healthz', () => {
  it('adds up the blocks of the last minute, counting only the part of an older block that falls within it', () => {
    const loop = new LoopDelay(50);
    loop.stop(); // ticks given by the test
    const t0 = performance.now();
    loop.record(t0 + 50); // on time
    loop.record(t0 + 100 + 35_000); // this tick came 35 s late: the loop was held that long
    assert.equal(Math.round(loop.heldWithin(60_000, t0 + 35_100)), 35);
    for (let at = t0 + 35_150; at <= t0 + 85_100; at += 50) loop.record(at); // on time for 50 s
    assert.equal(Math.round(loop.heldWithin(60_000, t0 + 85_100)), 10, 'the first 25 s of the block are over a minute old');
    assert.equal(loop.heldWithin(60_000, t0 + 200_000), 0);
  });

  it('reports the quantiles since the last scrape, then starts over', () => {
    const loop = new LoopDelay(50);
    loop.stop();
    const t0 = performance.now();
    loop.record(t0 + 50);
    loop.record(t0 + 100 + 300);
    const figures = loop.take()!;
    assert.deepEqual(
      Object.values(figures).map((seconds) => seconds.toFixed(3)),
      ['0.300', '0.300', '0.300'],
    );
    assert.equal(loop.take(), undefined);
  });
});
