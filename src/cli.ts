#!/usr/bin/env node
import { existsSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ConfigError, describeConfig, loadConfig } from './config/load.js';
import { SourceFormatError } from './directory/sources/file.js';
import { createLogger } from './log.js';
import { printQueue } from './queue-list.js';
import { serve } from './serve.js';

const EX_USAGE = 64;

const USAGE = `usage: secondarymx <command> [--config FILE]

commands:
  serve              run the backup MX (SMTP receive into the spool) until SIGTERM/SIGINT
  check              validate the config and print the effective config (secrets masked)
  queue list [--json]
                     list the spooled messages, whether or not the daemon runs

options:
  --config FILE      config file (default: $SECONDARYMX_CONFIG, ./config/secondarymx.yaml,
                     /etc/secondarymx/secondarymx.yaml, the first that exists)
  --json             machine-readable output (queue list)
  -h, --help         this help
  -v, --version      print the version

exit codes: 0 ok, 1 runtime error, 64 usage error, 78 configuration error`;

class UsageError extends Error {}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: 'string' },
      json: { type: 'boolean', default: false },
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
  const expectNoMore = (words: string[]) => {
    if (words.length > 0) throw new UsageError(`unexpected argument: ${words[0]}`);
  };
  switch (command) {
    case 'serve': {
      expectNoMore(rest);
      const loaded = loadConfig(values.config);
      await serve(loaded, createLogger(loaded.config.log.level));
      return 0;
    }
    case 'check': {
      expectNoMore(rest);
      const loaded = loadConfig(values.config);
      process.stdout.write(`# ${loaded.file}: ok\n${describeConfig(loaded.config)}`);
      return 0;
    }
    case 'queue': {
      const [subcommand, ...more] = rest;
      if (subcommand !== 'list') throw new UsageError(subcommand ? `unknown queue command: ${subcommand}` : 'queue needs a command: list');
      expectNoMore(more);
      return printQueue(loadConfig(values.config).config.spool, values.json);
    }
    case undefined:
      throw new UsageError('no command given');
    default:
      throw new UsageError(`unknown command: ${command}`);
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
    if (error instanceof ConfigError || error instanceof SourceFormatError) {
      process.stderr.write(`secondarymx: config error: ${error.message}\n`);
      process.exitCode = 78;
    } else if (error instanceof UsageError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`secondarymx: ${(error as Error).message}\n\n${USAGE}\n`);
      process.exitCode = EX_USAGE;
    } else {
      process.stderr.write(`secondarymx: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exitCode = 1;
    }
  },
);
