import type { DNSResolver } from 'mailauth';
import { sourceInput, type MessageSource } from '../spool/message-source.js';
import { serveTasks } from '../threads/pool.js';
import { checkMessage, type MessageCheckRequest, type MessageCheckResult } from './message-checks.js';
import { cachingResolve, screenResolver } from './resolver.js';

export interface CheckTask {
  request: MessageCheckRequest;
  source: MessageSource;
  /** dns.servers and auth.dnsTimeout: the thread resolves on its own (its own cache), as the main thread's SPF does. */
  dns: { servers?: string[]; timeoutSeconds: number };
}

let resolver: { key: string; resolve: DNSResolver } | undefined;

function resolverFor(dns: CheckTask['dns']): DNSResolver {
  const key = JSON.stringify(dns);
  if (resolver?.key !== key) resolver = { key, resolve: cachingResolve(screenResolver(dns.servers, dns.timeoutSeconds)) };
  return resolver.resolve;
}

/** A check thread (threads/pool.ts): a cancelled check (past its deadline) stops reading its temp file. */
serveTasks<CheckTask, MessageCheckResult>(async ({ request, source, dns }, signal) => {
  const message = sourceInput(source);
  // A file being read stops; bytes in memory (64 KB at most) are done soon enough.
  if (!Buffer.isBuffer(message)) signal.addEventListener('abort', () => message.destroy(new Error('cancelled: past the deadline')), { once: true });
  return checkMessage(message, request, resolverFor(dns));
});
