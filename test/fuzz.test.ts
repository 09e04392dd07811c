import assert from 'node:assert/strict';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { spawnDaemon, type RunningDaemon } from './helpers/cli.js';
import { baseConfig, writeTestConfig } from './helpers/daemon.js';
import { message, SmtpClient } from './helpers/smtp-client.js';
import { queuedIds } from './helpers/spool-files.js';

/** A small seeded PRNG (mulberry32): a failing run can be replayed with SECONDARYMX_FUZZ_SEED. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const VALID = [
  'EHLO fuzz.example\r\n',
  'MAIL FROM:<s@remote.example>\r\n',
  'RCPT TO:<alice@d1.example>\r\n',
  'RCPT TO:<x@d2.example>\r\n',
  'DATA\r\n',
  `${message('fuzz', 'body line\r\n..dot\r\n')}.\r\n`,
  'QUIT\r\n',
];

function sessionBytes(random: () => number): Buffer {
  const pick = <T>(items: T[]) => items[Math.floor(random() * items.length)];
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(random() * 256)));
  switch (Math.floor(random() * 8)) {
    case 0: // a proper session, pipelined
      return Buffer.from(VALID.join(''));
    case 1: // noise
      return bytes(Math.floor(random() * 600));
    case 2: {
      // a proper session with bytes flipped, dropped or inserted
      const data = Buffer.from(VALID.join(''));
      for (let i = Math.floor(random() * 6); i >= 0; i--) data[Math.floor(random() * data.length)] = Math.floor(random() * 256);
      return data;
    }
    case 3: // bad data: bare LF, bare CR, NUL
      return Buffer.from(
        VALID.slice(0, 5).join('') + `Subject: x\r\n\r\n${pick(['a\nb', 'a\rb', 'a\u0000b', '\n.\nRCPT TO:<e@vil.example>'])}\r\n.\r\nQUIT\r\n`,
      );
    case 4: // cut in the middle of DATA
      return Buffer.from(VALID.slice(0, 5).join('') + 'Subject: cut\r\n\r\nhalf a mess');
    case 5: // an endless line
      return Buffer.from(`MAIL FROM:<${'a'.repeat(1000 + Math.floor(random() * 20_000))}`);
    case 6: // address tricks and junk commands
      return Buffer.from(
        [
          'EHLO x',
          ...Array.from({ length: 8 }, () =>
            pick([
              'RCPT TO:<@a:b@c>',
              'MAIL FROM:<>',
              'RCPT TO:<a@[1.2.3.4]>',
              'VRFY root',
              'ETRN x',
              'AUTH PLAIN AAAA',
              'STARTTLS',
              'BDAT 10',
              '\u00ff\u00fe',
              'HELP',
              'RSET',
            ]),
          ),
          'QUIT',
        ].join('\r\n') + '\r\n',
      );
    default: // a dozen messages on one connection, some refused
      return Buffer.from(['EHLO many.example\r\n', ...Array.from({ length: 12 }, () => VALID.slice(1, 6).join('')), 'QUIT\r\n'].join(''));
  }
}

/** One raw session: wait for the greeting (or not), send everything, read until close or a short timeout. */
async function runSession(port: number, data: Buffer, random: () => number): Promise<string> {
  const socket = connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  let received = '';
  socket.setEncoding('latin1');
  socket.on('data', (chunk: string) => (received += chunk));
  await new Promise<void>((resolve) => {
    socket.once('connect', () => resolve());
    socket.once('error', () => resolve());
  });
  const waitGreeting = random() < 0.9;
  if (waitGreeting) {
    const deadline = Date.now() + 2000;
    while (!received.includes('\r\n') && Date.now() < deadline && !socket.destroyed) await new Promise((resolve) => setTimeout(resolve, 10));
  }
  // A well-behaved client waits for the EHLO reply before it pipelines (RFC 2920).
  let at = 0;
  if (waitGreeting && data.subarray(0, 5).toString() === 'EHLO ') {
    at = data.indexOf('\r\n') + 2;
    socket.write(data.subarray(0, at));
    const deadline = Date.now() + 2000;
    while (!/^250 /m.test(received) && Date.now() < deadline && !socket.destroyed) await new Promise((resolve) => setTimeout(resolve, 5));
  }
  // Split the rest into a few writes, so segment boundaries fall anywhere.
  while (at < data.length && !socket.destroyed) {
    const size = 1 + Math.floor(random() * 2000);
    socket.write(data.subarray(at, at + size));
    at += size;
  }
  // Read until the server closes, or until it has been quiet for a second: every reply it
  // sent (a 250 above all) must be seen before this side hangs up.
  const deadline = Date.now() + 10_000;
  let seen = -1;
  while (!socket.destroyed && socket.readyState !== 'closed' && Date.now() < deadline && received.length !== seen) {
    seen = received.length;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 1000);
      socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  socket.destroy();
  return received;
}

function rssMb(pid: number): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
}

describe('fuzz: hundreds of random and mutated sessions (thousands on request)', () => {
  it('leaves the daemon answering, its memory near the baseline, and the spool holding exactly the messages that got 250', async function () {
    this.timeout(120_000);
    const seed = Number(process.env.SECONDARYMX_FUZZ_SEED ?? Date.now() % 1_000_000);
    const sessions = Number(process.env.SECONDARYMX_FUZZ_SESSIONS ?? 400); // 2,000 for a long run: SECONDARYMX_FUZZ_SESSIONS=2000 npx mocha test/fuzz.test.ts
    const random = prng(seed);
    const { dir, file } = writeTestConfig(baseConfig('limits: { connectionsPerClient: 500, messageSize: 100000, dataTimeout: 5, idleTimeout: 5 }'));
    let daemon: RunningDaemon | undefined;
    try {
      daemon = await spawnDaemon(file);
      const port = daemon.port;
      const accepted = new Set<string>();
      const record = (text: string) => {
        for (const match of text.matchAll(/^250 2\.0\.0 Ok: queued as ([0-9A-Z]+)\r$/gm)) accepted.add(match[1]);
      };
      const runBatch = async (count: number) => {
        let next = 0;
        await Promise.all(
          Array.from({ length: 60 }, async () => {
            while (next < count) {
              next++;
              record(await runSession(port, sessionBytes(random), random));
            }
          }),
        );
      };
      await runBatch(200); // warm-up, then the baseline
      await new Promise((resolve) => setTimeout(resolve, 500));
      const baseline = rssMb(daemon.child.pid!);
      const started = Date.now();
      await runBatch(sessions);
      const seconds = (Date.now() - started) / 1000;
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const after = rssMb(daemon.child.pid!);

      const { client, ehlo } = await SmtpClient.session(port);
      assert.equal(ehlo.code, 250, 'the daemon still answers');
      await client.quit();
      const spooled = new Set(queuedIds(join(dir, 'spool')));
      assert.deepEqual([...spooled].sort(), [...accepted].sort(), `seed ${seed}`);
      assert.equal(readdirSync(join(dir, 'spool', 'tmp')).length, 0, 'no partial file left');
      assert.ok(after < baseline + 60, `RSS ${after.toFixed(0)} MB after, baseline ${baseline.toFixed(0)} MB (seed ${seed})`);
      assert.equal(daemon.child.exitCode, null, 'the daemon did not crash');
      console.log(
        `      (seed ${seed}: ${sessions} sessions in ${seconds.toFixed(1)} s, ${accepted.size} messages accepted, RSS ${baseline.toFixed(0)} → ${after.toFixed(0)} MB)`,
      );
    } finally {
      if (daemon) {
        daemon.child.kill('SIGTERM');
        await daemon.exited;
      }
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
