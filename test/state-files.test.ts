import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createLogger } from '../src/log.js';
import { ExpiringStore } from '../src/screen/expiring-store.js';
import { startTestDaemon } from './helpers/daemon.js';

/** A logger whose lines land in `lines`. */
function capture(): { lines: Array<Record<string, unknown>>; log: ReturnType<typeof createLogger> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line) as Record<string, unknown>);
      callback();
    },
  });
  return { lines, log: createLogger('info', sink) };
}

describe('state files in the spool: caches read as what they must be', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'secondarymx-state-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('starts the daemon past a FIFO where a cache file should be (it hung before its first log line)', async () => {
    const spoolDir = join(dir, 'spool');
    mkdirSync(spoolDir);
    execFileSync('mkfifo', [join(spoolDir, 'verified-recipients.json'), join(spoolDir, 'primaries.json')]);
    const mx = await startTestDaemon({ spoolDir });
    try {
      const line = mx.logs.find((entry) => entry.event === 'cache_unusable');
      assert.equal(line?.reason, 'not a regular file');
    } finally {
      await mx.stop();
    }
  });

  it('follows no symlink and never logs what a file holds', async () => {
    const secret = join(dir, 'shadow');
    writeFileSync(secret, 'root:$6$SECRETHASH:19000:0:99999:7:::\n');
    const spoolDir = join(dir, 'spool');
    mkdirSync(spoolDir);
    symlinkSync(secret, join(spoolDir, 'greeting-passes.json'));
    writeFileSync(join(spoolDir, 'verified-recipients.json'), 'root:$6$SECRETHASH:19000\n'); // a regular file, not JSON
    const mx = await startTestDaemon({ spoolDir });
    try {
      const reasons = mx.logs.filter((entry) => entry.event === 'cache_unusable').map((entry) => entry.reason);
      assert.deepEqual(reasons.sort(), ['a symbolic link, not followed', 'not JSON']);
      assert.ok(!JSON.stringify(mx.logs).includes('SECRETHASH'));
    } finally {
      await mx.stop();
    }
  });

  it('keeps at most 100,000 entries of a larger file, the newest', () => {
    const until = Date.now() + 3_600_000;
    const entries = Array.from({ length: 300_000 }, (_, i) => `"c${i}":{"until":${until},"value":true}`);
    writeFileSync(join(dir, 'greeting-passes.json'), `{${entries.join(',')}}`);
    const store = new ExpiringStore<true>(dir, 'greeting-passes', capture().log);
    assert.equal(store.size, 100_000);
    assert.equal(store.get('c299999'), true);
    assert.equal(store.get('c199999'), undefined);
  });

  it('refuses a file larger than 100,000 entries can be, and one of the wrong shape', () => {
    const { lines, log } = capture();
    writeFileSync(join(dir, 'big.json'), `{"a":{"until":1,"value":"${'x'.repeat(100 * 1024 * 1024)}"}}`);
    assert.equal(new ExpiringStore(dir, 'big', log).size, 0);
    writeFileSync(join(dir, 'list.json'), '[1,2,3]');
    assert.equal(new ExpiringStore(dir, 'list', log).size, 0);
    assert.deepEqual(
      lines.map((line) => line.reason),
      ['104857628 bytes, over the 102400000 a valid one can have', 'not a JSON object'],
    );
  });
});
