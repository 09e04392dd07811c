import { fstatSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Writable } from 'node:stream';
import { format } from 'node:util';
import { pino, type DestinationStream, type Logger } from 'pino';

/**
 * pino JSON lines on stdout; under systemd (stdout is the journal) each line starts with
 * its syslog priority; secrets are redacted wherever they appear in a logged object. On a terminal, in development (pino-pretty installed,
 * NODE_ENV not production), lines are pretty-printed instead.
 *
 * stdout is written asynchronously: lines logged while a write is in progress go out
 * together in the next one (one write per burst instead of one per line, which cost
 * the accept path a synchronous syscall per line). pino flushes what is left on exit;
 * a SIGKILL can lose the last milliseconds of lines, never mail.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: ['password', '*.password', '*.*.password'], censor: '********' },
      ...(destination === undefined && stdoutIsJournal() ? { hooks: { streamWrite: withSyslogPriority } } : {}),
    },
    destination ?? prettyOnTerminal() ?? pino.destination({ dest: 1, sync: false }),
  );
}

/** Syslog priorities of pino's levels: trace and debug 7, info 6, warn 4, error 3, fatal 2. */
const SYSLOG_PRIORITY: Record<string, number> = { 10: 7, 20: 7, 30: 6, 40: 4, 50: 3, 60: 2 };

/**
 * A line as journald reads its priority (SyslogLevelPrefix=, on by default): "<4>{…}".
 * Without it every line is priority 6 and `journalctl -p warning` shows none of ours.
 */
export function withSyslogPriority(line: string): string {
  return `<${SYSLOG_PRIORITY[/"level":(\d+)/.exec(line)?.[1] ?? ''] ?? 6}>${line}`;
}

/** Whether stdout is systemd's journal stream (JOURNAL_STREAM names its device and inode). */
function stdoutIsJournal(): boolean {
  const stream = process.env.JOURNAL_STREAM;
  if (!stream) return false;
  try {
    const stat = fstatSync(1);
    return stream === `${stat.dev}:${stat.ino}`;
  } catch {
    return false;
  }
}

function prettyOnTerminal(): DestinationStream | undefined {
  if (!process.stdout.isTTY || process.env.NODE_ENV === 'production') return undefined;
  try {
    createRequire(import.meta.url).resolve('pino-pretty'); // a dev dependency: absent in production installs
  } catch {
    return undefined;
  }
  return pino.transport({ target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:standard' } });
}

/** Fields every line has, left out of a CLI message. */
const ROUTINE = new Set(['level', 'time', 'pid', 'msg', 'event']);

/**
 * The logger of a one-shot command (flush, sync) run standalone: on a terminal, each line
 * as "secondarymx: warning: primary is DOWN … (primary=…, reason=…)", written at once,
 * so nothing raw follows the command's summary; otherwise JSON lines on stderr, as the
 * daemon's, for scripts and journald.
 */
export function createCliLogger(level: string): Logger {
  if (!process.stderr.isTTY) return createLogger(level, pino.destination({ dest: 2, sync: true }));
  const names: Record<number, string> = { 10: 'trace', 20: 'debug', 30: 'info', 40: 'warning', 50: 'error', 60: 'fatal' };
  const human = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) {
        const record = JSON.parse(line) as Record<string, unknown>;
        const details = Object.entries(record)
          .filter(([key]) => !ROUTINE.has(key))
          .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`);
        const name = names[Number(record.level)] ?? 'log';
        process.stderr.write(`secondarymx: ${name}: ${String(record.msg)}${details.length ? ` (${details.join(', ')})` : ''}\n`);
      }
      callback();
    },
  });
  return createLogger(level, human);
}

/**
 * The daemon's stdout carries JSON lines only: what a library prints with console (mailauth
 * logs "TOTAL n EXPECTING m" for a DKIM l= longer than the body, which any sender can
 * cause) goes through the logger as a line of its own (event library_output).
 */
export function captureConsole(log: Logger): void {
  redirectConsole((level, text) => log[level]({ event: 'library_output', text }, 'a library wrote to the console'));
}

/** console.log/info/debug as debug, console.warn/error as warn, each call's text to `write` (a check thread's go to the daemon's log). */
export function redirectConsole(write: (level: 'debug' | 'warn', text: string) => void): void {
  const as =
    (level: 'debug' | 'warn') =>
    (...args: unknown[]) =>
      write(level, format(...args));
  console.log = console.info = console.debug = as('debug');
  console.warn = console.error = as('warn');
}
