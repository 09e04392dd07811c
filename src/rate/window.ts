import type { ExpiringStore } from '../screen/expiring-store.js';

/**
 * Events per key over a sliding window (one timestamp per event; keys whose events are all
 * older are dropped): what DSNs per sender domain and probes per client are counted with.
 * With a `store`, a key's events are saved there (for the window) and read back after a
 * restart: a limit that a restart reset would be no limit.
 */
export class WindowRate {
  private readonly events = new Map<string, number[]>();
  private lastSweep = 0;

  constructor(
    private readonly windowMs: number,
    private readonly store?: ExpiringStore<number[]>,
  ) {}

  /** Counts one event for `key` unless `limit` were already counted in the window; says whether it was. */
  allow(key: string, limit: number, now = Date.now()): boolean {
    const since = now - this.windowMs;
    const known = this.events.get(key) ?? this.store?.get(key, now);
    const recent = (Array.isArray(known) ? known : []).filter((at) => typeof at === 'number' && at > since);
    // Past 10,000 keys, drop the stale ones, at most once a minute (not on every call of a burst).
    if (this.events.size > 10_000 && now - this.lastSweep > Math.min(this.windowMs, 60_000)) {
      this.lastSweep = now;
      for (const [other, times] of this.events) if (times.every((at) => at <= since)) this.events.delete(other);
    }
    if (recent.length >= limit) {
      this.events.set(key, recent);
      return false;
    }
    recent.push(now);
    this.events.set(key, recent);
    this.store?.set(key, recent, this.windowMs / 1000);
    return true;
  }
}
