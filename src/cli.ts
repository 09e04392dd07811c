#!/usr/bin/env -S node --expose-gc
// --expose-gc: the receiver collects young garbage while a large message streams in (receive/young-gc.ts).
import { existsSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { Config } from './config/schema.js';
import { EX_CONFIG, EX_UNAVAILABLE, EX_USAGE } from './exit-codes.js';
import { runtimeProblem, ServeSignals } from './signals.js';
import type { QueueEdit } from './spool/edit.js';
import type { QueueSelection } from './spool/select.js';

/*
 * Each command loads its modules when it runs (import()): `status` or `--help` need not
 * load the daemon, smtp-server, nodemailer and the MySQL driver (0.4 s of start-up).
 */
const config = async (path: string | undefined) => (await import('./config/load.js')).loadConfig(path);

const USAGE = `usage: secondarymx <command> [--config FILE]

commands:
  serve              run the backup MX (SMTP receive into the spool, directory sync) until SIGTERM/SIGINT
  check              validate the config and print the effective config (secrets masked)
  sync [--force] [--json]
                     sync the directory now (through the running daemon, or on its own);
                     --force applies pulls the shrink guard held back
  status [--json]    daemon, directory, per-source sync state and spool summary
  flush [--domain D] [--id ID] [--json]
                     attempt delivery now, ignoring backoff (through the daemon, or on its own)
  queue list [SELECTION] [--json]
                     list the spooled messages, whether or not the daemon runs
  queue summary [SELECTION] [--json]
                     messages by recipient domain and age, as Postfix's qshape
  queue show ID [--json]
                     envelope, recipient states and replies, headers
  queue hold|release|delete ID
  queue hold|release|delete SELECTION [--yes]
                     held messages are never delivered until released; with a selection,
                     the count is shown and confirmed (--yes when not on a terminal)
  import-legacy FILE print the sources: entry for an old alternc-secondarymx / slavedns config

options:
  --config FILE      config file (default: $SECONDARYMX_CONFIG, ./config/secondarymx.yaml,
                     /etc/secondarymx/secondarymx.yaml, the first that exists)
  --force            with sync: apply a pull even if it shrank by more than sync.maxShrink
  --json             machine-readable output (sync, status, queue list, queue summary)

selection (queue list, summary, hold, release, delete; all conditions must hold):
  --domain D         a recipient still pending in domain D
  --sender S         sender address S, "@example.org" for any sender of that domain, "<>" for bounces
  --recipient R      recipient address R
  --older-than T     arrived at least T ago (5d, 4h, 30m, 45s)
  --all              every message (needed to edit all: never by accident)
  --yes              do not ask before a bulk hold, release or delete
  -h, --help         this help
  -v, --version      print the version

exit codes: 0 ok, 1 runtime error, 64 usage error, 65 import-legacy: unusable file, 69 Node.js too old, 75 sync: some source
            kept its old data or held removals / flush: the primary was unreachable or a message stayed busy, 78 configuration error`;

class UsageError extends Error {
  readonly exitCode = EX_USAGE;
}

class RuntimeError extends Error {
  readonly exitCode = EX_UNAVAILABLE;
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: 'string' },
      json: { type: 'boolean', default: false },
      force: { type: 'boolean', default: false },
      domain: { type: 'string' },
      id: { type: 'string' },
      sender: { type: 'string' },
      recipient: { type: 'string' },
      'older-than': { type: 'string' },
      all: { type: 'boolean', default: false },
      yes: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
      version: { type: 'boolean', short: 'v', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (values.version) {
    process.stdout.write(`${packageVersion()}\n`);
    return 0;
  }
  const [command, ...rest] = positionals;
  const unusable = runtimeProblem(process.version);
  if (unusable) throw new RuntimeError(unusable);
  const expectNoMore = (words: string[]) => {
    if (words.length > 0) throw new UsageError(`unexpected argument: ${words[0]}`);
  };
  switch (command) {
    case 'serve': {
      expectNoMore(rest);
      const signals = new ServeSignals(); // before anything that takes time: a SIGHUP now must not kill it
      const loaded = await config(values.config);
      (await import('./config/tls-files.js')).checkTlsFiles(loaded.config);
      const [{ serve }, { createLogger }] = await Promise.all([import('./serve.js'), import('./log.js')]);
      await serve(loaded, createLogger(loaded.config.log.level), signals);
      // Stopped cleanly; exit now rather than wait for a pretty-printing log worker (pino flushes it on exit).
      process.exit(0);
    }
    case 'check': {
      expectNoMore(rest);
      const loaded = await config(values.config);
      const { describeConfig, insecureSources } = await import('./config/load.js');
      (await import('./config/tls-files.js')).checkTlsFiles(loaded.config);
      await checkFileSources(loaded.config);
      for (const reason of insecureSources(loaded.config)) process.stderr.write(`secondarymx: warning: ${reason}\n`);
      process.stdout.write(`# ${loaded.file}: ok\n${describeConfig(loaded.config)}`);
      return 0;
    }
    case 'sync': {
      expectNoMore(rest);
      const loaded = (await config(values.config)).config;
      (await import('./privileges.js')).actAsSpoolOwner(loaded.spool);
      return (await import('./commands/sync.js')).syncCommand(loaded, { force: values.force, json: values.json });
    }
    case 'status':
      expectNoMore(rest);
      return (await import('./commands/status.js')).statusCommand((await config(values.config)).config, values.json);
    case 'flush': {
      expectNoMore(rest);
      const loaded = (await config(values.config)).config;
      (await import('./privileges.js')).actAsSpoolOwner(loaded.spool);
      return (await import('./commands/flush.js')).flushCommand(loaded, { id: values.id, domain: values.domain }, values.json);
    }
    case 'queue': {
      const [subcommand, id, ...more] = rest;
      expectNoMore(more);
      const queue = await import('./commands/queue.js');
      const selection = await querySelection(values);
      const selecting = !(await import('./spool/select.js')).isEmptySelection(selection);
      if (subcommand === 'list' || subcommand === 'summary') {
        if (id) throw new UsageError(`unexpected argument: ${id}`);
        const spool = (await config(values.config)).config.spool;
        return subcommand === 'list' ? queue.printQueue(spool, values.json, selection) : queue.summaryCommand(spool, values.json, selection);
      }
      if (!['show', 'hold', 'release', 'delete'].includes(subcommand ?? '')) {
        throw new UsageError(subcommand ? `unknown queue command: ${subcommand}` : 'queue needs a command: list, summary, show, hold, release, delete');
      }
      if (id && selecting)
        throw new UsageError(`queue ${subcommand}: a queue id or a selection (--domain, --sender, --recipient, --older-than, --all), not both`);
      if (!id && (subcommand === 'show' || !selecting)) {
        throw new UsageError(
          `queue ${subcommand} needs a queue id${subcommand === 'show' ? '' : ' or a selection (--domain, --sender, --recipient, --older-than, --all)'}`,
        );
      }
      const loaded = (await config(values.config)).config;
      if (subcommand === 'show') return queue.showCommand(loaded, id!, values.json);
      (await import('./privileges.js')).actAsSpoolOwner(loaded.spool);
      if (!id) return queue.bulkEditCommand(loaded, subcommand as QueueEdit, selection, values.yes);
      return queue.editCommand(loaded, subcommand as QueueEdit, id);
    }
    case 'import-legacy': {
      const [legacy, ...more] = rest;
      if (!legacy) throw new UsageError('import-legacy needs the old config file');
      expectNoMore(more);
      const { yaml, warnings } = (await import('./commands/import-legacy.js')).importLegacy(legacy);
      for (const warning of warnings) process.stderr.write(`secondarymx: ${warning}\n`);
      process.stdout.write(`# from ${legacy}: add to the sources: list of secondarymx.yaml\n${yaml}`);
      return 0;
    }
    case undefined:
      throw new UsageError('no command given');
    default:
      throw new UsageError(`unknown command: ${command}`);
  }
}

/** The queue selection options; --older-than is a duration. */
async function querySelection(values: { domain?: string; sender?: string; recipient?: string; 'older-than'?: string; all: boolean }): Promise<QueueSelection> {
  const olderThan = values['older-than'];
  const olderThanSeconds = olderThan === undefined ? undefined : (await import('./config/schema.js')).parseDuration(olderThan);
  if (olderThan !== undefined && olderThanSeconds === undefined)
    throw new UsageError(`--older-than: expected a duration such as 5d, 4h, 30m or 45s, not ${JSON.stringify(olderThan)}`);
  return {
    ...(values.domain === undefined ? {} : { domain: values.domain }),
    ...(values.sender === undefined ? {} : { sender: values.sender }),
    ...(values.recipient === undefined ? {} : { recipient: values.recipient }),
    ...(olderThanSeconds === undefined ? {} : { olderThanSeconds }),
    ...(values.all ? { all: true } : {}),
  };
}

/** Domain files are local: a bad line (which a sync leaves out with a warning) is a configuration error `check` names. */
async function checkFileSources(config: Config): Promise<void> {
  const [{ pullFile }, { ConfigError }, { EmptySourceError }] = await Promise.all([
    import('./directory/sources/file.js'),
    import('./config/load.js'),
    import('./directory/source-list.js'),
  ]);
  for (const source of config.sources) {
    if (source.type !== 'file') continue;
    let skipped: readonly string[];
    try {
      ({ skipped } = await pullFile(source.path));
    } catch (error) {
      if (error instanceof EmptySourceError) {
        // A fresh install: valid, but nothing is accepted until domains are listed.
        process.stderr.write(`secondarymx: warning: sources: ${source.name}: ${source.path} lists no domain yet: all mail is refused until it does\n`);
        continue;
      }
      throw new ConfigError(`sources: ${source.name}: ${(error as Error).message}`);
    }
    if (skipped.length > 0) throw new ConfigError(skipped.map((row) => `sources: ${source.name}: ${row}`).join('\n'));
  }
}

function packageVersion(): string {
  const file = new URL('../package.json', import.meta.url);
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as { version: string }).version : 'unknown';
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    // Errors say which exit code they mean (ConfigError, LegacyConfigError, UsageError): no module is loaded to tell.
    const exitCode = (error as { exitCode?: number }).exitCode;
    const message = error instanceof Error ? error.message : String(error);
    if (exitCode === EX_USAGE || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`secondarymx: ${message}\n\n${USAGE}\n`);
      process.exitCode = EX_USAGE;
    } else {
      process.stderr.write(`secondarymx: ${exitCode === EX_CONFIG ? 'config error: ' : ''}${message}\n`);
      process.exitCode = exitCode ?? 1;
    }
  },
);
