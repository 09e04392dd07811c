import assert from 'node:assert/strict';
import { MinHeap } from '../src/relay/heap.js';

describe('relay: the scheduler heap', () => {
  it('pops every item in order, whatever the order of pushes, with duplicates', () => {
    const heap = new MinHeap<number>((a, b) => a < b);
    const values = Array.from({ length: 2000 }, (_, i) => (i * 7919) % 1009);
    for (const value of values) heap.push(value);
    assert.equal(heap.size, values.length);
    const popped: number[] = [];
    for (let value = heap.pop(); value !== undefined; value = heap.pop()) popped.push(value);
    assert.deepEqual(
      popped,
      [...values].sort((a, b) => a - b),
    );
    assert.equal(heap.peek(), undefined);
  });
});
