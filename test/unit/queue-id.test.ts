import assert from 'node:assert/strict';
import { newQueueId, QUEUE_ID } from '../../src/spool/queue-id.js';

describe('queue ids', () => {
  it('are well-formed, distinct across many refills of the random pool, and sort by time', () => {
    const ids = Array.from({ length: 5000 }, () => newQueueId(1_700_000_000_000));
    assert.ok(ids.every((id) => QUEUE_ID.test(id)));
    assert.equal(new Set(ids).size, ids.length);
    assert.equal(new Set(ids.map((id) => id.slice(9))).size, ids.length, 'the random part alone is distinct');
    assert.ok(newQueueId(1_700_000_000_000) < newQueueId(1_700_000_000_001));
  });
});
