import assert from 'node:assert/strict';
import { ConfigError, describeConfig, insecureSources, parseConfig } from '../src/config/load.js';
import type { Config } from '../src/config/schema.js';
import { baseConfig } from './helpers/daemon.js';

describe('config', () => {
  it('fills in the documented defaults and resolves paths against the config folder', () => {
    const config = parseConfig(baseConfig(), '/etc/secondarymx/secondarymx.yaml');
    assert.deepEqual(config.limits, {
      checkTimeout: 30,
      messageSize: 100_000_000,
      recipients: 1000,
      headerSize: 262_144,
      hops: 50,
      connections: 500,
      idleTimeout: 300,
      shutdownTimeout: 30,
      connectionsPerClient: 20,
      clientIpv6Prefix: 64,
      messagesPerConnection: 1000,
      commandsBeforeMail: 20,
      junkCommands: 100,
      errorsPerSession: 20,
      greetingPause: 0.1,
      dataTimeout: 600,
      sessionTimeout: 1800,
      commandLength: 2048,
    });
    assert.equal(config.spool, '/etc/secondarymx/spool');
    assert.deepEqual(config.sources[0], { name: 'local', type: 'file', path: '/etc/secondarymx/domains.txt' });
    assert.deepEqual(config.primary, { host: '127.0.0.1', port: 1 });
    assert.deepEqual(config.relay, {
      concurrency: 10,
      probeInterval: 10,
      minBackoff: 300,
      maxBackoff: 4000,
      connectTimeout: 30,
      commandTimeout: 300,
      queueLifetime: 432_000,
      delayWarning: 0,
      etrnClients: ['127.0.0.0/8', '::1/128'],
    });
    assert.deepEqual(config.dsn, { port: 25, allowInternal: false, maxPerDomainPerHour: 20 });
    assert.deepEqual(config.screen, {
      dnsblSites: [],
      dnsblThreshold: 1,
      dnsblAllowThreshold: 0,
      dnsblAction: 'reject',
      dnsTimeout: 2,
      passTtl: 86400,
      deferWhilePrimaryUp: 0,
    });
    assert.equal(config.auth.enabled, true);
    assert.deepEqual([config.auth.maxSignatures, config.auth.threads], [5, 'auto']);
    assert.deepEqual(config.auth.spf, { fail: 'reject', softfail: 'tag', neutral: 'tag', none: 'tag', temperror: 'tag', permerror: 'tag' });
    assert.deepEqual(config.auth.dmarc, { reject: 'reject', quarantine: 'tag', none: 'tag' });
    assert.deepEqual(config.verify, {
      enabled: true,
      positiveTtl: 31 * 86400,
      negativeTtl: 3 * 3600,
      timeout: 10,
      unverifiable: 'defer',
      concurrency: 2,
      maxPerSecond: 20,
      perClientPerMinute: 60,
    });
    assert.equal(config.rspamd, undefined);
    assert.deepEqual(parseConfig('primary: { host: x }\nsources: [{ name: a, type: file, path: x }]\n', '/x.yaml').dns, {});
    assert.deepEqual(config.sync, { schedule: '*/10 * * * *', maxShrink: 25, shrinkFloor: 10, staleAfter: 21600 });
    assert.equal(config.tls, undefined);
  });

  it('accepts IPv6 listen addresses in brackets and refuses them without', () => {
    assert.deepEqual(parseConfig(baseConfig().replace('"127.0.0.1:0"', '"[::1]:25", "0.0.0.0:2525"'), '/x.yaml').listen, ['[::1]:25', '0.0.0.0:2525']);
    assert.throws(() => parseConfig(baseConfig().replace('"127.0.0.1:0"', '"::1:25"'), '/x.yaml'), /listen\[0\]/);
    assert.throws(() => parseConfig(baseConfig().replace('"127.0.0.1:0"', '"[::1]:70000"'), '/x.yaml'), /listen\[0\]/);
  });

  it('reports every problem, each with the file, line and key', () => {
    const yaml = baseConfig('limits: { hops: 0, recipients: -1 }\nspeling: 1');
    assert.throws(
      () => parseConfig(yaml, '/x.yaml'),
      (error: unknown) =>
        error instanceof ConfigError &&
        error.exitCode === 78 &&
        /\/x\.yaml:7: limits\.hops: /.test(error.message) &&
        /\/x\.yaml:7: limits\.recipients: /.test(error.message) &&
        /\/x\.yaml:8: speling: unknown key/.test(error.message),
    );
  });

  it('reads durations as "5d", "4h", "30m", "45s" or seconds, and refuses anything else', () => {
    const relay = (value: string) => parseConfig(baseConfig(`relay: { queueLifetime: ${value} }`), '/x.yaml').relay.queueLifetime;
    assert.deepEqual(['5d', '4h', '30m', '45s', '90', '"2 d"'].map(relay), [432_000, 14_400, 1800, 45, 90, 172_800]);
    assert.throws(() => relay('5 days'), /relay\.queueLifetime: expected a duration/);
  });

  it('refuses duplicate source names and duplicate keys', () => {
    const twice = baseConfig().replace(/sources:\n.*\n/, 'sources:\n  - { name: a, type: file, path: x }\n  - { name: a, type: file, path: y }\n');
    assert.throws(() => parseConfig(twice, '/x.yaml'), /sources: source names must be unique/);
    assert.throws(() => parseConfig(`${baseConfig()}hostname: again.example\n`, '/x.yaml'), /invalid YAML: Map keys must be unique/);
  });

  it('masks passwords and URL credentials when describing the config', () => {
    const config = parseConfig(baseConfig(), '/x.yaml') as Config & { sources: unknown[] };
    const withSecrets = { ...config, sources: [{ name: 'db', type: 'mysql', url: 'mysql://mx:s3cret@db.example/alternc', password: 'hunter2' }] };
    const text = describeConfig(withSecrets as unknown as Config);
    assert.ok(!text.includes('s3cret') && !text.includes('hunter2'), text);
    assert.match(text, /url: mysql:\/\/mx:\*{8}@db\.example\/alternc/);
    assert.match(text, /password: "\*{8}"|password: \*{8}/);
    assert.match(text, /^ {2}passTtl: 86400$/m, 'a duration is no secret');
  });

  it('warns about MySQL without TLS beyond loopback only: all of 127.0.0.0/8 and ::1 are loopback', () => {
    const warned = (host: string) =>
      insecureSources(parseConfig(baseConfig('', `  - { name: db, type: mysql, url: "mysql://mx:pw@${host}:3306/alternc" }`), '/x.yaml'));
    for (const host of ['127.0.71.7', 'localhost', '[::1]', '[0:0:0:0:0:0:0:1]']) assert.deepEqual(warned(host), [], host);
    for (const host of ['db.example', '127.attacker.example', '[::2]']) assert.equal(warned(host).length, 1, host);
  });
});
