import { createRequire } from 'node:module';
import { pino, type DestinationStream, type Logger } from 'pino';

/**
 * pino JSON lines on stdout (journald-friendly); secrets are redacted wherever they
 * appear in a logged object. On a terminal, in development (pino-pretty installed,
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
    },
    destination ?? prettyOnTerminal() ?? pino.destination({ dest: 1, sync: false }),
  );
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
