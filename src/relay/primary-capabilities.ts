import { join } from 'node:path';
import { writeFileSynced } from '../fs/durable.js';
import { readStateFile, UnusableStateFile } from '../fs/state-file.js';

/** What a primary announced in its last EHLO that the SMTP side must not promise beyond. */
export interface Capabilities {
  /** RFC 1870 SIZE limit; null when it gave none. */
  size: number | null;
  smtpUtf8: boolean;
}

/**
 * Each primary's capabilities as last seen, kept in spool/primaries.json so that a
 * daemon started while its primary is down still knows how much it takes and whether
 * it speaks SMTPUTF8.
 */
export class PrimaryCapabilities {
  private readonly seen: Map<string, Capabilities>;
  private readonly file: string;
  private saving: Promise<void> = Promise.resolve();

  constructor(spoolRoot: string) {
    this.file = join(spoolRoot, 'primaries.json');
    let saved: Record<string, Partial<Capabilities>> = {};
    try {
      const stored = readStateFile(this.file, 1024 * 1024);
      if (stored && typeof stored === 'object' && !Array.isArray(stored)) saved = stored as typeof saved;
    } catch (error) {
      if (!(error instanceof UnusableStateFile)) throw error; // unusable: learnt again at the next connection
    }
    this.seen = new Map(
      Object.entries(saved).map(([key, value]) => [key, { size: typeof value?.size === 'number' ? value.size : null, smtpUtf8: value?.smtpUtf8 !== false }]),
    );
  }

  /**
   * Records what a primary announced. Unchanged: undefined. Changed: in effect at once
   * (the SMTP side follows it before the next session), and the promise resolves once the
   * file is saved; saves run one after another.
   */
  record(primary: string, capabilities: Capabilities): Promise<void> | undefined {
    const known = this.seen.get(primary);
    if (known && known.size === capabilities.size && known.smtpUtf8 === capabilities.smtpUtf8) return undefined;
    this.seen.set(primary, capabilities);
    const save = this.saving.then(() => writeFileSynced(`${this.file}.tmp`, this.file, `${JSON.stringify(Object.fromEntries(this.seen), null, 2)}\n`));
    this.saving = save.catch(() => undefined); // reported by the caller; the next save goes ahead
    return save;
  }

  /** The smallest SIZE among these primaries; undefined when none announced one. */
  smallestSize(primaries: readonly string[]): number | undefined {
    const sizes = primaries.map((key) => this.seen.get(key)?.size).filter((size): size is number => typeof size === 'number');
    return sizes.length ? Math.min(...sizes) : undefined;
  }

  /** False once any of these primaries was seen without SMTPUTF8 (unknown ones are assumed to have it). */
  allSmtpUtf8(primaries: readonly string[]): boolean {
    return primaries.every((key) => this.seen.get(key)?.smtpUtf8 !== false);
  }
}
