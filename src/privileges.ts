import { execFileSync } from 'node:child_process';
import { chown, lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';

export interface Identity {
  uid: number;
  gid: number;
}

/** uid and gid of `user` (and `group`, else the user's own group), from the system's databases. */
export function lookupIdentity(user: string, group?: string): Identity {
  const id = (...args: string[]) => Number(execFileSync('id', args, { encoding: 'utf8' }).trim());
  try {
    const uid = id('-u', user);
    const gid = group ? Number(execFileSync('getent', ['group', group], { encoding: 'utf8' }).split(':')[2]) : id('-g', user);
    if (!Number.isInteger(uid) || !Number.isInteger(gid)) throw new Error('not found');
    return { uid, gid };
  } catch {
    throw new Error(`no such ${group ? 'user or group' : 'user'}: ${user}${group ? `:${group}` : ''} (config keys user/group)`);
  }
}

/**
 * Started as root: hands the spool to the service user, then becomes that user for
 * good. Called after the listening sockets are bound (port 25 needs root or
 * CAP_NET_BIND_SERVICE) and before anything reads mail.
 */
export async function dropPrivileges(identity: Identity, spoolRoot: string, log: Logger): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('config key user is set, but the daemon was not started as root: remove it, or start as root');
  await chownTree(spoolRoot, identity);
  process.setgroups?.([identity.gid]);
  process.setgid?.(identity.gid);
  process.setuid?.(identity.uid);
  log.info({ uid: identity.uid, gid: identity.gid }, 'privileges dropped');
}

async function chownTree(path: string, { uid, gid }: Identity): Promise<void> {
  const info = await lstat(path);
  if (info.isSymbolicLink()) return;
  await chown(path, uid, gid);
  if (info.isDirectory()) for (const name of await readdir(path)) await chownTree(join(path, name), { uid, gid });
}
