import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileSynced } from '../spool/durable.js';

/**
 * The SIZE limit each primary last announced in its EHLO (null: none), kept in
 * spool/primaries.json so that a daemon started while its primary is down still
 * knows how much the primary will take.
 */
export class PrimaryLimits {
  private readonly limits: Map<string, number | null>;
  private readonly file: string;

  constructor(spoolRoot: string) {
    this.file = join(spoolRoot, 'primaries.json');
    let saved: Record<string, { size: number | null }> = {};
    try {
      saved = JSON.parse(readFileSync(this.file, 'utf8')) as typeof saved;
    } catch {
      // none yet, or unreadable: learnt again at the next connection
    }
    this.limits = new Map(Object.entries(saved).map(([key, value]) => [key, typeof value?.size === 'number' ? value.size : null]));
  }

  /** Records what a primary announced; resolves true when it changed (and is saved). */
  async record(primary: string, size: number | undefined): Promise<boolean> {
    const value = size ?? null;
    if (this.limits.has(primary) && this.limits.get(primary) === value) return false;
    this.limits.set(primary, value);
    const data = Object.fromEntries([...this.limits].map(([key, limit]) => [key, { size: limit }]));
    await writeFileSynced(`${this.file}.tmp`, this.file, `${JSON.stringify(data, null, 2)}\n`);
    return true;
  }

  /** The smallest limit among these primaries; undefined when none announced one. */
  smallest(primaries: readonly string[]): number | undefined {
    const sizes = primaries.map((key) => this.limits.get(key)).filter((size): size is number => typeof size === 'number');
    return sizes.length ? Math.min(...sizes) : undefined;
  }
}
