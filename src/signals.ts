/**
 * `serve`'s signals, listened to from the first line of the command: Node's default for
 * SIGHUP is to exit (129), which systemd's Restart=on-failure counts as clean, so a
 * `systemctl reload` in the second after a start (a certbot deploy hook) used to leave the
 * backup MX down. A SIGHUP before the daemon is ready is held and applied once it is;
 * SIGTERM or SIGINT before then stops it as soon as it has started.
 */
export class ServeSignals {
  private reload: (() => void) | undefined;
  private reloadHeld = false;
  /** Resolves with the first SIGTERM or SIGINT. */
  readonly stop: Promise<NodeJS.Signals>;

  constructor() {
    process.on('SIGHUP', () => {
      if (this.reload) this.reload();
      else this.reloadHeld = true;
    });
    this.stop = new Promise((resolve) => {
      process.once('SIGTERM', resolve);
      process.once('SIGINT', resolve);
    });
  }

  /** From now on SIGHUP calls `reload`; says whether one came before (the caller logs it and reloads). */
  onReload(reload: () => void): boolean {
    this.reload = reload;
    const held = this.reloadHeld;
    this.reloadHeld = false;
    return held;
  }
}

/** The oldest Node.js the daemon runs on (Debian 13's is 20.19; Node 18 lacks the File global undici needs). */
export const MIN_NODE_MAJOR = 20;

/** Why this runtime cannot run the daemon, or undefined when it can. */
export function runtimeProblem(nodeVersion: string): string | undefined {
  const major = Number(/^v?(\d+)\./.exec(nodeVersion)?.[1]);
  if (major >= MIN_NODE_MAJOR) return undefined;
  return `needs Node.js ${MIN_NODE_MAJOR} or later, this is ${nodeVersion} (Debian 12: Node.js 20 from NodeSource, see the README's deployment guide)`;
}
