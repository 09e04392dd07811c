import { pino, type DestinationStream, type Logger } from 'pino';

/** pino JSON lines; secrets are redacted wherever they appear in a logged object. */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: ['password', '*.password', '*.*.password'], censor: '********' },
    },
    destination,
  );
}
