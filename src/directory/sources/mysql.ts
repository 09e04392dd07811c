import { readFile } from 'node:fs/promises';
import { createConnection, type Connection, type ConnectionOptions } from 'mysql2';
import type { MysqlSourceConfig } from '../../config/schema.js';
import { SourceError, SourceListBuilder, type Pulled } from '../source-list.js';

/*
 * AlternC's own tables, read-only. The secondary's MySQL user needs only:
 *   GRANT SELECT ON alternc.domaines TO 'secondarymx'@'mx2.example.net';
 *   GRANT SELECT ON alternc.address  TO 'secondarymx'@'mx2.example.net';
 *   GRANT SELECT ON alternc.alias_view TO 'secondarymx'@'mx2.example.net';   (account aliases; optional)
 *
 * Domains: gesmx = 1, whatever dns_action says: a domain marked 'DELETE' is still
 * accepted by the primary until AlternC's cron removes the row, and so it is here.
 * Addresses: enabled = 1 rows of those domains, as the primary's Postfix maps check
 * (mail_action is not looked at, for the same reason). address = '' is the catch-all.
 * Mailman lists: alternc-mailman (Mailman 3 and 2 alike) writes one row of type
 * 'mailman' per list address (list, -request, -owner, -admin, -bounces, -confirm,
 * -join, -leave, -subscribe, -unsubscribe: m_mailman.php add_wrapper_all), and those
 * rows are what the primary's Postfix checks; extensions (-confirm+TOKEN,
 * -bounces+user=host) are matched by the recipient delimiter. Its `mailman` table is
 * not read: a list without its rows is refused by the primary too. Every domain is recipient-checked: a
 * hosted domain without an enabled address accepts nothing, as on the primary.
 */
const DOMAINS = 'SELECT id, domaine FROM domaines WHERE gesmx = 1';
const ADDRESSES = 'SELECT a.domain_id, a.address FROM address a JOIN domaines d ON d.id = a.domain_id WHERE d.gesmx = 1 AND a.enabled = 1';
/*
 * The primary's myalias.cf map. Its first part is the enabled addresses with
 * recipients (read above already); the others are AlternC's account aliases,
 * login@<mailname_bounce> and alterncpanel@<mailname_bounce>, accepted by the primary
 * when that domain is hosted. Optional (it needs GRANT SELECT ON alternc.alias_view):
 * without it those aliases are refused here, and the pull says so.
 */
const ALIASES = 'SELECT mail FROM alias_view';
export async function pullMysql(source: MysqlSourceConfig): Promise<Pulled> {
  const connection = createConnection(await connectionOptions(source));
  connection.on('error', () => undefined); // a late socket error after destroy() must not crash the daemon
  try {
    await new Promise<void>((resolve, reject) => connection.connect((error) => (error ? reject(error) : resolve())));
  } catch (error) {
    connection.destroy();
    throw new SourceError(`cannot connect to MySQL: ${describe(error)}`);
  }
  try {
    // Both queries see one consistent snapshot of the database.
    await connection.promise().query('START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY');
    const builder = new SourceListBuilder();
    const byId = new Map<number, string>();
    const timeout = source.timeout * 1000;
    // Rows are streamed, not buffered: a million addresses never sit in memory twice.
    for await (const [id, domain] of streamRows<[number, string]>(connection, DOMAINS, timeout)) {
      if (builder.checkedDomain(domain, `domaines.id ${id} ${JSON.stringify(domain)}`)) byId.set(Number(id), domain);
    }
    for await (const [domainId, local] of streamRows<[number, string]>(connection, ADDRESSES, timeout)) {
      const domain = byId.get(Number(domainId));
      if (domain === undefined) continue; // its domain row was left out (reported) or is not gesmx
      if (local === '') builder.catchAll(domain);
      else builder.address(local, domain);
    }
    const hosted = new Set(byId.values());
    const aliases = await optionalRows<[string]>(connection, ALIASES, timeout);
    for (const [mail] of aliases ?? []) {
      const at = mail.lastIndexOf('@');
      if (at > 0 && hosted.has(mail.slice(at + 1))) builder.address(mail.slice(0, at), mail.slice(at + 1), `alias_view ${JSON.stringify(mail)}`);
    }
    await connection.promise().query('COMMIT');
    const pulled = builder.build();
    return aliases
      ? pulled
      : {
          ...pulled,
          warnings: ['alias_view is not readable (GRANT SELECT ON alternc.alias_view): account aliases such as login@<mailname_bounce> are refused'],
        };
  } catch (error) {
    if (error instanceof SourceError) throw error;
    throw new SourceError(`MySQL query failed: ${describe(error)}`);
  } finally {
    connection.destroy();
  }
}

/** The rows of a query on a view or table the grant may not cover: undefined when it is not there or not granted. */
async function optionalRows<Row>(connection: Connection, sql: string, timeout: number): Promise<Row[] | undefined> {
  try {
    const [rows] = await connection.promise().query({ sql, rowsAsArray: true, timeout });
    return rows as Row[];
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === 'ER_NO_SUCH_TABLE' || code === 'ER_TABLEACCESS_DENIED_ERROR' || code === 'ER_VIEW_INVALID') return undefined;
    throw error;
  }
}

function streamRows<Row>(connection: Connection, sql: string, timeout: number): AsyncIterable<Row> {
  return connection.query({ sql, rowsAsArray: true, timeout }).stream({ highWaterMark: 1000 });
}

async function connectionOptions(source: MysqlSourceConfig): Promise<ConnectionOptions> {
  const ssl = source.ssl === false ? undefined : source.ssl === true ? {} : { ca: await readFile(source.ssl.ca, 'utf8') };
  const common = { connectTimeout: source.timeout * 1000, charset: 'utf8mb4', ssl, dateStrings: true };
  if (source.url) return { uri: source.url, ...common };
  return { host: source.host, port: source.port ?? 3306, user: source.user, password: source.password, database: source.database, ...common };
}

/** The driver's message without the password, which some errors quote. */
function describe(error: unknown): string {
  const { code, message } = error as { code?: string; message?: string };
  return [code, message]
    .filter(Boolean)
    .join(': ')
    .replace(/(password|pass)=[^\s;]*/gi, '$1=********');
}
