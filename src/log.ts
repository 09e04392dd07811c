import { createRequire } from 'node:module';
import { pino, type DestinationStream, type Logger } from 'pino';

/**
 * pino JSON lines on stdout (journald-friendly); secrets are redacted wherever they
 * appear in a logged object. On a terminal, in development (pino-pretty installed,
 * NODE_ENV not production), lines are pretty-printed instead.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: ['password', '*.password', '*.*.password'], censor: '********' },
    },
    destination ?? prettyOnTerminal(),
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
