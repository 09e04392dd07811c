import assert from 'node:assert/strict';
import { parseConfig } from '../../src/config/load.js';
import { Routes } from '../../src/relay/routes.js';
import { backoff, Schedule } from '../../src/relay/schedule.js';
import type { Envelope } from '../../src/spool/envelope.js';
import { newQueueId } from '../../src/spool/queue-id.js';

const T0 = Date.parse('2026-11-28T12:00:00Z');
const MINUTE = 60_000;

function envelope(fields: Partial<Envelope> & { at?: number; to?: string[] } = {}): Envelope {
  const { at = T0, to = ['alice@d1.example'], ...rest } = fields;
  return {
    version: 1,
    id: newQueueId(at),
    arrival: new Date(at).toISOString(),
    sender: 's@remote.example',
    recipients: to.map((address) => ({ address, state: 'pending' as const })),
    size: 100,
    bodyType: '7bit',
    smtpUtf8: false,
    client: { address: '127.0.0.1', helo: 'x' },
    ...rest,
  };
}

/** The default route of every recipient is "primary"; a DSN goes to "mx:<domain>". */
const schedule = (policy = { queueLifetime: 5 * 86400, delayWarning: 0, maxBackoff: 4000 }) =>
  new Schedule(policy, (kind, recipient) => (kind === 'dsn' ? `mx:${recipient.address.split('@')[1]}` : recipient.source === 'b' ? 'primary-b' : 'primary'));

/** Everything ready on a route at `now`, in the order workers would get it (each taken, then finished). */
function drain(s: Schedule, route: string, now: number): string[] {
  const ids: string[] = [];
  for (let entry = s.next(route, now); entry; entry = s.next(route, now)) {
    s.take(entry);
    ids.push(entry.id);
  }
  return ids;
}

