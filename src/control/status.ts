import type { Conflict } from '../directory/snapshot.js';
import type { SourceState } from '../directory/store.js';
import type { SourceCondition } from '../directory/sync.js';

/** What `secondarymx status` shows; the daemon answers it, or the CLI builds it offline. */
export interface StatusReport {
  daemon: { running: boolean; pid?: number; listen?: string[]; startedAt?: string };
  /** Only from a running daemon: the snapshot being served. */
  directory?: { domains: number; addresses: number; complete: boolean; missingSources: readonly string[]; conflicts: readonly Conflict[] };
  sources: Array<SourceState & { name: string; condition?: SourceCondition }>;
  spool: { messages: number; bytes: number };
  /** Only from a running daemon: each primary the relay talks to. */
  primaries?: Array<{ primary: string; up: boolean }>;
  /** Only while the relay is stopped by a storage fault: why. */
  delivery?: string;
}
