import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable, type Readable } from 'node:stream';
import { createLogger } from '../src/log.js';
import { DirectorySync } from '../src/fs/durable.js';
import type { Envelope } from '../src/spool/envelope.js';
import { newQueueId } from '../src/spool/queue-id.js';
import { SpoolLockedError } from '../src/spool/locks.js';
import { Spool } from '../src/spool/spool.js';
import { envelopeTrailer } from '../src/spool/trailer.js';
import { startTestDaemon } from './helpers/daemon.js';
import { message, SmtpClient, queuedId } from './helpers/smtp-client.js';

const silent = createLogger('silent');

function contents(spoolDir: string): Record<string, string[]> {
  const list = (dir: string) => readdirSync(join(spoolDir, dir)).sort();
  return { tmp: list('tmp'), queue: list('queue'), corrupt: list('corrupt') };
}

async function text(stream: Readable): Promise<string> {
  let all = '';
  for await (const chunk of stream) all += String(chunk);
  return all;
}

function capturingLogger(): { log: ReturnType<typeof createLogger>; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line) as Record<string, unknown>);
      callback();
    },
  });
  return { log: createLogger('info', sink), lines };
}

const isRoot = process.getuid?.() === 0;

describe('spool: storage failures', () => {
  it('answers 452 4.3.1 when the disk is full, leaves no partial file, and accepts again once there is room', async function () {
    if (!isRoot) this.skip(); // mounting a small tmpfs needs root; CI runs as root
    const mountPoint = mkdtempSync(join(tmpdir(), 'secondarymx-full-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,mode=0700', 'tmpfs', mountPoint]);
    const mx = await startTestDaemon({ spoolDir: mountPoint, extra: 'limits: { messageSize: 300000 }' });
    try {
      const { client } = await SmtpClient.session(mx.port);
      const roomChecked = async () => {
        await (await fetch(`http://127.0.0.1:${mx.daemon.monitoringPort}/healthz`)).text();
      };
      // MAIL checks for room (1.5 x limits.messageSize); the disk fills up after it, as other sessions' messages would fill it.
      const filler = join(mountPoint, 'filler');
      const sendAfterFilling = async (fillerBytes: number, body: string) => {
        for (const command of ['MAIL FROM:<s@remote.example>', 'RCPT TO:<alice@d1.example>', 'DATA']) await client.command(command);
        try {
          writeFileSync(filler, Buffer.alloc(fillerBytes));
        } catch (error) {
          assert.equal((error as NodeJS.ErrnoException).code, 'ENOSPC');
        }
        return client.data(body);
      };
      const full = await sendAfterFilling(800 * 1024, message('too big for what is left', `${'y'.repeat(998)}\r\n`.repeat(250)));
      assert.deepEqual([full.code, full.enhanced], [452, '4.3.1']);
      assert.deepEqual(contents(mountPoint), { tmp: [], queue: [], corrupt: [] });
      rmSync(filler);
      await roomChecked(); // the room check runs every second; /healthz runs it now
      // A small message is written in one go at commit: that write is the one that fails.
      const small = await sendAfterFilling(1024 * 1024, message('no room left at all'));
      assert.deepEqual([small.code, small.enhanced], [452, '4.3.1']);
      assert.deepEqual(contents(mountPoint), { tmp: [], queue: [], corrupt: [] });
      await roomChecked();
      assert.deepEqual([(await client.command('MAIL FROM:<s@remote.example>')).code], [452], 'no room: refused at MAIL');
      rmSync(filler);
      await roomChecked();
      const ok = await client.sendMail('s@remote.example', ['alice@d1.example'], message('fits'));
      assert.equal(ok.code, 250);
      assert.deepEqual(contents(mountPoint).queue, [`${queuedId(ok.text)}.msg`]);
      await client.quit();
    } finally {
      await mx.stop();
      execFileSync('umount', [mountPoint]);
      rmSync(mountPoint, { recursive: true, force: true });
    }
  });

  it('answers 452 4.3.1 when the spool cannot create files, and recovers by itself', async () => {
    const mx = await startTestDaemon();
    const tmp = join(mx.spoolDir, 'tmp');
    try {
      const { client } = await SmtpClient.session(mx.port);
      renameSync(tmp, `${tmp}.away`);
      writeFileSync(tmp, 'not a directory'); // every create in tmp/ now fails with ENOTDIR
      const broken = await client.sendMail('s@remote.example', ['alice@d1.example'], message('no spool'));
      assert.deepEqual([broken.code, broken.enhanced], [452, '4.3.1']);
      assert.deepEqual(readdirSync(join(mx.spoolDir, 'queue')), []);
      assert.ok(mx.logs.some((line) => line.event === 'spool_write_failed'));
      rmSync(tmp);
      renameSync(`${tmp}.away`, tmp);
      assert.equal((await client.sendMail('s@remote.example', ['alice@d1.example'], message('spool back'))).code, 250);
      await client.quit();
    } finally {
      await mx.stop();
    }
  });
});

