import { execFile, execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './primary.js';
import { waitFor } from './wait.js';

const run = promisify(execFile);

/** A private instance of Debian's Postfix: its own config folder, queue and log, on a loopback port. */
export interface PostfixInstance {
  port: number;
  root: string;
  etc: string;
  /** Its log so far (maillog_file). */
  log(): string;
  /** Queue ids in its queue now (postqueue -j). */
  queue(): Array<{ queue_id: string; queue_name: string; recipients: Array<{ address: string }> }>;
  /** Starts it again after stop(), on the same port. */
  start(): Promise<void>;
  stop(): Promise<void>;
}

export function hasPostfix(): boolean {
  return existsSync('/usr/sbin/postfix');
}

/**
 * Starts Postfix with `mainCf` (lines added to the base below) and `maps` (file name to
 * text, in its config folder; postmap'd as hash maps unless they end in .cf), its queue in `queue`. The base:
 * loopback only, no DNS, no chroot, no limits on one client, its own log file.
 */
export async function startPostfix(root: string, mainCf: string[], maps: Record<string, string> = {}, queue = join(root, 'queue')): Promise<PostfixInstance> {
  if (!hasPostfix()) throw new Error("needs Debian's postfix: apt-get install postfix (.ci/run installs it)");
  const etc = join(root, 'etc');
  for (const sub of [etc, queue, join(root, 'data')]) mkdirSync(sub, { recursive: true });
  execFileSync('chown', ['postfix', join(root, 'data')]);
  const port = await freePort();
  // Debian's pristine copy: the machine's /etc/postfix/master.cf may have been edited.
  const master = readFileSync('/usr/share/postfix/master.cf.dist', 'utf8')
    .replace(/^smtp( +)inet(.*)$/m, `127.0.0.1:${port} inet  n       -       n       -       -       smtpd`)
    .replace(/^(\w+ +unix +\S+ +\S+ +)y( )/gm, '$1n$2'); // no chroot: the instance's queue is not set up as one
  writeFileSync(join(etc, 'master.cf'), master);
  const base = [
    'compatibility_level = 3.6',
    `queue_directory = ${queue}`,
    `data_directory = ${join(root, 'data')}`,
    'mydestination =',
    'inet_interfaces = loopback-only',
    'inet_protocols = ipv4',
    'smtp_dns_support_level = disabled',
    'smtpd_client_connection_count_limit = 0',
    'smtpd_client_connection_rate_limit = 0',
    'smtpd_client_message_rate_limit = 0',
    `maillog_file_prefixes = ${root}`,
    `maillog_file = ${join(root, 'maillog')}`,
    'biff = no',
  ];
  writeFileSync(join(etc, 'main.cf'), [...base, ...mainCf].join('\n') + '\n');
  for (const [name, text] of Object.entries(maps)) writeFileSync(join(etc, name), text);
  copyFileSync('/etc/postfix/dynamicmaps.cf', join(etc, 'dynamicmaps.cf'));
  if (existsSync('/etc/postfix/dynamicmaps.cf.d')) mkdirSync(join(etc, 'dynamicmaps.cf.d'), { recursive: true });
  for (const name of Object.keys(maps)) if (!name.endsWith('.cf')) execFileSync('postmap', ['-c', etc, join(etc, name)]);
  execFileSync('postfix', ['-c', etc, 'set-permissions'], { stdio: 'ignore' }); // makes the queue's folders, as post-install does
  execFileSync('postfix', ['-c', etc, 'check']);
  const start = async () => {
    execFileSync('postfix', ['-c', etc, 'start'], { stdio: 'ignore' });
    await waitFor(
      async () =>
        await run('postfix', ['-c', etc, 'status']).then(
          () => true,
          () => false,
        ),
      10_000,
    );
  };
  await start();
  const logFile = join(root, 'maillog');
  return {
    port,
    root,
    etc,
    log: () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : ''),
    queue: () =>
      execFileSync('postqueue', ['-c', etc, '-j'])
        .toString()
        .split('\n')
        .filter(Boolean)
        .map((line) => JSON.parse(line) as ReturnType<PostfixInstance['queue']>[number]),
    start,
    stop: async () => void (await run('postfix', ['-c', etc, 'stop']).catch(() => undefined)),
  };
}

/**
 * AlternC's primary: Postfix reading AlternC's database at `url` (its schema: test/fixtures/alternc-mail.sql)
 * through AlternC's own map files (etc/alternc/templates/postfix/mydomain.cf, myalias.cf,
 * mymail2mail.cf, myvirtual.cf, and main.cf's lines that use them), with proxy:mysql as
 * AlternC has them. Mail it accepts stays in its queue (no dovecot here): the tests read
 * its RCPT replies and its queue.
 */
