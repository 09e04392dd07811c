import { execFileSync } from 'node:child_process';
import { chownSync, lstatSync, mkdirSync, statSync } from 'node:fs';
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

/** The spool's folders the service user must own; files inside are its own since it writes them. */
const SPOOL_FOLDERS = ['', 'tmp', 'queue', 'corrupt', 'locks', 'directory'];

/**
 * Started as root with `user:`: checks that the spool belongs to the service user
 * (creating it, empty, if it is missing), then takes the service user's identity as
 * the *effective* one, so that everything start-up writes (lock, recovery, lists) is
 * the user's and no symlink the user planted is followed with root's rights. Root
 * stays the real user only to bind the listening ports (bindAsRoot), after which
 * dropPrivileges makes the switch final. Nothing is chowned: a spool of someone
 * else is refused with the command that fixes it.
 */
export function assumeServiceIdentity(identity: Identity, spoolRoot: string, names: string): void {
  if (process.getuid?.() !== 0) throw new Error('config key user is set, but the daemon was not started as root: remove it, or start as root');
  try {
    mkdirSync(spoolRoot, { mode: 0o700 });
    chownSync(spoolRoot, identity.uid, identity.gid); // just made, empty: nothing in it to be tricked by
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  for (const folder of SPOOL_FOLDERS) {
    const path = join(spoolRoot, folder);
    let stats;
    try {
      stats = lstatSync(path);
    } catch {
      continue; // made by the service user in a moment
    }
    if (stats.isSymbolicLink() || !stats.isDirectory() || stats.uid !== identity.uid) {
      throw new Error(`spool ${path} is not a folder owned by ${names} (uid ${identity.uid}): run "chown -R ${names} ${spoolRoot}" and start again`);
    }
  }
  process.setgroups?.([identity.gid]);
  process.setegid?.(identity.gid);
  process.seteuid?.(identity.uid);
}

/** Binds the listening sockets with root's effective rights (port 25), then gives them up again. */
export async function bindAsRoot<T>(identity: Identity | undefined, bind: () => Promise<T>): Promise<T> {
  if (!identity) return bind();
  process.seteuid?.(0);
  try {
    return await bind();
  } finally {
    process.seteuid?.(identity.uid);
  }
}

/** For good: real, effective and saved ids become the service user's. Synchronous, before any session is served. */
export function dropPrivileges(identity: Identity, log: Logger): void {
  process.seteuid?.(0); // setuid() sets all three ids only with root's effective rights
  process.setgid?.(identity.gid);
  process.setuid?.(identity.uid);
  log.info({ uid: identity.uid, gid: identity.gid }, 'privileges dropped');
}

/**
 * A command that writes to the spool (flush, sync, queue hold…), typed as root: it acts
 * as the spool's owner for good, as Postfix's postqueue runs setgid, so it neither
 * leaves root-owned files the daemon cannot touch nor follows a symlink the service
 * user planted with root's rights. Anyone else runs as who they are.
 */
export function actAsSpoolOwner(spoolRoot: string): void {
  if (process.getuid?.() !== 0) return;
  let owner: { uid: number; gid: number };
  try {
    owner = statSync(spoolRoot);
  } catch {
    return; // no spool yet: the command creates it, or says it is missing
  }
  if (owner.uid === 0) return;
  process.setgroups?.([owner.gid]);
  process.setgid?.(owner.gid);
  process.setuid?.(owner.uid);
}
