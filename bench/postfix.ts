/*
 * `npm run bench:postfix`: Debian's Postfix as a textbook backup MX and this daemon at its
 * defaults, side by side in one run, on loopback, under the same load (Postfix's
 * smtp-source, 4 KB messages, spool fsync on, primary down):
 *   A: 100 sessions, one message per connection;  B: 20 sessions, connections reused;
 *   drain: the queue to Postfix's smtp-sink once it is up (postqueue -f / secondarymx flush).
 * Every message must be queued and then delivered (a 421 must not look like speed); the
 * Postfix instance is a private one (its own config and queue folders), stopped at the end.
 * Each MTA's queue is on a fresh ext4 of its own (a loop device), so that none pays for
 * another's deletions. Next to the figures: the machine's limits, the disk's rate of
 * create+write+fsync+rename of 4 KB files at 1, 20 and 100 writers, and the rate and CPU
 * of the SMTP protocol alone (smtp-server discarding what it gets).
 * BENCH_COMPARE=<another checkout>/dist/cli.js: that build (a before) and this one, in
 * BENCH_ROUNDS interleaved rounds (2 by default: ours, before, ours, before), instead of
 * the auth-off run.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { spawnDaemon, CLI, type RunningDaemon } from '../test/helpers/cli.js';
import { baseConfig, writeTestConfig } from '../test/helpers/daemon.js';
import { freePort } from '../test/helpers/primary.js';
import { startPostfix } from '../test/helpers/postfix.js';
import { waitFor } from '../test/helpers/wait.js';
import { cpuSeconds, fileCreateCost, printingReport, removeAfterRun, removeLeftovers, type Figure } from './figures.js';

const run = promisify(execFile);
const SMTP_SOURCE = process.env.BENCH_SMTP_SOURCE ?? '/usr/sbin/smtp-source';
const SMTP_SINK = process.env.BENCH_SMTP_SINK ?? '/usr/sbin/smtp-sink';
const MESSAGES = Number(process.env.BENCH_POSTFIX_MESSAGES ?? 3000);
/** Seconds between one MTA's run and the next when they share a file system (no loop device). */
const PAUSE_SECONDS = Number(process.env.BENCH_POSTFIX_PAUSE ?? 70);
/** The file systems made for this run, unmounted at the end. */
const mounts: string[] = [];
const WORKLOADS = [
  { name: 'A', sessions: 100, reuse: false },
  { name: 'B', sessions: 20, reuse: true },
] as const;

interface Mta {
  name: string;
  port: number;
  /** Messages waiting in its queue now. */
  queued(): number;
  /** No delivery attempt under way: every message waits for its next try. */
  settled(): boolean;
  /** CPU seconds of all its processes so far. */
  cpu(): number;
  /** Starts delivery of the whole queue (the primary is up by then). */
  flush(): Promise<void>;
  empty(): Promise<void>;
  stop(): Promise<void>;
}

const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK']).toString());

/**
 * Runs smtp-source; resolves with messages/s and the CPU it used per message (read from
 * the /proc/<pid>/stat of the shell that waited for it: cutime and cstime). Any refused
 * message makes it fail.
 */
async function load(port: number, sessions: number, reuse: boolean, messages = MESSAGES): Promise<{ rate: number; cpuMs: number }> {
  const args = ['-s', String(sessions), '-m', String(messages), '-l', '4096', '-f', 'sender@remote.example', '-t', 'alice@d1.example', '-M', 'bench.example'];
  if (reuse) args.push('-d');
  const started = process.hrtime.bigint();
  const { stdout } = await run('sh', ['-c', '"$0" "$@" || exit; cat /proc/$$/stat', SMTP_SOURCE, ...args, `127.0.0.1:${port}`]);
  const rate = messages / (Number(process.hrtime.bigint() - started) / 1e9);
  const fields = stdout.slice(stdout.lastIndexOf(')') + 2).split(' '); // from field 3 (state) on
  const childTicks = Number(fields[13]) + Number(fields[14]); // fields 16 and 17: cutime, cstime
  return { rate, cpuMs: ((childTicks / CLOCK_TICKS) * 1000) / messages };
}

/** CPU seconds of every process running a program under `prefix` (Postfix's daemons). */
function programsCpu(prefix: string): number {
  let total = 0;
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    try {
      if (readlinkSync(`/proc/${pid}/exe`).startsWith(prefix)) total += cpuSeconds(Number(pid));
    } catch {
      // gone meanwhile
    }
  }
  return total;
}

