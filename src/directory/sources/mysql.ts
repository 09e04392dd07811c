import { readFile } from 'node:fs/promises';
import { createConnection, type Connection, type ConnectionOptions } from 'mysql2';
import type { MysqlSourceConfig } from '../../config/schema.js';
import { SourceError, SourceListBuilder, type Pulled } from '../source-list.js';

/*
 * AlternC's own tables, read-only. The secondary's MySQL user needs only:
 *   GRANT SELECT ON alternc.domaines TO 'secondarymx'@'mx2.example.net';
 *   GRANT SELECT ON alternc.address  TO 'secondarymx'@'mx2.example.net';
 *   GRANT SELECT ON alternc.mailman  TO 'secondarymx'@'mx2.example.net';   (with alternc-mailman)
 *
 * Domains: gesmx = 1, whatever dns_action says: a domain marked 'DELETE' is still
 * accepted by the primary until AlternC's cron removes the row, and so it is here.
 * Addresses: enabled = 1 rows of those domains, as the primary's Postfix maps check
 * (mail_action is not looked at, for the same reason). address = '' is the catch-all;
 * mailman wrapper addresses are ordinary rows. Every domain is recipient-checked: a
 * hosted domain without an enabled address accepts nothing, as on the primary.
 */
const DOMAINS = 'SELECT id, domaine FROM domaines WHERE gesmx = 1';
const ADDRESSES =
  'SELECT a.domain_id, a.address FROM address a JOIN domaines d ON d.id = a.domain_id WHERE d.gesmx = 1 AND a.enabled = 1';
/*
 * alternc-mailman's lists (its mailman.sql): `list` is the local part, `domain` the
 * domain. It also writes one `address` row (type 'mailman') per list address, which
 * the query above already reads; the lists table covers a list whose rows are
 * missing. Optional: an AlternC without alternc-mailman has no such table, and the
 * grant may not include it (GRANT SELECT ON alternc.mailman to use it).
 */
const MAILMAN_LISTS = "SELECT list, domain FROM mailman WHERE mailman_action NOT IN ('DELETE', 'DELETING')";

/**
 * The addresses of a list, Mailman 3 and 2 alike: alternc-mailman creates these
 * (m_mailman.php, add_wrapper_all), Mailman 3 answers them all, and `-admin` is
 * Mailman 2's. Extensions (`-confirm+TOKEN`, `-bounces+user=host`) are matched by
 * the recipient delimiter, as on the primary.
 */
export const MAILMAN_SUFFIXES = ['', '-admin', '-bounces', '-confirm', '-join', '-leave', '-owner', '-request', '-subscribe', '-unsubscribe'];

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
    for (const [list, domain] of await mailmanLists(connection, timeout)) {
      if (!hosted.has(domain)) continue; // the primary accepts a list only on a domain it hosts mail for
      for (const suffix of MAILMAN_SUFFIXES) builder.address(`${list}${suffix}`, domain, `mailman list ${JSON.stringify(`${list}@${domain}`)}`);
    }
    await connection.promise().query('COMMIT');
    return builder.build();
  } catch (error) {
    if (error instanceof SourceError) throw error;
    throw new SourceError(`MySQL query failed: ${describe(error)}`);
  } finally {
    connection.destroy();
  }
}

/** alternc-mailman's lists, or none when the table is not there or not granted. */
async function mailmanLists(connection: Connection, timeout: number): Promise<Array<[string, string]>> {
  try {
    const [rows] = await connection.promise().query({ sql: MAILMAN_LISTS, rowsAsArray: true, timeout });
    return rows as Array<[string, string]>;
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === 'ER_NO_SUCH_TABLE' || code === 'ER_TABLEACCESS_DENIED_ERROR') return [];
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
  return [code, message].filter(Boolean).join(': ').replace(/(password|pass)=[^\s;]*/gi, '$1=********');
}