describe('spool: start-up recovery', () => {
  let root: string;
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'secondarymx-spool-'));
    for (const dir of ['tmp', 'queue', 'corrupt']) mkdirSync(join(root, dir));
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  function envelopeFor(id: string, recipients = 1): Envelope {
    return {
      version: 1,
      id,
      arrival: new Date().toISOString(),
      sender: 's@remote.example',
      recipients: Array.from({ length: recipients }, (_, n) => ({ address: `user${n}@d1.example`, state: 'pending' as const })),
      size: 5,
      bodyType: '7bit',
      smtpUtf8: false,
      client: { address: '127.0.0.1', helo: 'x' },
    };
  }

  /** A message file as the spool writes it: "hello", then its envelope. */
  function queueFile(id: string, envelope = envelopeFor(id)): Buffer {
    return Buffer.concat([Buffer.from('hello'), envelopeTrailer(envelope)]);
  }

  it('keeps every acknowledged message, removes unacknowledged writes and sets corrupt files aside', async () => {
    const [queued, updated, longEnvelope, legacy, truncated, noEnvelope, badJson, removed] = [1, 2, 3, 4, 5, 6, 7, 8].map((n) => newQueueId(Date.now() + n));
    const put = (name: string, data: string | Buffer) => writeFileSync(join(root, 'queue', name), data);
    writeFileSync(join(root, 'tmp', `${newQueueId()}.msg`), 'half written');
    put(`${queued}.msg`, queueFile(queued));
    put(`${updated}.msg`, queueFile(updated)); // the envelope changed since: .env beside it wins
    put(`${updated}.env`, JSON.stringify({ ...envelopeFor(updated), held: true }));
    put(`${longEnvelope}.msg`, queueFile(longEnvelope, envelopeFor(longEnvelope, 300))); // trailer over 4 KB: read in two steps
    put(`${legacy}.msg`, 'hello'); // the layout before envelopes were stored after the message
    put(`${legacy}.env`, JSON.stringify(envelopeFor(legacy)));
    put(`${truncated}.msg`, queueFile(truncated).subarray(0, 30));
    put(`${noEnvelope}.msg`, 'hello, and no envelope after me');
    put(`${badJson}.msg`, queueFile(badJson));
    put(`${badJson}.env`, '{"version": 1, "id": "trunc');
    put(`${removed}.env`, JSON.stringify(envelopeFor(removed))); // a removal cut short after the message went
    put('stray.txt', '?');
    const { log, lines } = capturingLogger();

    const spool = await Spool.openForServing(root, log);
    try {
      const corrupt = [`${truncated}.msg`, `${noEnvelope}.msg`, `${badJson}.env`, `${badJson}.msg`, 'stray.txt'].sort();
      assert.deepEqual(contents(root), {
        tmp: [],
        queue: [`${queued}.msg`, `${updated}.env`, `${updated}.msg`, `${longEnvelope}.msg`, `${legacy}.env`, `${legacy}.msg`].sort(),
        corrupt,
      });
      const recovered = spool.takeRecovered()!;
      assert.deepEqual(
        recovered.map((e) => e.id),
        [queued, updated, longEnvelope, legacy],
      );
      assert.deepEqual(
        recovered.map((e) => [e.held ?? false, e.recipients.length]),
        [
          [false, 1],
          [true, 1],
          [false, 300],
          [false, 1],
        ],
      );
      const { envelopes } = await spool.list();
      assert.deepEqual(envelopes, recovered, 'the daemon reads back what recovery read');
      for (const envelope of envelopes) {
        assert.equal(await text(spool.openMessage(envelope)), 'hello', 'the message without its envelope');
      }
      const setAside = lines.filter((line) => line.event === 'corrupt_set_aside').map((line) => line.file);
      assert.deepEqual(setAside.sort(), corrupt);
      assert.equal(readFileSync(join(root, 'corrupt', `${badJson}.env`), 'utf8'), '{"version": 1, "id": "trunc');
      assert.equal(lines.find((line) => line.event === 'spool_recovered')?.removedEnvelopes, 1);
    } finally {
      await spool.unlock();
    }
  });

  it('refuses a second daemon on the same spool and takes over a stale lock', async () => {
    const first = await Spool.openForServing(root, silent);
    await assert.rejects(Spool.openForServing(root, silent), SpoolLockedError);
    await first.unlock();
    for (const stale of ['999999999\n', `${process.pid}\n`, '1 12345 x\n']) {
      // No such process; this very pid in an older lock (pid 1 in a container, after kill -9); a reused pid.
      writeFileSync(join(root, 'serve.pid'), stale);
      const second = await Spool.openForServing(root, silent);
      assert.match(readFileSync(join(root, 'serve.pid'), 'utf8'), new RegExp(`^${process.pid} \\d+ `));
      await second.unlock();
    }
  });

  it('writes queue files readable by the service user only', async () => {
    const spool = await Spool.openForServing(root, silent);
    try {
      const incoming = await spool.receive();
      await incoming.write(Buffer.from('hello\r\n'));
      const envelope = await incoming.commit({
        arrival: new Date().toISOString(),
        sender: '',
        recipients: [{ address: 'alice@d1.example', state: 'pending' }],
        bodyType: '7bit',
        smtpUtf8: false,
        client: { address: '127.0.0.1', helo: 'x' },
      });
      const mode = (name: string) =>
        execFileSync('stat', ['-c', '%a', join(root, 'queue', name)])
          .toString()
          .trim();
      assert.equal(mode(`${envelope.id}.msg`), '600');
      assert.equal(envelope.size, 7);
      assert.deepEqual(await spool.readEnvelope(envelope.id), envelope);
      await spool.updateEnvelope({ ...envelope, held: true });
      assert.equal(mode(`${envelope.id}.env`), '600');
      assert.equal((await spool.readEnvelope(envelope.id)).held, true);
    } finally {
      await spool.unlock();
    }
  });
});

