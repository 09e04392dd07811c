import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createConnection, type Connection } from 'mysql2/promise';

/** The server the MySQL tests use; they create and drop their own databases on it. */
export const TEST_MYSQL_URL = process.env.SECONDARYMX_TEST_MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test';

/**
 * A database with AlternC's shape (the columns the secondary reads, from AlternC 3.5's
 * install/mysql.sql): `domaines` with varchar(64) names on fresh installs and
 * varchar(255) on upgraded ones, and `address`.
 */
export class AlternCDatabase {
  private readonly users: string[] = [];

  private constructor(
    readonly name: string,
    private readonly admin: Connection,
  ) {}

  /**
   * `mail: true`: the whole of AlternC's mail schema (test/fixtures/alternc-mail.sql: also
   * mailbox, recipient, alias_view), as the primary's Postfix reads it.
   */
  static async create(options: { domainColumn?: 64 | 255; mail?: boolean } = {}): Promise<AlternCDatabase> {
    const admin = await createConnection({ uri: TEST_MYSQL_URL, multipleStatements: true });
    const name = `secondarymx_test_${randomBytes(4).toString('hex')}`;
    await admin.query(`CREATE DATABASE ${name} CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci`);
    await admin.query(`USE ${name}`);
    if (options.mail) {
      await admin.query(readFileSync(new URL('../fixtures/alternc-mail.sql', import.meta.url), 'utf8'));
      return new AlternCDatabase(name, admin);
    }
    await admin.query(`
      CREATE TABLE domaines (
        id bigint(20) unsigned NOT NULL AUTO_INCREMENT,
        compte int(10) unsigned NOT NULL DEFAULT 0,
        domaine varchar(${options.domainColumn ?? 64}) NOT NULL DEFAULT '',
        gesdns int(1) NOT NULL DEFAULT 1,
        gesmx int(1) NOT NULL DEFAULT 1,
        noerase tinyint(4) NOT NULL DEFAULT 0,
        dns_action enum('OK','UPDATE','DELETE') NOT NULL DEFAULT 'UPDATE',
        dns_result varchar(255) NOT NULL DEFAULT '',
        PRIMARY KEY (id),
        UNIQUE KEY domaine (domaine)
      ) ENGINE=InnoDB;
      CREATE TABLE address (
        id bigint(20) unsigned NOT NULL AUTO_INCREMENT,
        domain_id bigint(20) unsigned NOT NULL,
        address varchar(255) NOT NULL,
        type char(8) NOT NULL DEFAULT '',
        password varchar(255) DEFAULT NULL,
        enabled int(1) unsigned NOT NULL DEFAULT 1,
        expire_date datetime DEFAULT NULL,
        mail_action enum('OK','DELETE','DELETING') NOT NULL DEFAULT 'OK',
        PRIMARY KEY (id),
        UNIQUE KEY fk_domain_id (domain_id, address)
      ) ENGINE=InnoDB;`);
    return new AlternCDatabase(name, admin);
  }

  /** mysql://… URL of this database for the given user (root by default). */
  url(user?: { name: string; password: string }): string {
    const url = new URL(TEST_MYSQL_URL);
    if (user) {
      url.username = user.name;
      url.password = user.password;
    }
    url.pathname = `/${this.name}`;
    return url.toString();
  }

  async domain(domaine: string, fields: { gesmx?: number; dns_action?: string } = {}): Promise<number> {
    const [result] = await this.admin.query(`INSERT INTO ${this.name}.domaines (domaine, gesmx, dns_action) VALUES (?, ?, ?)`, [
      domaine,
      fields.gesmx ?? 1,
      fields.dns_action ?? 'OK',
    ]);
    return (result as { insertId: number }).insertId;
  }

  /** An address row; with the mail schema, `mailbox` gives it a maildir and `recipients` (newline-separated) makes it an alias. */
  async address(
    domainId: number,
    local: string,
    fields: { enabled?: number; type?: string; mail_action?: string; mailbox?: boolean; recipients?: string } = {},
  ): Promise<void> {
    const [result] = await this.admin.query(`INSERT INTO ${this.name}.address (domain_id, address, type, enabled, mail_action) VALUES (?, ?, ?, ?, ?)`, [
      domainId,
      local,
      fields.type ?? '',
      fields.enabled ?? 1,
      fields.mail_action ?? 'OK',
    ]);
    const id = (result as { insertId: number }).insertId;
    if (fields.mailbox)
      await this.admin.query(`INSERT INTO ${this.name}.mailbox (address_id, path, delivery) VALUES (?, ?, 'dovecot')`, [id, `/var/mail/${local}`]);
    if (fields.recipients) await this.admin.query(`INSERT INTO ${this.name}.recipient (address_id, recipients) VALUES (?, ?)`, [id, fields.recipients]);
  }

  async execute(sql: string, values: unknown[] = []): Promise<void> {
    await this.admin.query(sql.replaceAll('{db}', this.name), values);
  }

  /** A user with exactly the grants the README documents. */
  async readOnlyUser(): Promise<{ name: string; password: string }> {
    const user = { name: `mx_${randomBytes(3).toString('hex')}`, password: randomBytes(9).toString('hex') };
    for (const host of ['localhost', '127.0.0.1']) {
      await this.admin.query(`CREATE USER '${user.name}'@'${host}' IDENTIFIED BY '${user.password}'`);
      await this.admin.query(`GRANT SELECT ON ${this.name}.domaines TO '${user.name}'@'${host}'`);
      await this.admin.query(`GRANT SELECT ON ${this.name}.address TO '${user.name}'@'${host}'`);
    }
    this.users.push(user.name);
    return user;
  }

  async drop(): Promise<void> {
    for (const user of this.users) {
      for (const host of ['localhost', '127.0.0.1']) await this.admin.query(`DROP USER IF EXISTS '${user}'@'${host}'`);
    }
    await this.admin.query(`DROP DATABASE IF EXISTS ${this.name}`);
    await this.admin.end();
  }
}
