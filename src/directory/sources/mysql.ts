import { readFile } from 'node:fs/promises';
import { createConnection, type Connection, type ConnectionOptions } from 'mysql2';
import type { MysqlSourceConfig } from '../../config/schema.js';
import type { SourceList } from '../snapshot.js';
import { SourceError, SourceListBuilder } from '../source-list.js';

/*
 * AlternC's own tables, read-only. The secondary's MySQL user needs only:
 *   GRANT SELECT ON alternc.domaines TO 'secondarymx'@'mx2.example.net';
 *   GRANT SELECT ON alternc.address  TO 'secondarymx'@'mx2.example.net';
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

export async function pullMysql(source: MysqlSourceConfig): Promise<SourceList> {
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
      builder.checkedDomain(domain);
      byId.set(Number(id), domain);
    }
    for await (const [domainId, local] of streamRows<[number, string]>(connection, ADDRESSES, timeout)) {
      const domain = byId.get(Number(domainId))!;
      if (local === '') builder.catchAll(domain);
      else builder.address(local, domain);
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
