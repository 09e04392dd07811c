import assert from 'node:assert/strict';
import { startTestDaemon, type TestDaemon } from './helpers/daemon.js';
import { AlternCDatabase } from './helpers/mysql.js';
import { startAlternCPrimary } from './helpers/postfix.js';
import { rcptReplies } from './helpers/smtp-client.js';

/**
 * The daemon's RCPT answer against AlternC's primary's own: Postfix on AlternC's schema
 * (test/fixtures/alternc-mail.sql) with AlternC's map files (test/helpers/postfix.ts),
 * both asked the same addresses in one session each.
 */

/** Where the daemon and AlternC's primary answer differently, on purpose (README: "Where this MX differs from the primary"). */
const DIFFERENCES: Record<string, string> = {
  'alicé@example.org': "MySQL's accent-insensitive collation makes the primary take it for alice; we refuse an address nobody created",
  'carol@example.org': 'disabled address that still has a mailbox: the primary accepts it at RCPT, then dovecot bounces it; we refuse it at RCPT',
};

/** The RCPT reply code of each address, in one session to `port`. */
const rcptCodes = async (port: number, addresses: string[]) =>
  (await rcptReplies(port, 'sender@remote.example', addresses, 'SMTPUTF8')).map((reply) => reply.code);

describe('AlternC parity: the daemon accepts what the primary accepts (AlternC schema, Postfix on its map files)', function () {
  this.timeout(60_000);
  let db: AlternCDatabase;
  let primary: Awaited<ReturnType<typeof startAlternCPrimary>>;
  let mx: TestDaemon;

  before(async () => {
    db = await AlternCDatabase.create({ mail: true });
    const domain = (domaine: string, gesmx = 1, dnsAction = 'OK') => db.domain(domaine, { gesmx, dns_action: dnsAction });
    const address = db.address.bind(db);
    const org = await domain('example.org');
    await address(org, 'alice', { mailbox: true });
    await address(org, 'Bob.Smith', { recipients: 'bob@elsewhere.test' });
    await address(org, 'carol', { enabled: 0, mailbox: true }); // disabled, mailbox not yet removed by AlternC's cron
    await address(org, 'dave', { enabled: 0, recipients: 'dave@elsewhere.test' });
    await address(org, 'postmaster', { recipients: 'admin@elsewhere.test' });
    const lists = await domain('lists.example');
    for (const suffix of ['', '-request', '-owner', '-admin', '-bounces', '-confirm', '-join', '-leave', '-subscribe', '-unsubscribe']) {
      await address(lists, `discuss${suffix}`, { type: 'mailman' }); // what alternc-mailman's add_wrapper_all writes
    }
    const catchAll = await domain('catch.example');
    await address(catchAll, '', { type: 'catchall', recipients: '@example.org' });
    await address(await domain('_mail.example.net'), 'postmaster', { mailbox: true });
    await address(await domain('xn--bcher-kva.example'), 'info', { mailbox: true });
    await address(await domain('leaving.example', 1, 'DELETE'), 'still', { mailbox: true });
    await address(await domain('nomx.example', 0), 'alice', { mailbox: true });
    await domain('panel.example.org');
    await db.execute("INSERT INTO {db}.variable (name, value) VALUES ('mailname_bounce', 'panel.example.org')");
    await db.execute(
      "INSERT INTO {db}.membres (uid, login, mail, notes) VALUES (2000, 'admin', 'admin@elsewhere.test', ''), (2001, 'jdoe', 'jdoe@elsewhere.test', '')",
    );
    primary = await startAlternCPrimary(new URL(db.url()));
    mx = await startTestDaemon({ sources: `  - { name: alternc, type: mysql, url: "${db.url()}" }` });
  });

  after(async () => {
    await mx?.stop();
    await primary?.remove();
    await db?.drop();
  });

  it('agrees on every address of the fixture but the documented differences', async () => {
    const addresses = [
      'alice@example.org',
      'ALICE@Example.ORG',
      'alice+news@example.org',
      'alice+@example.org',
      'bob.smith@example.org',
      'bob.smith+lists@example.org',
      'carol@example.org',
      'dave@example.org',
      'nobody@example.org',
      'nobody+alice@example.org',
      'postmaster@example.org',
      'alicé@example.org',
      'alice@example.org.',
      '"alice"@example.org',
      'discuss@lists.example',
      'discuss-request@lists.example',
      'discuss-confirm+0a1b2c3d4e5f@lists.example',
      'discuss-bounces+jane=other.test@lists.example',
      'discuss-join@lists.example',
      'discuss-leave@lists.example',
      'discuss-owner@lists.example',
      'discuss-subscribe@lists.example',
      'discuss-unsubscribe@lists.example',
      'other-list@lists.example',
      'anyone@catch.example',
      'anyone+x@catch.example',
      'postmaster@_mail.example.net',
      'info@xn--bcher-kva.example',
      'info@bücher.example',
      'still@leaving.example',
      'alice@nomx.example',
      'alice@unknown.example',
      'jdoe@panel.example.org',
      'alterncpanel@panel.example.org',
      'nobody@panel.example.org',
    ];
    const ours = await rcptCodes(mx.port, addresses);
    // The primary is asked what we would relay: the domain in punycode (Postfix's mysql lookup does not map U-labels: info@bücher.example gets 554 there).
    const theirs = await rcptCodes(
      primary.port,
      addresses.map((address) => address.replace('bücher', 'xn--bcher-kva')),
    );
    const rows = addresses.flatMap((address, i) =>
      (ours[i] === 250) === (theirs[i] === 250) ? [] : [`${address}: primary answers ${theirs[i]}, we answer ${ours[i]}`],
    );
    assert.deepEqual(rows.map((row) => row.slice(0, row.indexOf(':'))).sort(), Object.keys(DIFFERENCES).sort(), `differences:\n${rows.join('\n')}`);
  });
});
