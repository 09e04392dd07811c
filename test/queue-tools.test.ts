import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { runCli, spawnDaemon } from './helpers/cli.js';
import { baseConfig, writeTestConfig } from './helpers/daemon.js';
import { queuedEnvelope, queuedIds, queueWaiting } from './helpers/spool-files.js';

interface Row {
  id: string;
  sender: string;
  state: string;
}

/** A spool of six messages: senders, recipient domains and ages to select by. */
async function fillSpool(spoolDir: string): Promise<Record<string, string>> {
  const messages = [
    { subject: 'fresh-d1', sender: 'a@remote.example', recipients: ['alice@d1.example'], minutesAgo: 1 },
    { subject: 'fresh-d2', sender: 'a@remote.example', recipients: ['x@d2.example', 'y@d2.example'], minutesAgo: 3 },
    { subject: 'old-d2', sender: 'b@spam.example', recipients: ['x@d2.example'], minutesAgo: 130 },
    { subject: 'old-both', sender: 'c@spam.example', recipients: ['alice@d1.example', 'x@d2.example'], minutesAgo: 700 },
    { subject: 'ancient-d3', sender: '', recipients: ['z@d3.example'], minutesAgo: 3000 },
    { subject: 'delivered-d2', sender: 'a@remote.example', recipients: ['x@d2.example'], minutesAgo: 30, delivered: true },
  ];
  const ids = await queueWaiting(spoolDir, messages);
  return Object.fromEntries(messages.map((m, i) => [m.subject, ids[i]]));
}

describe('queue tools: selections, bulk edits and qshape', () => {
  let dir: string;
  let file: string;
  let ids: Record<string, string>;
  const cli = async (...args: string[]) => runCli([...args, '--config', file]);
  const listed = async (...selection: string[]) => {
    const result = await cli('queue', 'list', '--json', ...selection);
    assert.equal(result.status, 0, result.stderr);
    return (JSON.parse(result.stdout) as Row[]).map((row) => Object.entries(ids).find(([, id]) => id === row.id)![0]);
  };
  beforeEach(async () => {
    ({ dir, file } = writeTestConfig(baseConfig()));
    ids = await fillSpool(join(dir, 'spool'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('lists what a selection picks: domain (pending recipients), sender, "@domain", "<>", recipient, age', async () => {
    assert.deepEqual(await listed('--domain', 'd2.example'), ['old-both', 'old-d2', 'fresh-d2']);
    assert.deepEqual(await listed('--sender', '@spam.example'), ['old-both', 'old-d2']);
    assert.deepEqual(await listed('--sender', 'A@Remote.example', '--domain', 'd2.example'), ['fresh-d2']);
    assert.deepEqual(await listed('--sender', '<>'), ['ancient-d3']);
    assert.deepEqual(await listed('--recipient', 'alice@d1.example'), ['old-both', 'fresh-d1']);
    assert.deepEqual(await listed('--older-than', '2h'), ['ancient-d3', 'old-both', 'old-d2']);
    const bad = await cli('queue', 'list', '--older-than', 'soon');
    assert.equal(bad.status, 64);
    assert.match(bad.stderr, /--older-than: expected a duration/);
  });

  it("summarises the queue as Postfix's qshape: recipient domains by age bucket, with a total", async () => {
    const json = await cli('queue', 'summary', '--json');
    assert.equal(json.status, 0, json.stderr);
    const shape = JSON.parse(json.stdout) as { buckets: string[]; rows: Array<{ domain: string; total: number; counts: number[] }> };
    assert.deepEqual(shape.buckets, ['5', '10', '20', '40', '80', '160', '320', '640', '1280', '1280+']);
    const row = (domain: string) => shape.rows.find((r) => r.domain === domain);
    assert.deepEqual(row('TOTAL'), { domain: 'TOTAL', total: 5, counts: [2, 0, 0, 0, 0, 1, 0, 0, 1, 1] });
    assert.deepEqual(row('d2.example'), { domain: 'd2.example', total: 3, counts: [1, 0, 0, 0, 0, 1, 0, 0, 1, 0] });
    assert.deepEqual(row('d1.example')?.total, 2);
    assert.deepEqual(row('d3.example')?.counts, [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert.equal(shape.rows[0].domain, 'TOTAL');
    const text = await cli('queue', 'summary', '--sender', '@spam.example');
    assert.match(text.stdout, /^ +T +5 +10 .* 1280\+$/m);
    assert.match(text.stdout, /^ +TOTAL +2 +0 +0 +0 +0 +0 +1 +0 +0 +1 +0$/m);
  });

  it('refuses a bulk edit off a terminal without --yes (nothing changed), needs a selection or an id, and edits on the spool without a daemon', async () => {
    const unconfirmed = await cli('queue', 'delete', '--sender', '@spam.example');
    assert.equal(unconfirmed.status, 64);
    assert.match(unconfirmed.stdout, /^2 messages match$/m);
    assert.match(unconfirmed.stderr, /not on a terminal: add --yes to delete 2 messages/);
    assert.equal(queuedIds(join(dir, 'spool')).length, 6);
    assert.equal((await cli('queue', 'hold')).status, 64);
    assert.match((await cli('queue', 'hold', ids['fresh-d1'], '--all')).stderr, /a queue id or a selection/);

    const deleted = await cli('queue', 'delete', '--sender', '@spam.example', '--yes');
    assert.equal(deleted.status, 0, deleted.stderr);
    assert.match(deleted.stdout, /queue delete \(standalone\): 2 deleted, 0 gone meanwhile, 0 being delivered/);
    assert.deepEqual((await listed()).sort(), ['ancient-d3', 'delivered-d2', 'fresh-d1', 'fresh-d2']);
    const held = await cli('queue', 'hold', '--older-than', '20m', '--yes');
    assert.match(held.stdout, /2 held/);
    assert.equal(queuedEnvelope(join(dir, 'spool'), ids['ancient-d3']).held, true);
    assert.equal(queuedEnvelope(join(dir, 'spool'), ids['fresh-d1']).held, undefined);
    const none = await cli('queue', 'release', '--domain', 'nowhere.example', '--yes');
    assert.deepEqual([none.status, none.stdout], [0, '0 messages match\n']);
  });

  it('goes through the running daemon, which re-indexes what it released', async () => {
    assert.match((await cli('queue', 'hold', '--all', '--yes')).stdout, /queue hold \(standalone\): 6 held/);
    const daemon = await spawnDaemon(file);
    try {
      const released = await cli('queue', 'release', '--domain', 'd1.example', '--yes');
      assert.equal(released.status, 0, released.stderr);
      assert.match(released.stdout, /queue release \(daemon\): 2 released/);
      const status = await cli('queue', 'list', '--json', '--domain', 'd1.example');
      assert.deepEqual(
        (JSON.parse(status.stdout) as Row[]).map((row) => row.state),
        ['queued', 'queued'],
      );
    } finally {
      daemon.child.kill('SIGTERM');
      await daemon.exited;
    }
  });
});
