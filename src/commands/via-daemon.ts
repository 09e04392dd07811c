import { callDaemon } from '../control/client.js';
import { runningDaemonPid } from '../spool/locks.js';

/**
 * A command that writes to the spool goes through the running daemon (its control
 * socket), so that the daemon sees the change; with no daemon, this process does it on
 * its own. A daemon that holds the spool but does not answer is an error, never a
 * reason to work on its spool beside it.
 */
export async function viaDaemonOr<T>(
  spoolRoot: string,
  path: string,
  standalone: () => Promise<T>,
  wait: (work: Promise<T | undefined>) => Promise<T | undefined> = (work) => work,
): Promise<{ result: T; via: 'daemon' | 'standalone' }> {
  const answered = await wait(callDaemon<T>(spoolRoot, 'POST', path));
  if (answered !== undefined) return { result: answered, via: 'daemon' };
  const pid = runningDaemonPid(spoolRoot);
  if (pid) throw new Error(`the daemon (pid ${pid}) holds ${spoolRoot} but its control socket does not answer`);
  return { result: await standalone(), via: 'standalone' };
}
