import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { parseConfig } from '../src/config/load.js';
import { runCli } from './helpers/cli.js';

const UNIT = fileURLToPath(new URL('../deploy/secondarymx.service', import.meta.url));
const hasSystemd = spawnSync('systemd-analyze', ['--version']).status === 0;

describe('deploy: the systemd unit', () => {
  let dir: string;
  before(function () {
    if (!hasSystemd) this.skip(); // systemd-analyze is in Debian's systemd package (CI has it)
    dir = mkdtempSync(join(tmpdir(), 'secondarymx-unit-'));
    copyFileSync(UNIT, join(dir, 'secondarymx.service'));
  });
  after(() => dir && rmSync(dir, { recursive: true, force: true }));

  it('passes systemd-analyze verify', () => {
    const result = spawnSync('systemd-analyze', ['verify', join(dir, 'secondarymx.service')], { encoding: 'utf8' });
    assert.equal(result.status, 0, result.stderr);
    assert.equal(result.stderr.trim(), '', result.stderr);
  });

  it('scores an exposure of 2.0 or better in systemd-analyze security', () => {
    const output = execFileSync('systemd-analyze', ['security', '--offline=true', join(dir, 'secondarymx.service')], { encoding: 'utf8' });
    const score = Number(/Overall exposure level for secondarymx\.service: ([\d.]+)/.exec(output)?.[1]);
    assert.ok(score <= 2.0, `exposure ${score}`);
  });
});

describe('deploy: import-legacy', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'secondarymx-legacy-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('turns an old alternc-secondarymx config into a sources: entry the config accepts', async () => {
    const legacy = join(dir, 'secondarymx.conf');
    writeFileSync(legacy, '# old alternc-secondarymx\nHOST="panel.example.org"\nLOGIN=mx2\nPASSWORD=\'s3cret\'\nMASTERIP=192.0.2.10\nPROTOCOL=https\nDEBUG=1\n');
    const result = await runCli(['import-legacy', legacy]);
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stderr, /DEBUG is not used by secondarymx, ignored/);
    const parsed = parseYaml(result.stdout) as { sources: unknown[] };
    assert.deepEqual(parsed.sources, [
      { name: 'panel.example.org', type: 'mxlist', url: 'https://panel.example.org/admin/mxlist.php', login: 'mx2', password: 's3cret', primary: { host: '192.0.2.10', port: 25 } },
    ]);
    const config = parseConfig(`primary: { host: 127.0.0.1 }\n${result.stdout}`, '/x.yaml');
    assert.equal(config.sources[0].type, 'mxlist');
  });

  it('uses URL when given, and refuses a file that says nothing usable (exit 65)', async () => {
    const legacy = join(dir, 'slavedns.conf');
    writeFileSync(legacy, 'URL=http://10.0.0.1/admin/mxlist.php\nLOGIN=a\nPASSWORD=b\n');
    const parsed = parseYaml((await runCli(['import-legacy', legacy])).stdout) as { sources: Array<{ url: string; name: string }> };
    assert.deepEqual([parsed.sources[0].url, parsed.sources[0].name], ['http://10.0.0.1/admin/mxlist.php', '10.0.0.1']);
    writeFileSync(legacy, 'LOGIN=a\n');
    const bad = await runCli(['import-legacy', legacy]);
    assert.equal(bad.status, 65);
    assert.match(bad.stderr, /neither URL nor HOST is set/);
    writeFileSync(legacy, 'this is not a config\n');
    assert.match((await runCli(['import-legacy', legacy])).stderr, /slavedns\.conf:1: expected KEY=value/);
  });
});
