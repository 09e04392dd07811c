import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseDomainList } from '../src/directory/sources/file.js';
import { DirectoryStore } from '../src/directory/store.js';

describe('directory store: the persisted last good lists', () => {
  let root: string;
  let store: DirectoryStore;
  beforeEach(async () => {
    root = mkdtempSync(join(tmpdir(), 'secondarymx-store-'));
    store = new DirectoryStore(join(root, 'directory'));
    await store.ensure();
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  it('round-trips a list: domains, catch-alls, unchecked domains and addresses', async () => {
    const list = parseDomainList(
      'a.example\nalice@a.example\nbob@a.example\n@c.example\nopen.example\nxn--bcher-kva.example\nüser@xn--bcher-kva.example\n',
      'x',
    ).list;
    await store.saveList('src', list);
    assert.deepEqual(await store.loadList('src'), list);
    assert.equal(await store.loadList('other'), undefined);
  });

  it('refuses a truncated or foreign file instead of serving half a list', async () => {
    await store.saveList('src', parseDomainList('a.example\nalice@a.example\nb.example\n', 'x').list);
    const file = join(root, 'directory', 'src.list');
    const text = readFileSync(file, 'utf8');
    writeFileSync(file, text.slice(0, text.indexOf('b.example')));
    await assert.rejects(store.loadList('src'), /truncated/);
    writeFileSync(file, '{"version":1}\n');
    await assert.rejects(store.loadList('src'), /not a secondarymx-directory 1 file/);
  });

  it('removes the temp files an interrupted write left', async () => {
    writeFileSync(join(root, 'directory', 'src.list.0MWW4HWCYBA71663CA0.tmp'), 'half');
    await store.saveState({});
    await store.removeLeftovers();
    assert.deepEqual(readdirSync(join(root, 'directory')), ['state.json']);
  });
});