describe('spool: message locks', () => {
  it('takes over the locks of a process that is gone or whose pid is reused, refuses those of a live one, and cleans the dead holder file', async () => {
    const root = mkdtempSync(join(tmpdir(), 'secondarymx-locks-'));
    try {
      const locks = join(root, 'locks');
      mkdirSync(locks);
      const gone = Number(execFileSync(process.execPath, ['-p', 'process.pid'], { encoding: 'utf8' }));
      const [stale, reused, mine, live] = [newQueueId(), newQueueId(), newQueueId(), newQueueId()];
      writeFileSync(join(locks, `.holder.${gone}`), `${gone}\n`);
      writeFileSync(join(locks, stale), `${gone}\n`);
      writeFileSync(join(locks, reused), '1 12345 x\n'); // pid 1 runs, but it is not the process that wrote this
      writeFileSync(join(locks, mine), `${process.pid}\n`); // an older lock naming this very pid: not ours to honour
      writeFileSync(join(locks, live), '1\n'); // an older lock of a live process (init): honoured
      const spool = await Spool.forDelivery(root); // makes its token, and cleans the dead holder's

      for (const id of [stale, reused, mine]) assert.equal(await spool.locks.lock(id), true, id);
      const me = readFileSync(join(locks, stale), 'utf8');
      assert.match(me, new RegExp(`^${process.pid} \\d+ [0-9a-f-]+\\n$`));
      assert.equal(await spool.locks.lock(stale), false, 'a lock this process holds is not granted twice');
      assert.equal(await spool.locks.lock(live), false);
      const token = readdirSync(locks).find((name) => name.startsWith(`.holder.${process.pid}.`))!;
      assert.deepEqual(readdirSync(locks).sort(), [token, live, mine, reused, stale].sort());

      await spool.locks.unlock(stale);
      rmSync(join(locks, token)); // someone cleans locks/ by hand
      assert.equal(await spool.locks.lock(stale), true);
      assert.equal(readFileSync(join(locks, stale), 'utf8'), me);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('spool: reading a message for delivery', () => {
  let root: string;
  beforeEach(() => (root = mkdtempSync(join(tmpdir(), 'secondarymx-read-'))));
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  const fields = {
    arrival: new Date().toISOString(),
    sender: 's@remote.example',
    bodyType: '7bit' as const,
    smtpUtf8: false,
    client: { address: '127.0.0.1', helo: 'x' },
  };

  it('gives the bytes with the envelope for files up to 64 KB, streams larger ones, and prefers a later .env, all sending the same bytes', async () => {
    const spool = await Spool.forDelivery(root);
    for (const bodySize of [10, 60_000, 65_000, 300_000]) {
      const data = Buffer.from(message(`size ${bodySize}`, `${'z'.repeat(bodySize)}\r\n`));
      const id = newQueueId();
      const queued = await spool.enqueue(id, data, {
        ...fields,
        recipients: [{ address: 'alice@d1.example', state: 'pending' }],
        addedHeaders: 'X-Added: 1\r\n',
      });
      const { envelope, bytes } = await spool.readForDelivery(id);
      assert.deepEqual(envelope, queued);
      const fileSize = readFileSync(spool.messagePath(id)).length;
      assert.equal(bytes !== undefined, fileSize <= 64 * 1024, `file of ${fileSize} bytes`);
      assert.equal(await text(spool.openMessage(envelope, bytes)), `X-Added: 1\r\n${data.toString()}`);
      envelope.held = true;
      await spool.updateEnvelope(envelope);
      const later = await spool.readForDelivery(id);
      assert.deepEqual([later.envelope.held, later.bytes], [true, undefined]);
      assert.equal(await text(spool.openMessage(later.envelope, later.bytes)), `X-Added: 1\r\n${data.toString()}`);
      await spool.remove(id);
      assert.deepEqual(readdirSync(spool.queueDir), []);
    }
  });
});

describe('spool: directory fsync (group commit)', () => {
  let root: string;
  beforeEach(() => (root = mkdtempSync(join(tmpdir(), 'secondarymx-dirsync-'))));
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  const openOn = (dir: string) =>
    readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`) === dir;
      } catch {
        return false; // the descriptor readdir itself used, gone already
      }
    }).length;

  it('shares rounds between concurrent callers and leaves no descriptor open once idle', async () => {
    const sync = new DirectorySync(root);
    const first = [sync.sync(), sync.sync()];
    assert.equal(first[0], first[1], 'callers before a round begins share it');
    await new Promise((resolve) => setImmediate(resolve)); // the round has begun: its fsync may predate a new rename
    const next = [sync.sync(), sync.sync()];
    assert.equal(next[0], next[1]);
    assert.notEqual(next[0], first[0], 'a caller during a round gets the next one');
    await Promise.all([...first, ...next]);
    assert.equal(openOn(root), 0, 'closed when no round follows (an idle spool can be unmounted)');
    await sync.sync();
    assert.equal(openOn(root), 0);
  });

  it('reports a failed fsync to its callers and opens the folder again for the next round', async () => {
    const sync = new DirectorySync(join(root, 'missing'));
    await assert.rejects(sync.sync(), { code: 'ENOENT' });
    mkdirSync(join(root, 'missing'));
    await sync.sync();
  });
});
