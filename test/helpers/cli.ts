import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

/** The built CLI, as `npx secondarymx` runs it (npm test builds it first). */
export const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));

/** The Node flags of the CLI's `#!/usr/bin/env -S node …` line: tests run it as installed. */
const NODE_FLAGS = readFileSync(CLI, 'utf8').split('\n', 1)[0].split(/\s+/).slice(3);

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI to completion (asynchronously: a daemon in this process must stay able to answer it). */
export function runCli(args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  const child = spawn(process.execPath, [...NODE_FLAGS, CLI, ...args], {
    cwd: options.cwd,
    env: options.env ?? { ...process.env, SECONDARYMX_CONFIG: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 20_000,
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (data: string) => (stdout += data));
  child.stderr.setEncoding('utf8').on('data', (data: string) => (stderr += data));
  return new Promise((resolve) => child.on('close', (status) => resolve({ status, stdout, stderr })));
}

export interface RunningDaemon {
  child: ChildProcess;
  port: number;
  logs: Array<Record<string, unknown>>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Spawns `secondarymx serve` (after `prefix`, e.g. unshare); resolves once it listens (port 0 in the config picks one) and its first sync is done.
 * BENCH_PROFILE=<dir> runs it under --cpu-prof, writing a .cpuprofile there when it exits.
 */
export async function spawnDaemon(
  configFile: string,
  options: { prefix?: string[]; onSpawn?: (child: ChildProcess) => void; /** another build's dist/cli.js (a bench's before) */ cli?: string } = {},
): Promise<RunningDaemon> {
  const profile = process.env.BENCH_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROFILE}`] : [];
  const command = [...(options.prefix ?? []), process.execPath, ...NODE_FLAGS, ...profile, options.cli ?? CLI, 'serve', '--config', configFile];
  const child = spawn(command[0], command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  options.onSpawn?.(child);
  const logs: Array<Record<string, unknown>> = [];
  let stderr = '';
  child.stderr!.on('data', (data: Buffer) => {
    stderr += data.toString();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  const port = await new Promise<number>((resolve, reject) => {
    let listening: number | undefined;
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const entry = JSON.parse(line) as Record<string, unknown>;
      logs.push(entry);
      if (entry.event === 'listening')
        listening = Number(
          String((entry.listen as string[])[0])
            .split(':')
            .pop(),
        );
      if (entry.event === 'sync_finished' && listening !== undefined) resolve(listening);
    });
    exited.then(({ code }) => reject(new Error(`daemon exited with ${code} before listening: ${stderr}`)), reject);
  });
  return { child, port, logs, exited };
}