export async function startAlternCPrimary(url: URL): Promise<PostfixInstance & { remove(): Promise<void> }> {
  const database = {
    host: url.hostname,
    port: Number(url.port || 3306),
    user: decodeURIComponent(url.username),
    password: decodeURIComponent(url.password),
    name: url.pathname.slice(1),
  };
  if (!existsSync('/usr/lib/postfix/postfix-mysql.so')) throw new Error("needs Debian's postfix-mysql: apt-get install postfix-mysql (.ci/run installs it)");
  const root = mkdtempSync(join(tmpdir(), 'secondarymx-alternc-'));
  chmodSync(root, 0o755); // Postfix's daemons run as postfix
  const queries = {
    'mydomain.cf': "select domaines.domaine from domaines where domaine='%s' and gesmx=1;",
    'myalias.cf': "select alias from alias_view where mail='%s';",
    'mymail2mail.cf':
      "select concat(`address`.`address`,'@',`domaines`.`domaine`) AS `mail` from address,domaines where `address`.`enabled` = 1 and `address`.`domain_id` = domaines.id and concat(`address`.`address`,'@',`domaines`.`domaine`) = '%s';",
    'myvirtual.cf':
      "select concat(path, '/Maildir/') from mailbox join address on address.id = mailbox.address_id join domaines on domaines.id = address.domain_id where concat(address.address,'@',domaines.domaine) ='%s';",
  };
  const connection = [
    `user = ${database.user}`,
    `password = ${database.password}`,
    `hosts = inet:${database.host}:${database.port}`,
    `dbname = ${database.name}`,
  ];
  const maps = Object.fromEntries(Object.entries(queries).map(([name, query]) => [name, [...connection, `query = ${query}`].join('\n') + '\n']));
  const etc = join(root, 'etc');
  const postfix = await startPostfix(
    root,
    [
      'myhostname = primary.alternc.test',
      'recipient_delimiter = +', // as Debian's main.cf has it
      'mynetworks = 127.0.0.2/32',
      `virtual_alias_maps = proxy:mysql:${etc}/myalias.cf, proxy:mysql:${etc}/mymail2mail.cf`,
      `virtual_mailbox_domains = proxy:mysql:${etc}/mydomain.cf`,
      `virtual_mailbox_maps = proxy:mysql:${etc}/myvirtual.cf`,
      `virtual_mailbox_base = ${join(root, 'mail')}`,
      'virtual_uid_maps = static:' + execFileSync('id', ['-u', 'postfix']).toString().trim(),
      'virtual_gid_maps = static:' + execFileSync('id', ['-g', 'postfix']).toString().trim(),
      'relay_recipient_maps = $virtual_alias_maps',
      'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination',
      'defer_transports = virtual', // what it accepts waits in its queue
      'relayhost = [127.0.0.1]:1', // and so does what it would send on (an alias's outside target)
    ],
    maps,
  );
  return {
    ...postfix,
    remove: async () => {
      await postfix.stop();
      rmSync(root, { recursive: true, force: true });
    },
  };
}

/** An AlternC-like primary: Postfix delivering the virtual domains it is given to maildirs. */
export interface PostfixPrimary extends PostfixInstance {
  /** The files delivered to a mailbox ("alice@d1.example"), oldest first. */
  delivered(address: string): Buffer[];
  remove(): Promise<void>;
}

/**
 * Postfix as the primary MX of `mailboxes` (address → maildir; "@domain" for a catch-all),
 * as AlternC's Postfix has its virtual mailboxes: unknown addresses get 550 5.1.1 at RCPT.
 * `mynetworks` lists the clients it relays for (AlternC puts its backup MX there).
 */
export async function startPostfixPrimary(mailboxes: string[], options: { mynetworks?: string } = {}): Promise<PostfixPrimary> {
  const root = mkdtempSync(join(tmpdir(), 'secondarymx-postfix-'));
  chmodSync(root, 0o755); // Postfix's daemons run as postfix
  const mail = join(root, 'mail');
  mkdirSync(mail);
  execFileSync('chown', ['postfix:postfix', mail]);
  const folderOf = (address: string) => address.replace(/[^\w.-]/g, '_') + '/';
  const domains = [...new Set(mailboxes.map((address) => address.slice(address.lastIndexOf('@') + 1)))];
  const postfix = await startPostfix(
    root,
    [
      'myhostname = primary.postfix.test',
      `mynetworks = ${options.mynetworks ?? '127.0.0.2/32'}`,
      `virtual_mailbox_domains = ${domains.join(' ')}`,
      `virtual_mailbox_maps = hash:${join(root, 'etc', 'mailboxes')}`,
      `virtual_mailbox_base = ${mail}`,
      'virtual_uid_maps = static:' + execFileSync('id', ['-u', 'postfix']).toString().trim(),
      'virtual_gid_maps = static:' + execFileSync('id', ['-g', 'postfix']).toString().trim(),
      'smtputf8_enable = yes',
      'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination',
      'relayhost = [127.0.0.1]:1', // nowhere: what it relays stays in its queue, for the tests to see
    ],
    { mailboxes: mailboxes.map((address) => `${address} ${folderOf(address)}\n`).join('') },
  );
  return {
    ...postfix,
    delivered: (address) => {
      const folder = join(mail, folderOf(address), 'new');
      if (!existsSync(folder)) return [];
      return readdirSync(folder)
        .sort()
        .map((name) => readFileSync(join(folder, name)));
    },
    remove: async () => {
      await postfix.stop();
      rmSync(root, { recursive: true, force: true });
    },
  };
}