/**
 * A fresh ext4 (mkfs.ext4's defaults, journal included, as on a server) on a loop device,
 * mounted under `root`, for one MTA's queue: on this machine's ext4 without a journal a file
 * creation skips every inode deleted in the last 60 to 360 s, so an MTA that ran after
 * another emptied its queue paid for it. Undefined where no loop device can be set up.
 */
function freshFilesystem(root: string, name: string): string | undefined {
  const image = join(root, `${name}.img`);
  const mount = join(root, `${name}-fs`);
  mkdirSync(mount, { recursive: true });
  try {
    execFileSync('truncate', ['-s', '4G', image]);
    execFileSync('mkfs.ext4', ['-q', '-F', image]);
    execFileSync('mount', ['-o', 'loop', image, mount], { stdio: 'pipe' });
  } catch (error) {
    console.error(`no file system of its own for ${name} (${(error as Error).message.split('\n')[0]}): the MTAs share ${root}, with a pause between them`);
    return undefined;
  }
  mounts.push(mount);
  return mount;
}

/** A private Postfix instance: textbook backup MX for d1.example (relay_domains + relay_recipient_maps), primary on `primaryPort`, its queue under `queueRoot`. */
async function startBackupPostfix(root: string, primaryPort: number, queueRoot: string): Promise<Mta> {
  const postfix = await startPostfix(
    root,
    [
      'myhostname = mx2.bench.example',
      'mynetworks = 127.0.0.2/32', // the load comes from 127.0.0.1: treat it as the internet
      'relay_domains = d1.example',
      `relay_recipient_maps = hash:${join(root, 'etc', 'relay_recipients')}`,
      `transport_maps = hash:${join(root, 'etc', 'transport')}`,
      'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination',
      'default_process_limit = 200',
      'smtp_destination_concurrency_limit = 10', // as relay.concurrency
    ],
    { relay_recipients: 'alice@d1.example OK\n', transport: `d1.example smtp:[127.0.0.1]:${primaryPort}\n` },
    join(queueRoot, 'queue'),
  );
  const { etc, port } = postfix;
  const listQueue = postfix.queue;
  return {
    name: 'Postfix',
    port,
    // showq reads the queue folders one after the other: a message moving between them meanwhile is listed twice.
    queued: () => new Set(listQueue().map((entry) => entry.queue_id)).size,
    // Messages still in their first attempt (active) would be deferred again after a flush, for minimal_backoff_time.
    settled: () => listQueue().every((entry) => entry.queue_name === 'deferred'),
    cpu: () => programsCpu('/usr/lib/postfix/sbin/'), // only this instance runs here; exited processes are not counted
    flush: async () => void (await run('postqueue', ['-c', etc, '-f'])),
    empty: async () => {
      await run('postsuper', ['-c', etc, '-d', 'ALL']);
      await run('postsuper', ['-c', etc, '-d', 'ALL', 'deferred']); // what was in the active queue meanwhile
    },
    stop: postfix.stop,
  };
}

/** This daemon at its defaults (connectionsPerClient lifted), its spool under `spoolRoot` (its config folder when undefined). */
async function startOurs(
  primaryPort: number,
  spoolRoot: string | undefined,
  name = 'secondarymx',
  extra = '',
  cli?: string,
): Promise<Mta & { daemon: RunningDaemon }> {
  const { dir, file } = writeTestConfig(
    baseConfig(`limits: { connectionsPerClient: 1000 }\n${extra}`)
      .replace(/^primary: .*$/m, `primary: { host: 127.0.0.1, port: ${primaryPort} }`)
      .replace(/^spool: .*$/m, `spool: ${join(spoolRoot ?? '.', 'spool')}`),
  );
  removeAfterRun(dir);
  const daemon = await spawnDaemon(file, cli ? { cli } : {});
  const queueDir = join(spoolRoot ?? dir, 'spool', 'queue');
  return {
    name,
    port: daemon.port,
    daemon,
    queued: () => readdirSync(queueDir).filter((name) => name.endsWith('.msg')).length,
    settled: () => true, // the relay marked the primary down after one failed connection; nothing is in flight
    cpu: () => cpuSeconds(daemon.child.pid!),
    flush: async () => void (await run('node', [CLI, 'flush', '--config', file]).catch(() => undefined)), // 75 while messages remain: fine
    empty: async () => {
      await run('node', [CLI, 'queue', 'delete', '--all', '--yes', '--config', file]);
    },
    stop: async () => {
      daemon.child.kill('SIGTERM');
      await daemon.exited;
    },
  };
}

