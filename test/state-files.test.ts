import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
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

  it('appends changes as lines, rewrites the file once it has doubled, and reads it back (a torn last line skipped)', async () => {
    const { log } = capture();
    mkdirSync(join(dir, 'tmp')); // where the spool's rewrites are made
    const store = new ExpiringStore<number>(dir, 'log', log);
    const lines = () => readFileSync(join(dir, 'log.json'), 'utf8').split('\n').filter(Boolean).length;
    const round = async (n: number) => {
      for (let i = 0; i < 1000; i++) store.set(`k${i}`, n * 1000 + i, 3600);
      await store.save();
    };
    await round(0);
    assert.equal(lines(), 1000);
    await round(1);
    assert.equal(lines(), 2000, 'appended');
    await round(2);
    assert.equal(lines(), 1000, 'past twice the cache: rewritten with the live entries');
    for (let i = 0; i < 10; i++) store.set(`new${i}`, i, 3600);
    await store.save();
    writeFileSync(join(dir, 'log.json'), `${readFileSync(join(dir, 'log.json'), 'utf8')}{"k":"torn","u":`);
    const again = new ExpiringStore<number>(dir, 'log', log);
    assert.equal(again.size, 1010);
    assert.equal(again.get('k999'), 2999);
    assert.equal(again.get('new9'), 9);
  });

  it('refuses a file larger than 100,000 entries can be, and one of the wrong shape', () => {
    const { lines, log } = capture();
    writeFileSync(join(dir, 'big.json'), '');
    truncateSync(join(dir, 'big.json'), 205 * 1000 * 1024); // sparse: refused by its size, before any read
    assert.equal(new ExpiringStore(dir, 'big', log).size, 0);
    writeFileSync(join(dir, 'list.json'), '[1,2,3]');
    assert.equal(new ExpiringStore(dir, 'list', log).size, 0);
    assert.deepEqual(
      lines.map((line) => line.reason),
      ['209920000 bytes, over the 204800000 a valid one can have', 'not a JSON object'],
    );
  });
});
