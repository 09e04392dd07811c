import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Figure {
  name: string;
  value: number;
  unit: string;
  parameters: Record<string, number | string>;
}

export type Report = (figure: Figure) => void;

/** A reporter that keeps each figure in `figures` and prints it as one line. */
export function printingReport(figures: Figure[]): Report {
  return (figure) => {
    figures.push(figure);
    const params = Object.entries(figure.parameters)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ');
    console.log(`${figure.name}: ${figure.value.toFixed(figure.value < 10 ? 2 : 0)} ${figure.unit}${params ? ` (${params})` : ''}`);
  };
}

const CLOCK_TICKS = 100; // USER_HZ on Linux

/** User + system CPU seconds a process has used so far. */
export function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

export function rssMb(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(match?.[1] ?? 0) / 1024;
}

/** Peak RSS of a process so far (VmHWM). */
export function peakRssMb(pid: number): number {
  const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(match?.[1] ?? 0) / 1024;
}

const leftovers: string[] = [];

/**
 * Keeps a case's temp folder until the whole run is over (removeLeftovers): on ext4
 * without a journal (this machine's kind), creating a file skips every inode deleted
 * in the last 60 s (360 s while its inode-table block is dirty), so a case that ran
 * right after another case's cleanup paid for it: accept B measured 320 messages/s
 * after accept A's spool was removed, 800-1,000 without.
 */
export function removeAfterRun(dir: string): void {
  leftovers.push(dir);
}

export function removeLeftovers(): void {
  for (const dir of leftovers.splice(0)) rmSync(dir, { recursive: true, force: true });
}

/** CPU to create one empty file in a fresh folder under `parent` (kept until the end of the run). */
export function fileCreateCost(parent = tmpdir()): number {
  const dir = mkdtempSync(join(parent, 'create-'));
  removeAfterRun(dir);
  const before = process.cpuUsage();
  for (let i = 0; i < 500; i++) closeSync(openSync(join(dir, String(i)), 'wx'));
  const used = process.cpuUsage(before);
  return (used.user + used.system) / 500;
}