/** smtp-sink as the primary; `delivered()` reads its message counter. */
function startSink(port: number): { delivered: () => number; stop: () => void } {
  const sink = spawn(SMTP_SINK, ['-u', 'nobody', '-c', `127.0.0.1:${port}`, '200'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let delivered = 0;
  sink.stdout.setEncoding('latin1').on('data', (text: string) => {
    const counts = text.match(/mesg=(\d+)/g);
    if (counts) delivered = Number(counts[counts.length - 1].slice('mesg='.length));
  });
  return { delivered: () => delivered, stop: () => sink.kill() };
}

/**
 * create + write 4 KB + fsync + close + rename, `writers` at a time, in a child: as chained
 * asynchronous calls (a threadpool that large), or as one synchronous job per file in one of
 * four worker threads (the issue's "spool write off the main thread" idea), or `writers`
 * messages at a time in one segment file (group commit: one create, fsync and rename per
 * batch). Messages/s and the child's CPU per message, kernel included.
 */
function diskRate(writers: number, dir: string, mode: 'async' | 'worker' | 'segment' = 'async'): { rate: number; cpuMs: number } {
  const script = `
    const fs = require('node:fs'); const fsp = fs.promises; const path = require('node:path'); const { Worker } = require('node:worker_threads');
    const dir = ${JSON.stringify(dir)}; const total = ${Math.max(400, writers * 10)}; const data = Buffer.alloc(4096, 97);
    const asyncWrite = async (tmp, dest, batch = [data]) => { const handle = await fsp.open(tmp, 'wx'); await handle.writev(batch); await handle.sync(); await handle.close(); await fsp.rename(tmp, dest); };
    const job = \`const { parentPort } = require('node:worker_threads'); const fs = require('node:fs');
      parentPort.on('message', ({ tmp, dest, data, n }) => {
        const fd = fs.openSync(tmp, 'wx'); fs.writeSync(fd, data); fs.fsyncSync(fd); fs.closeSync(fd); fs.renameSync(tmp, dest); parentPort.postMessage(n); });\`;
    const workers = ${mode === 'worker'} ? Array.from({ length: 4 }, () => new Worker(job, { eval: true })) : [];
    const done = new Map();
    for (const worker of workers) worker.on('message', (n) => done.get(n)());
    const workerWrite = (tmp, dest, n) => new Promise((resolve) => { done.set(n, resolve); workers[n % workers.length].postMessage({ tmp, dest, data, n }); });
    (async () => {
      fs.mkdirSync(path.join(dir, 'tmp'), { recursive: true }); fs.mkdirSync(path.join(dir, 'q'), { recursive: true });
      let next = 0; const started = process.hrtime.bigint(); const cpu = process.cpuUsage();
      if (${mode === 'segment'}) for (let n = 0; n < total; n += ${writers}) await asyncWrite(path.join(dir, 'tmp', String(n)), path.join(dir, 'q', String(n)), Array(${writers}).fill(data));
      else await Promise.all(Array.from({ length: ${writers} }, async () => {
        while (next < total) { const n = next++; const tmp = path.join(dir, 'tmp', String(n)); const dest = path.join(dir, 'q', String(n));
          await (workers.length ? workerWrite(tmp, dest, n) : asyncWrite(tmp, dest)); }
      }));
      const used = process.cpuUsage(cpu);
      console.log(JSON.stringify({ rate: total / (Number(process.hrtime.bigint() - started) / 1e9), cpuMs: (used.user + used.system) / 1000 / total }));
      for (const worker of workers) worker.terminate();
    })();`;
  const env = { ...process.env, UV_THREADPOOL_SIZE: String(Math.min(128, Math.max(4, writers))) };
  return JSON.parse(execFileSync('node', ['-e', script], { env }).toString()) as { rate: number; cpuMs: number };
}

/**
 * smtp-server alone, discarding the data: its rate and CPU per message under each workload.
 * Under A its own fixed 100 ms pause before every greeting caps it at sessions / 0.1 s.
 */
async function protocolOnly(): Promise<Record<string, { rate: number; cpuMs: number }>> {
  const port = await freePort();
  const script = `
    import('smtp-server').then(({ SMTPServer }) => {
      const server = new SMTPServer({ authOptional: true, disabledCommands: ['AUTH', 'STARTTLS'], logger: false, disableReverseLookup: true,
        onData(stream, session, callback) { stream.on('data', () => {}); stream.on('end', () => callback()); } });
      server.listen(${port}, '127.0.0.1', () => console.log('ready'));
    });`;
  const child = spawn('node', ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
  try {
    const figures: Record<string, { rate: number; cpuMs: number }> = {};
    for (const workload of WORKLOADS) {
      const before = cpuSeconds(child.pid!);
      const { rate } = await load(port, workload.sessions, workload.reuse);
      figures[workload.name] = { rate, cpuMs: ((cpuSeconds(child.pid!) - before) * 1000) / MESSAGES };
    }
    return figures;
  } finally {
    child.kill();
  }
}

/** The drain's ceiling: smtp-source straight to smtp-sink, 10 sessions (relay.concurrency, Postfix's limit here) reused. */
async function sinkAlone(): Promise<{ rate: number }> {
  const port = await freePort();
  const sink = startSink(port);
  try {
    await waitFor(
      () =>
        new Promise<boolean>((resolve) => {
          const probe = connect(port, '127.0.0.1', () => {
            probe.destroy();
            resolve(true);
          });
          probe.once('error', () => resolve(false));
        }),
      5000,
    );
    return await load(port, 10, true);
  } finally {
    sink.stop();
  }
}

async function main(): Promise<void> {
  if (!existsSync('/usr/sbin/postfix') || !existsSync(SMTP_SOURCE) || !existsSync(SMTP_SINK)) {
    throw new Error("needs Debian's postfix (postfix, smtp-source, smtp-sink): apt-get install postfix");
  }
  if (process.getuid?.() !== 0) throw new Error('runs as root: it starts a private Postfix instance');
  const tmp = new URL('./.tmp', import.meta.url).pathname;
  mkdirSync(tmp, { recursive: true });
  process.env.TMPDIR = tmp;
  const figures: Figure[] = [];
  const print = printingReport(figures);
  const root = join(tmp, `postfix-${Date.now()}`);
  mkdirSync(root, { recursive: true });
  removeAfterRun(root);
  const compare = process.env.BENCH_COMPARE;
  const rounds = Number(process.env.BENCH_ROUNDS ?? (compare ? 2 : 1));
  // One for the limits, one per MTA run.
  const runs = compare ? Array.from({ length: rounds }, (_, i) => [`ours-${i}`, `before-${i}`]).flat() : ['ours', 'ours-noauth'];
  const filesystems = ['limits', 'postfix', ...runs].map((name) => freshFilesystem(root, name));
  const shared = filesystems.some((mount) => mount === undefined);
  const limitsDir = filesystems[0] ?? tmp;
  print({ name: 'disk: file creation', value: fileCreateCost(limitsDir), unit: 'µs CPU/file', parameters: { filesystem: shared ? tmp : 'fresh ext4' } });
  const limits: Record<string, number> = {};
  for (const writers of [1, 20, 100]) {
    const dir = join(limitsDir, `disk-${writers}-${Date.now()}`);
    removeAfterRun(dir);
    const { rate, cpuMs } = diskRate(writers, dir);
    limits[`disk${writers}`] = rate;
    print({ name: `limit: disk create+write+fsync+rename 4 KB`, value: rate, unit: 'files/s', parameters: { writers } });
    print({ name: `limit: disk create+write+fsync+rename 4 KB, CPU`, value: cpuMs, unit: 'ms CPU/file', parameters: { writers } });
  }
  const workerDir = join(limitsDir, `disk-worker-${Date.now()}`);
  removeAfterRun(workerDir);
  const inWorkers = diskRate(20, workerDir, 'worker');
  print({ name: 'disk: the same, one synchronous job per file in 4 worker threads', value: inWorkers.rate, unit: 'files/s', parameters: { writers: 20 } });
  print({ name: 'disk: the same in worker threads, CPU', value: inWorkers.cpuMs, unit: 'ms CPU/file', parameters: { writers: 20 } });
  const segmentDir = join(limitsDir, `disk-segment-${Date.now()}`);
  removeAfterRun(segmentDir);
  const segments = diskRate(20, segmentDir, 'segment');
  print({ name: 'disk: 20 messages per segment file (group commit), one fsync each', value: segments.rate, unit: 'messages/s', parameters: { writers: 20 } });
  print({ name: 'disk: 20 messages per segment file, CPU', value: segments.cpuMs, unit: 'ms CPU/message', parameters: { writers: 20 } });
  const protocol = await protocolOnly();
  for (const [workload, { rate, cpuMs }] of Object.entries(protocol)) {
    print({ name: `limit: SMTP protocol alone (smtp-server, data discarded), workload ${workload}`, value: rate, unit: 'messages/s', parameters: {} });
    print({ name: `limit: SMTP protocol alone, workload ${workload}, CPU`, value: cpuMs, unit: 'ms CPU/message', parameters: {} });
  }

  const drainLimit = await sinkAlone();
  print({
    name: 'limit: smtp-source to smtp-sink alone, 10 sessions reused (the drain without an MTA)',
    value: drainLimit.rate,
    unit: 'messages/s',
    parameters: {},
  });

  const primaryPort = await freePort(); // nothing listens until the drain
  const NO_AUTH = 'secondarymx, auth.enabled false';
  const BEFORE = `secondarymx before (${compare})`;
  const ourNames = compare ? ['secondarymx', BEFORE] : ['secondarymx', NO_AUTH];
  const results: Record<string, Record<string, number[]>> = Object.fromEntries(['Postfix', ...ourNames].map((name) => [name, {}]));
  const record = (name: string, key: string, value: number) => (results[name][key] ??= []).push(value);
  // Started one at a time, each once the one before is done: rounds of ours (and the before) in turn.
  const starters: Array<() => Promise<Mta & { queueRoot: string }>> = [
    async () => ({ ...(await startBackupPostfix(root, primaryPort, filesystems[1] ?? root)), queueRoot: filesystems[1] ?? root }),
    ...runs.map((run, i) => async () => {
      const fs = filesystems[2 + i];
      const started = compare
        ? await startOurs(primaryPort, fs, run.startsWith('ours') ? 'secondarymx' : BEFORE, '', run.startsWith('ours') ? undefined : compare)
        : // what SPF, DKIM and DMARC on every message cost (Postfix's textbook setup checks none of them)
          await startOurs(primaryPort, fs, run === 'ours' ? 'secondarymx' : NO_AUTH, run === 'ours' ? '' : 'auth: { enabled: false }');
      return { ...started, queueRoot: fs ?? tmp };
    }),
  ];
  const mtas: Array<Mta & { queueRoot: string }> = [];
  try {
    for (const [i, start] of starters.entries()) {
      const mta = await start();
      mtas.push(mta);
      if (shared && i > 0) await new Promise((resolve) => setTimeout(resolve, PAUSE_SECONDS * 1000));
      print({ name: `${mta.name}: disk file creation before its run`, value: fileCreateCost(mta.queueRoot), unit: 'µs CPU/file', parameters: {} });
      await load(mta.port, 10, true, 300); // warm-up (the JIT, Postfix's process pool), not measured
      for (const workload of WORKLOADS) {
        await mta.empty();
        await waitFor(() => mta.queued() === 0, 30_000);
        const cpuBefore = mta.cpu();
        const { rate, cpuMs: generatorCpu } = await load(mta.port, workload.sessions, workload.reuse);
        await waitFor(() => mta.queued() >= MESSAGES, 30_000).catch(() => undefined);
        const queued = mta.queued();
        if (queued !== MESSAGES) throw new Error(`${mta.name} ${workload.name}: ${queued} of ${MESSAGES} messages queued`);
        record(mta.name, workload.name, rate);
        print({
          name: `${mta.name} accept ${workload.name}`,
          value: rate,
          unit: 'messages/s',
          parameters: { sessions: workload.sessions, reuse: String(workload.reuse) },
        });
        const cpu = mta.cpu() - cpuBefore;
        print({ name: `${mta.name} accept ${workload.name} CPU`, value: (cpu * 1000) / MESSAGES, unit: 'ms CPU/message', parameters: {} });
        // Above 1: more than one core at work (its check threads beside the SMTP thread).
        record(mta.name, `${workload.name} CPU/s`, cpu / (MESSAGES / rate));
        print({ name: `${mta.name} accept ${workload.name} CPU per second`, value: cpu / (MESSAGES / rate), unit: 'CPU s/s', parameters: {} });
        // What the load itself takes of the two CPUs: the rest is all any MTA can use.
        print({ name: `${mta.name} accept ${workload.name}: smtp-source's CPU`, value: generatorCpu, unit: 'ms CPU/message', parameters: {} });
      }
      // The queue holds workload B's messages: drain them to smtp-sink.
      await waitFor(() => mta.settled(), 60_000);
      const sink = startSink(primaryPort);
      try {
        const cpuBefore = mta.cpu();
        const asked = process.hrtime.bigint();
        const flushing = mta.flush();
        // The rate counts from the first delivery: the start of `secondarymx flush` (Node, ~0.3 s)
        // or of `postqueue -f` is how the bench asks, not part of a drain (the relay's probe starts it).
        await waitFor(() => sink.delivered() > 0, 30_000);
        const started = process.hrtime.bigint();
        const before = sink.delivered();
        await waitFor(() => mta.queued() === 0 && sink.delivered() >= MESSAGES, 300_000);
        const rate = (MESSAGES - before) / (Number(process.hrtime.bigint() - started) / 1e9);
        await flushing;
        if (sink.delivered() !== MESSAGES) throw new Error(`${mta.name}: smtp-sink got ${sink.delivered()} of ${MESSAGES}`);
        record(mta.name, 'drain', rate);
        print({ name: `${mta.name} drain: from the flush command to the first delivery`, value: Number(started - asked) / 1e6, unit: 'ms', parameters: {} });
        print({ name: `${mta.name} drain to smtp-sink`, value: rate, unit: 'messages/s', parameters: {} });
        print({ name: `${mta.name} drain CPU`, value: ((mta.cpu() - cpuBefore) * 1000) / MESSAGES, unit: 'ms CPU/message', parameters: {} });
      } finally {
        sink.stop();
      }
      await mta.stop();
    }
  } finally {
    for (const mta of mtas) await mta.stop().catch(() => undefined);
    unmountAll();
    if (!process.env.BENCH_KEEP) removeLeftovers();
  }
  const goals: Record<string, number> = { A: 3, B: 5, drain: 3 };
  const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
  const range = (values: number[]) => ({ rounds: values.length, min: Math.min(...values).toFixed(1), max: Math.max(...values).toFixed(1) });
  for (const ours of ourNames) {
    for (const key of ['A', 'B', 'drain']) {
      const ratio = median(results[ours][key]) / median(results.Postfix[key]);
      print({
        name: `ratio ${key === 'drain' ? 'drain' : `accept ${key}`} (${ours} / Postfix)`,
        value: ratio,
        unit: `x (goal ≥ ${goals[key]})`,
        parameters: range(results[ours][key]),
      });
    }
    for (const key of ['A CPU/s', 'B CPU/s'])
      print({ name: `${ours} accept ${key}, median`, value: median(results[ours][key]), unit: 'CPU s/s', parameters: range(results[ours][key]) });
  }
  if (compare) {
    for (const key of ['A', 'B', 'drain']) {
      print({
        name: `ratio ${key} (secondarymx / before)`,
        value: median(results.secondarymx[key]) / median(results[BEFORE][key]),
        unit: 'x',
        parameters: range(results.secondarymx[key]),
      });
    }
  }
  print({ name: 'accept B / disk limit at 20 writers', value: (100 * median(results.secondarymx.B)) / limits.disk20, unit: '% (goal ≥ 70)', parameters: {} });
  for (const workload of WORKLOADS) {
    print({
      name: `accept ${workload.name} / protocol-alone rate`,
      value: (100 * median(results.secondarymx[workload.name])) / protocol[workload.name].rate,
      unit: '%',
      parameters: {},
    });
  }
  writeFileSync(new URL('./last-postfix-run.json', import.meta.url), `${JSON.stringify({ date: new Date().toISOString(), figures }, null, 2)}\n`);
}

function unmountAll(): void {
  for (const mount of mounts.splice(0)) execFileSync('umount', [mount]);
}

main()
  .catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  })
  .finally(unmountAll);
