import type { Logger } from 'pino';
import type { LoadedConfig } from './config/load.js';
import { Directory, loadSnapshot } from './directory/directory.js';
import { ReceiveServer } from './receive/server.js';
import { Spool } from './spool/spool.js';

/** A running daemon: what tests and the CLI start and stop. */
export interface Daemon {
  server: ReceiveServer;
  directory: Directory;
  spool: Spool;
  stop(): Promise<void>;
}

export async function startDaemon({ file, config }: LoadedConfig, log: Logger): Promise<Daemon> {
  log.info({ config: file, hostname: config.hostname, spool: config.spool }, 'starting');
  const directory = new Directory(await loadSnapshot(config.sources, log));
  const spool = await Spool.openForServing(config.spool, log);
  const server = new ReceiveServer({ config, directory, spool, log });
  try {
    await server.listen();
  } catch (error) {
    await server.close();
    await spool.unlock();
    throw error;
  }
  return {
    server,
    directory,
    spool,
    async stop() {
      await server.close();
      await spool.unlock();
    },
  };
}

/** `secondarymx serve`: runs until SIGTERM or SIGINT, then stops gracefully. */
export async function serve(loaded: LoadedConfig, log: Logger): Promise<void> {
  const daemon = await startDaemon(loaded, log);
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  log.info({ signal, shutdownTimeout: loaded.config.limits.shutdownTimeout }, 'stopping: finishing sessions in DATA');
  await daemon.stop();
  log.info('stopped');
}