describe('relay schedule (injected time, no I/O)', () => {
  it('backs off as Postfix does: min, doubling, capped at max', () => {
    assert.deepEqual(
      [1, 2, 3, 4, 5, 10].map((n) => backoff(n, 300, 4000)),
      [300, 600, 1200, 2400, 4000, 4000],
    );
  });

  it('hands out due messages oldest first, per route, and a deferred one only once its backoff has passed', () => {
    const s = schedule();
    const old = envelope({ at: T0 });
    const young = envelope({ at: T0 + 1000 });
    const deferred = envelope({ at: T0 - MINUTE, nextAttempt: new Date(T0 + 5 * MINUTE).toISOString(), deferrals: 1 });
    const other = envelope({ at: T0, recipients: [{ address: 'x@b.example', state: 'pending', source: 'b' }] });
    for (const e of [young, deferred, old, other]) s.index(e, T0 + 2000);
    s.advance(T0 + 2000);
    assert.deepEqual(drain(s, 'primary', T0 + 2000), [old.id, young.id]);
    assert.deepEqual(drain(s, 'primary-b', T0 + 2000), [other.id]);
    assert.equal(s.nextWake(), T0 + 5 * MINUTE);
    s.advance(T0 + 5 * MINUTE);
    assert.deepEqual(drain(s, 'primary', T0 + 5 * MINUTE), [deferred.id]);
  });

  it('never hands out a held message, nor one another job has taken', () => {
    const s = schedule();
    const held = envelope({ held: true });
    const busy = envelope({ at: T0 + 1 });
    s.index(held, T0);
    const entry = s.index(busy, T0)!;
    s.take(entry);
    s.advance(T0);
    assert.deepEqual(drain(s, 'primary', T0), []);
  });

  it('examines a message re-indexed while its job ran once the job ends (no message lost to a race)', () => {
    const s = schedule();
    const e = envelope();
    const entry = s.index(e, T0)!;
    s.advance(T0);
    assert.deepEqual(drain(s, 'primary', T0), [e.id]);
    // The job (a 4xx, backoff recorded) re-indexes; another worker's kick fires timers before the job ends.
    s.index({ ...e, recipients: [...e.recipients, { address: 'bob@d1.example', state: 'pending' }] }, T0);
    s.advance(T0 + 10);
    s.finish(entry, T0 + 10);
    assert.deepEqual(drain(s, 'primary', T0 + 10), [e.id]);
  });

  it('turns expiry, the delay notice and an interrupted notice into chores, at their time', () => {
    const s = schedule({ queueLifetime: 3600, delayWarning: 600, maxBackoff: 86400 });
    const e = envelope({ nextAttempt: new Date(T0 + 2 * 3600_000).toISOString() });
    const interrupted = envelope({ at: T0 + 1, notice: { id: newQueueId(), action: 'failed', recipients: ['alice@d1.example'] } });
    s.index(e, T0);
    s.index(interrupted, T0);
    assert.deepEqual(s.nextChore()?.chore, 'notice');
    assert.equal(s.nextChore(), undefined);
    s.advance(T0 + 599_000);
    assert.equal(s.nextChore(), undefined);
    s.advance(T0 + 600_000);
    const warn = s.nextChore()!;
    assert.deepEqual([warn.chore, warn.entry.id], ['warn', e.id]);
    warn.entry.warnAt = Infinity; // the relay's warn chore does this
    s.take(warn.entry);
    s.finish(warn.entry, T0 + 600_000);
    s.advance(T0 + 3600_000);
    assert.deepEqual(s.nextChore()?.chore, 'expire');
  });

  it('looks again a second later at a message another process held (blockedUntil), not in a tight loop', () => {
    const s = schedule();
    const entry = s.index(envelope(), T0)!;
    s.advance(T0);
    assert.equal(drain(s, 'primary', T0).length, 1);
    entry.blockedUntil = T0 + 1000;
    s.finish(entry, T0);
    s.advance(T0 + 500);
    assert.deepEqual(drain(s, 'primary', T0 + 500), []);
    s.advance(T0 + 1000);
    assert.deepEqual(drain(s, 'primary', T0 + 1000), [entry.id]);
  });

  it('reads stored wall-clock times on its own clock: a step of the wall clock moves neither a retry nor an expiry', () => {
    const s = schedule();
    const stepBack = 3600_000; // the wall clock is an hour behind the schedule's clock now
    const e = envelope({ arrival: new Date(T0 - stepBack).toISOString(), nextAttempt: new Date(T0 - stepBack + 300_000).toISOString() });
    const entry = s.index(e, T0, T0 - stepBack)!;
    assert.equal(entry.due, T0 + 300_000, 'due in 5 minutes, as written, not in 65');
    assert.equal(entry.expires, T0 + 5 * 86400_000);
    assert.equal(entry.arrival, T0 - stepBack, 'the arrival shown stays the wall clock’s');
  });

  it('brings a stored next attempt further away than relay.maxBackoff back to it (written while the wall clock was days ahead)', () => {
    const s = schedule();
    const entry = s.index(envelope({ nextAttempt: new Date(T0 + 2 * 86400_000).toISOString() }), T0)!;
    assert.equal(entry.due, T0 + 4000_000);
  });

  it('re-routes every indexed message on a new config, without a spool scan', () => {
    const s = schedule();
    const e = envelope();
    s.index(e, T0);
    s.reconfigure({ queueLifetime: 60, delayWarning: 0, maxBackoff: 4000 }, () => 'new-primary', T0);
    s.advance(T0);
    assert.deepEqual(drain(s, 'primary', T0), []);
    assert.deepEqual(drain(s, 'new-primary', T0), [e.id]);
    assert.equal(s.get(e.id)!.expires, T0 + 60_000);
  });

  it("counts the messages using each route, so routes to senders' MX hosts are forgotten once idle", () => {
    const config = parseConfig('primary: { host: 127.0.0.1, port: 2526 }\nsources: [{ name: a, type: file, path: x }]\n', '/test.yaml');
    const routes = new Routes(config);
    const mxRoutes = () => [...routes.all()].filter((route) => route.mxDomain).length;
    const s = new Schedule(config.relay, (kind, recipient) => routes.keyFor(kind, recipient));
    const dsns = Array.from({ length: 50 }, (_, i) => envelope({ kind: 'dsn', sender: '', to: [`someone@sender${i}.example`] }));
    for (const dsn of dsns) s.index(dsn, T0);
    s.index(envelope(), T0);
    assert.equal(mxRoutes(), 50);
    for (const dsn of dsns.slice(0, 49)) s.delete(dsn.id); // delivered
    routes.sweep((key) => s.uses(key));
    assert.equal(mxRoutes(), 1);
    assert.deepEqual(routes.primaries(), [{ primary: '127.0.0.1:2526', up: true }], 'status and metrics list primaries only');
    s.index({ ...dsns[49], recipients: [{ ...dsns[49].recipients[0], state: 'delivered' }] }, T0);
    routes.sweep((key) => s.uses(key));
    assert.equal(mxRoutes(), 0);
  });
});
