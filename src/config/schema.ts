import { isIP } from 'node:net';
import { hostname as osHostname } from 'node:os';
import { validate } from 'node-cron';
import { z } from 'zod';
import { parseDnsblSite } from '../screen/dnsbl.js';
import { isLoopbackHost } from '../net/ip.js';

/** "host:port" or "[v6]:port"; a host name is allowed too (resolved by listen()). */
const LISTEN_ADDRESS = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/;

export interface ListenAddress {
  host: string;
  port: number;
}

export function parseListenAddress(value: string): ListenAddress | undefined {
  const match = LISTEN_ADDRESS.exec(value);
  if (!match) return undefined;
  const host = match[1] ?? match[2];
  const port = Number(match[3]);
  if (port > 65535) return undefined; // 0: the system picks a free port (logged at start)
  if (match[1] !== undefined && isIP(host) !== 6) return undefined;
  return { host, port };
}

const port = z.int().min(1).max(65535);
const positiveInt = z.int().positive();
/** Seconds; fractions allowed (0.5), as greetingPause. */
const seconds = z.number().positive();

const listenAddress = z.string().refine((value) => parseListenAddress(value) !== undefined, {
  message: 'expected "host:port" or "[ipv6]:port" with a port up to 65535',
});

const hostPort = z.strictObject({
  host: z.string().min(1),
  port: port.default(25),
  /**
   * Verify the primary: STARTTLS becomes required and its certificate must chain to
   * `ca` (a PEM file; the system CAs when absent) and name `host`, or match
   * `fingerprint` (SHA-256 of the certificate, "AB:CD:…", as openssl x509 -fingerprint -sha256 prints it).
   * Unset: opportunistic TLS, not verified.
   */
  tls: z
    .strictObject({
      ca: z.string().min(1).optional(),
      fingerprint: z
        .string()
        .regex(/^(?:[0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$/, 'expected a SHA-256 fingerprint such as "AB:CD:…" (32 pairs)')
        .optional(),
    })
    .optional(),
});

const sourceName = z.string().regex(/^[A-Za-z0-9_.-]+$/, 'expected letters, digits, ".", "_" or "-"');
/** Seconds a pull may take before it counts as failed. */
const sourceTimeout = positiveInt.default(30);

const fileSource = z.strictObject({
  name: sourceName,
  type: z.literal('file'),
  path: z.string().min(1),
  primary: hostPort.optional(),
});

const mysqlSource = z
  .strictObject({
    name: sourceName,
    type: z.literal('mysql'),
    /** mysql://user:password@host:port/database; or the separate keys below. */
    url: z
      .string()
      .refine((value) => /^mysql:\/\/[^/]+\/[^/?]+/.test(value), { message: 'expected mysql://user:password@host:port/database' })
      .optional(),
    host: z.string().min(1).optional(),
    port: port.optional(),
    user: z.string().min(1).optional(),
    password: z.string().optional(),
    database: z.string().min(1).optional(),
    /** true: TLS with the system CAs; or the file of the CA that signed the server's certificate. */
    ssl: z.union([z.boolean(), z.strictObject({ ca: z.string().min(1) })]).default(false),
    timeout: sourceTimeout,
    primary: hostPort.optional(),
  })
  .refine((source) => Boolean(source.url) !== Boolean(source.host), {
    message: 'give either url or host (with user, password, database)',
  })
  .refine((source) => Boolean(source.url) || Boolean(source.user && source.database), {
    message: 'user and database are required with host',
  });

const mxlistSource = z.strictObject({
  name: sourceName,
  type: z.literal('mxlist'),
  /** The panel's admin/mxlist.php. */
  url: z.url({ protocol: /^https?$/ }),
  login: z.string().min(1),
  password: z.string(),
  timeout: sourceTimeout,
  /** Largest answer read, in bytes; beyond, the pull fails (100,000 domains take about 3 MB). */
  maxBytes: positiveInt.default(16 * 1024 * 1024),
  primary: hostPort.optional(),
});

const DURATION_UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/** Seconds in "5d", "4h", "30m", "45s" or "120"; undefined when it is none of these. */
export function parseDuration(text: string): number | undefined {
  const match = /^(\d+)\s*([smhd]?)$/.exec(text.trim());
  return match ? Number(match[1]) * DURATION_UNITS[match[2] || 's'] : undefined;
}

/** "5d", "4h", "30m", "45s" or a number of seconds; 0 (or "0") means off where allowed. */
const duration = z.union([z.number().int().min(0), z.string()]).transform((value, context) => {
  if (typeof value === 'number') return value;
  const seconds = parseDuration(value);
  if (seconds === undefined) {
    context.addIssue({ code: 'custom', message: 'expected a duration such as "5d", "4h", "30m", "45s" or seconds' });
    return z.NEVER;
  }
  return seconds;
});

const sync = z.strictObject({
  /** node-cron expression (5 fields, or 6 with seconds first). */
  schedule: z
    .string()
    .refine((value) => validate(value), { message: 'expected a cron expression such as "*/10 * * * *"' })
    .default('*/10 * * * *'),
  /** Percent of a source's domains or addresses one pull may drop before its removals are held back (additions always apply). */
  maxShrink: z.number().min(0).max(100).default(25),
  /** Drops of at most this many domains (or addresses) always apply: one domain of three is not a collapse. */
  shrinkFloor: z.int().min(0).default(10),
  /** A source with no successful pull for this long is reported stale (status, /healthz, metrics). */
  staleAfter: duration.default(6 * 3600),
});

const limits = z.strictObject({
  /** Bytes, our Received header included; AlternC's Postfix message_size_limit. */
  messageSize: positiveInt.default(100_000_000),
  /** Recipients per transaction; Postfix's smtpd_recipient_limit. */
  recipients: positiveInt.default(1000),
  /** Bytes of a message's header block (all its fields): each is read and judged before the 250; a larger one gets 552 5.3.4. */
  headerSize: positiveInt.default(256 * 1024),
  /** Received headers a message may carry; Postfix's hopcount_limit. */
  hops: positiveInt.default(50),
  /** Concurrent SMTP sessions. */
  connections: positiveInt.default(500),
  /** Seconds a session may stay silent; Postfix's smtpd_timeout. */
  idleTimeout: seconds.default(300),
  /** Seconds SIGTERM waits for sessions in DATA before closing them with 421. */
  shutdownTimeout: seconds.default(30),
  /** Concurrent sessions from one client: an IPv4 address, or an IPv6 network of clientIpv6Prefix bits. */
  connectionsPerClient: positiveInt.default(20),
  /** IPv6 prefix length that counts as one client (Postfix's smtpd_client_ipv6_prefix_length). */
  clientIpv6Prefix: z.int().min(1).max(128).default(64),
  /** Messages one connection may send before it is asked to reconnect (Exim's default). */
  messagesPerConnection: positiveInt.default(1000),
  /** Commands a session may send before its first MAIL. */
  commandsBeforeMail: positiveInt.default(20),
  /** NOOP, RSET, VRFY, ETRN and HELP one session may send in all (Postfix's smtpd_junk_command_limit). */
  junkCommands: positiveInt.default(100),
  /** Error replies in one session before 421 and disconnect (Postfix's smtpd_hard_error_limit). */
  errorsPerSession: positiveInt.default(20),
  /**
   * Seconds all of a message's content checks (DKIM, ARC, DMARC, then rspamd) may take
   * together before its reply; past it the message is accepted tagged dkim=temperror and
   * dmarc=temperror (rspamd: as rspamd.onFailure says), never refused for our slowness.
   */
  checkTimeout: seconds.default(30),
  /** Seconds a client may take to send one DATA, up to its final dot (slow-drip senders are cut off); our checks after it have checkTimeout. */
  dataTimeout: seconds.default(600),
  /** Seconds one session may last in total. */
  sessionTimeout: seconds.default(1800),
  /**
   * Seconds before the 220 greeting; a client that talks meanwhile gets 554 and is cut
   * (an early-talker test, like postscreen's greet wait). 0 greets at once, as Postfix's smtpd.
   */
  greetingPause: z.number().min(0).max(10).default(0.1),
  /** Longest command line in bytes (RFC 5321 says 512; generously bounded). */
  commandLength: z.int().min(512).default(2048),
});

const cidr = z.string().refine(
  (value) => {
    const [network, bits, extra] = value.split('/');
    const family = isIP(network);
    const max = family === 4 ? 32 : 128;
    return family !== 0 && extra === undefined && (bits === undefined || (/^\d+$/.test(bits) && Number(bits) <= max));
  },
  { message: 'expected an address or CIDR range, e.g. "127.0.0.0/8" or "::1/128"' },
);

const relay = z.strictObject({
  /** Parallel connections (and messages in flight) per primary. */
  concurrency: positiveInt.default(10),
  /** Seconds between connection probes of a primary that is down. */
  probeInterval: seconds.default(10),
  /** Seconds before the first retry after a 4xx; doubles up to maxBackoff (Postfix's defaults). */
  minBackoff: positiveInt.default(300),
  maxBackoff: positiveInt.default(4000),
  /** Seconds to wait for the primary's greeting, and for each of its replies. */
  connectTimeout: seconds.default(30),
  commandTimeout: seconds.default(300),
  /** How long a message may stay undelivered before its recipients fail (4.4.7); seconds. */
  queueLifetime: duration.default(5 * 86400),
  /** Send one "delayed" notice after this long undelivered; 0: never (Postfix's default). */
  delayWarning: duration.default(0),
  /** Clients allowed to use ETRN (RFC 1985), as CIDR ranges. */
  etrnClients: z.array(cidr).default(['127.0.0.0/8', '::1/128']),
});

const dsn = z.strictObject({
  /** Smarthost for every bounce; unset: straight to the sender domain's MX hosts. */
  relay: hostPort.optional(),
  /** Port of the sender domains' MX hosts (25; another only for tests). */
  port: port.default(25),
  /** Send DSNs to sender MX hosts on loopback, private or link-local networks (off: a forged sender could make us probe the inside). */
  allowInternal: z.boolean().default(false),
  /** DSNs per hour to one sender domain at most; the rest are dropped and counted (no backscatter floods). */
  maxPerDomainPerHour: positiveInt.default(20),
});

const authAction = z.enum(['reject', 'defer', 'tag']);

const screen = z.strictObject({
  /**
   * DNS block and allow lists in Postfix's postscreen_dnsbl_sites syntax:
   * "zen.spamhaus.org*3", "list.dnswl.org=127.0.[0..255].[1..3]*-2". Empty: no lookups.
   */
  dnsblSites: z
    .array(
      z.string().refine((value) => parseDnsblSite(value) !== undefined, {
        message: 'expected domain[=filter][*weight], as Postfix\'s postscreen_dnsbl_sites ("zen.spamhaus.org*3")',
      }),
    )
    .default([]),
  /** A client whose weights add up to this is refused (postscreen_dnsbl_threshold). */
  dnsblThreshold: z.int().default(1),
  /** A client whose weights add up to this or less skips the other screens (postscreen_dnsbl_allowlist_threshold); 0: off. */
  dnsblAllowThreshold: z.int().max(0).default(0),
  /** reject: 554 5.7.1; defer: 450 4.7.1 (a listed legitimate sender retries, and reaches the primary once it is back). */
  dnsblAction: z.enum(['reject', 'defer']).default('reject'),
  /** Seconds for the list lookups (they run during the greeting pause); a list that does not answer lists nobody. */
  dnsTimeout: seconds.default(2),
  /** How long a client that waited for the greeting keeps its pass and skips limits.greetingPause (postscreen_greet_ttl); 0: no pass. */
  passTtl: duration.default(86400),
  /**
   * Opt-in: once our probes have seen a primary up this long, answer 451 4.7.1 at RCPT for its
   * domains, so senders deliver to the primary and its full filtering; 0: off.
   */
  deferWhilePrimaryUp: duration.default(0),
});

const auth = z.strictObject({
  /** SPF at MAIL FROM, SPF, DKIM and DMARC after DATA (mailauth), and an Authentication-Results header. */
  enabled: z.boolean().default(true),
  /** Per SPF result: reject (550 5.7.23), defer (451 4.7.23/24) or tag (Authentication-Results only). */
  spf: z
    .strictObject({
      fail: authAction.default('reject'),
      softfail: authAction.default('tag'),
      neutral: authAction.default('tag'),
      none: authAction.default('tag'),
      temperror: authAction.default('tag'),
      permerror: authAction.default('tag'),
    })
    .default(() => ({
      fail: 'reject' as const,
      softfail: 'tag' as const,
      neutral: 'tag' as const,
      none: 'tag' as const,
      temperror: 'tag' as const,
      permerror: 'tag' as const,
    })),
  /** Per DMARC policy of a message failing DMARC: reject (550 5.7.26), defer (451 4.7.26) or tag. */
  dmarc: z
    .strictObject({ reject: authAction.default('reject'), quarantine: authAction.default('tag'), none: authAction.default('tag') })
    .default(() => ({ reject: 'reject' as const, quarantine: 'tag' as const, none: 'tag' as const })),
  /** Seconds for each DNS query of the checks (a message's DKIM keys are looked up at once: one such wait for all). */
  dnsTimeout: seconds.default(5),
  /** DKIM-Signature fields verified per message, From-aligned first (OpenDKIM's MaximumSignaturesToVerify); the rest: dkim=neutral, not verified. */
  maxSignatures: positiveInt.default(5),
  /** Threads for DKIM, ARC and DMARC (body hashes, RSA, header parsing), off the SMTP thread; auto: one per core. */
  threads: z.union([z.literal('auto'), positiveInt]).default('auto'),
});

const rspamd = z.strictObject({
  /** rspamd's normal worker (its /checkv2), e.g. http://127.0.0.1:11333. */
  url: z.url({ protocol: /^https?$/ }),
  /** Seconds for one check. */
  timeout: seconds.default(10),
  /**
   * rspamd down or too slow: accept (logged and counted; the primary filters it again when
   * we replay) or defer (451 4.7.1). accept by default: a 451 would turn an rspamd outage
   * into a mail outage exactly while the primary is down.
   */
  onFailure: z.enum(['accept', 'defer']).default('accept'),
});

const verify = z.strictObject({
  /** Verify addresses of domains without an address list with an RCPT probe to their primary. */
  enabled: z.boolean().default(true),
  /** Seconds an accepted address is remembered (31 d, Postfix's address_verify_positive_expire_time). */
  positiveTtl: duration.default(31 * 86400),
  /** Seconds a refused address is remembered (3 h, address_verify_negative_expire_time). */
  negativeTtl: duration.default(3 * 3600),
  /** Seconds for the probe (connection and each reply): RCPT waits that long at most. */
  timeout: seconds.default(10),
  /**
   * An address nobody can vouch for (not cached, and the primary down or not answering the
   * probe): defer (450 4.1.1, the sender retries and reaches the primary once it is back),
   * or accept (a 5xx from the primary later becomes a DSN to a sender that may be forged).
   */
  unverifiable: z.enum(['defer', 'accept']).default('defer'),
  /** Sessions open to each primary for probes at most (reused, RSET between probes). */
  concurrency: positiveInt.default(2),
  /** Probes per second to each primary at most; a probe that cannot start within verify.timeout is unverifiable. */
  maxPerSecond: positiveInt.default(20),
  /** Probes one client may cause per minute; past that its unknown addresses are unverifiable, without a probe. */
  perClientPerMinute: positiveInt.default(60),
});

const dns = z.strictObject({
  /** Resolvers for MX lookups, DNS lists, SPF, DKIM and DMARC ("ip" or "ip:port"); unset: the system's. */
  servers: z.array(z.string().min(1)).min(1).optional(),
});

/** A listen address on loopback. */
function isLoopback(value: string): boolean {
  const address = parseListenAddress(value);
  return address !== undefined && isLoopbackHost(address.host);
}

const control = z.strictObject({
  /** HTTP for Prometheus (/metrics) and health checks (/healthz); loopback only. */
  listen: listenAddress
    .refine(isLoopback, {
      message: 'must be a loopback address (127.0.0.0/8, [::1] or localhost): the control endpoint is never public',
    })
    .default('127.0.0.1:9925'),
});

const tls = z.strictObject({
  key: z.string().min(1),
  cert: z.string().min(1),
  minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
});

const log = z.strictObject({
  level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'),
});

export const configSchema = z.strictObject({
  hostname: z
    .string()
    .regex(/^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$/, 'expected a host name')
    .default(() => osHostname()),
  listen: z.array(listenAddress).min(1).default(['127.0.0.1:2525']),
  spool: z.string().min(1).default('./spool'),
  /** Started as root: bind, then run as this user (and group; default: the user's group). */
  user: z.string().min(1).optional(),
  group: z.string().min(1).optional(),
  primary: hostPort,
  /**
   * Postfix's recipient_delimiter: an address with an extension (alice+news@, list-confirm+token@)
   * is accepted when its base address is. Several characters allowed; "" turns it off.
   */
  recipientDelimiter: z
    .string()
    .regex(/^[^\sA-Za-z0-9@.]*$/, 'expected delimiter characters such as "+" or "+-"')
    .default('+'),
  sources: z
    .array(z.discriminatedUnion('type', [fileSource, mysqlSource, mxlistSource]))
    .min(1)
    .refine((sources) => new Set(sources.map((s) => s.name)).size === sources.length, {
      message: 'source names must be unique',
    }),
  sync: sync.default(() => sync.parse({})),
  limits: limits.default(() => limits.parse({})),
  relay: relay.default(() => relay.parse({})),
  dsn: dsn.default(() => dsn.parse({})),
  dns: dns.default(() => dns.parse({})),
  screen: screen.default(() => screen.parse({})),
  auth: auth.default(() => auth.parse({})),
  rspamd: rspamd.optional(),
  verify: verify.default(() => verify.parse({})),
  control: control.default(() => control.parse({})),
  tls: tls.optional(),
  log: log.default(() => log.parse({})),
});

export type Config = z.infer<typeof configSchema>;
export type SourceConfig = Config['sources'][number];
export type MysqlSourceConfig = Extract<SourceConfig, { type: 'mysql' }>;
export type MxlistSourceConfig = Extract<SourceConfig, { type: 'mxlist' }>;
export type Limits = Config['limits'];
export type HostPort = Config['primary'];
