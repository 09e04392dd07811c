import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createConnection, type Connection } from 'mysql2/promise';
import { startTestDaemon, type TestDaemon } from './helpers/daemon.js';
import { TEST_MYSQL_URL } from './helpers/mysql.js';
import { SmtpClient } from './helpers/smtp-client.js';

/**
 * The daemon's RCPT answer against what AlternC's primary accepts, on AlternC's own
 * schema (test/fixtures/alternc-mail.sql) and AlternC's own Postfix map queries, with
 * Postfix's lookup order for a virtual mailbox domain: the address, then (with
 * recipient_delimiter = +, Debian's default) the address without its extension, then
 * the domain's catch-all "@domain"; valid when an alias or mailbox map answers.
 */
const MAPS = {
  domain: 'select domaines.domaine from domaines where domaine = ? and gesmx = 1', // mydomain.cf
  alias: 'select alias from alias_view where mail = ?', // myalias.cf
  mail2mail:
    "select concat(`address`.`address`,'@',`domaines`.`domaine`) AS `mail` from address,domaines where `address`.`enabled` = 1 and `address`.`domain_id` = domaines.id and concat(`address`.`address`,'@',`domaines`.`domaine`) = ?", // mymail2mail.cf
  mailbox:
    "select concat(path, '/Maildir/') from mailbox join address on address.id = mailbox.address_id join domaines on domaines.id = address.domain_id where concat(address.address,'@',domaines.domaine) = ?", // myvirtual.cf
};

async function primaryAccepts(db: Connection, address: string): Promise<boolean> {
  // Postfix's own reading of the address: trailing dot dropped, needless quotes removed, lowercase keys.
  const at = address.lastIndexOf('@');
  const local = address
    .slice(0, at)
    .replace(/^"(.*)"$/, '$1')
    .toLowerCase();
  const domain = address
    .slice(at + 1)
    .replace(/\.$/, '')
    .toLowerCase();
  const [hosted] = await db.query(MAPS.domain, [domain]);
  if ((hosted as unknown[]).length === 0) return false;
  const plus = local.indexOf('+');
  const keys = [`${local}@${domain}`, ...(plus > 0 ? [`${local.slice(0, plus)}@${domain}`] : []), `@${domain}`];
  for (const key of keys) {
    for (const sql of [MAPS.alias, MAPS.mail2mail, MAPS.mailbox]) {
      const [rows] = await db.query(sql, [key]);
      if ((rows as unknown[]).length > 0) return true;
    }
  }
  return false;
}

/** Where the daemon and AlternC's primary answer differently, on purpose (README: "Where this MX differs from the primary"). */
const DIFFERENCES: Record<string, string> = {
  'alicé@example.org': "MySQL's accent-insensitive collation makes the primary take it for alice; we refuse an address nobody created",
  'carol@example.org': 'disabled address that still has a mailbox: the primary accepts it at RCPT, then dovecot bounces it; we refuse it at RCPT',
};

describe('AlternC parity: the daemon accepts what the primary accepts (AlternC schema and map queries)', () => {
  let admin: Connection;
  let name: string;
  let mx: TestDaemon;

  before(async () => {
    admin = await createConnection({ uri: TEST_MYSQL_URL, multipleStatements: true });
    name = `secondarymx_parity_${randomBytes(4).toString('hex')}`;
    await admin.query(`CREATE DATABASE ${name} CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci; USE ${name}`);
    await admin.query(readFileSync(new URL('./fixtures/alternc-mail.sql', import.meta.url), 'utf8'));
    const domain = async (domaine: string, gesmx = 1, dnsAction = 'OK') =>
      ((await admin.query('INSERT INTO domaines (domaine, gesmx, dns_action) VALUES (?, ?, ?)', [domaine, gesmx, dnsAction]))[0] as { insertId: number })
        .insertId;
    const address = async (domainId: number, local: string, fields: { type?: string; enabled?: number; mailbox?: boolean; recipients?: string } = {}) => {
      const [result] = await admin.query('INSERT INTO address (domain_id, address, type, enabled) VALUES (?, ?, ?, ?)', [
        domainId,
        local,
        fields.type ?? '',
        fields.enabled ?? 1,
      ]);
      const id = (result as { insertId: number }).insertId;
      if (fields.mailbox) await admin.query("INSERT INTO mailbox (address_id, path, delivery) VALUES (?, ?, 'dovecot')", [id, `/var/mail/${local}`]);
      if (fields.recipients) await admin.query('INSERT INTO recipient (address_id, recipients) VALUES (?, ?)', [id, fields.recipients]);
    };
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
    await admin.query("INSERT INTO variable (name, value) VALUES ('mailname_bounce', 'panel.example.org')");
    await admin.query(
      "INSERT INTO membres (uid, login, mail, notes) VALUES (2000, 'admin', 'admin@elsewhere.test', ''), (2001, 'jdoe', 'jdoe@elsewhere.test', '')",
    );
    const url = new URL(TEST_MYSQL_URL);
    url.pathname = `/${name}`;
    mx = await startTestDaemon({ sources: `  - { name: alternc, type: mysql, url: "${url}" }` });
  });

  after(async () => {
    await mx?.stop();
    await admin.query(`DROP DATABASE IF EXISTS ${name}`);
    await admin.end();
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
    const { client } = await SmtpClient.session(mx.port);
    const rows: string[] = [];
    try {
      assert.equal((await client.command('MAIL FROM:<sender@remote.example> SMTPUTF8')).code, 250);
      for (const address of addresses) {
        const reply = await client.command(`RCPT TO:<${address}>`);
        const ours = reply.code === 250;
        const theirs = await primaryAccepts(admin, address.replace('bücher', 'xn--bcher-kva'));
        if (ours !== theirs) rows.push(`${address}: primary ${theirs ? 'accepts' : 'refuses'}, we answer ${reply.code} ${reply.enhanced}`);
      }
    } finally {
      await client.quit();
    }
    assert.deepEqual(rows.map((row) => row.slice(0, row.indexOf(':'))).sort(), Object.keys(DIFFERENCES).sort(), `differences:\n${rows.join('\n')}`);
  });
});
