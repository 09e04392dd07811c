/*
 * Hostile content (issue 28): while one client sends a message built to make its checks
 * expensive, another client's NOOP round trips and a third client's messages show what it
 * costs everybody else. The cases, each signed over a correct body hash so that every
 * signature costs a key lookup and an RSA verification:
 * - 5,000 DKIM-Signature fields (3.3 MB of header: limits.headerSize is raised to 8 MB
 *   for the case, the default 256 KiB would refuse it before any check);
 * - 300 signatures with a key whose public exponent has 3,072 bits (11.5 ms a verification);
 * - 60 signatures whose selectors never answer (auth.dnsTimeout: 2).
 * Figures per case: the hostile message's reply time, the NOOP round trip p50/p99/max, the
 * other client's messages accepted meanwhile and their reply time p99.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { dkimSign } from 'mailauth';
import { spawnDaemon } from '../test/helpers/cli.js';
import { baseConfig, withPrimary, writeTestConfig } from '../test/helpers/daemon.js';
import { TestDnsServer } from '../test/helpers/dns-server.js';
import { freePort, TestPrimary } from '../test/helpers/primary.js';
import { removeAfterRun, type Report } from './figures.js';
import { RawClient } from './raw-client.js';

/** A whole transaction, pipelined up to DATA; resolves with the final reply. */
async function mail(client: RawClient, from: string, to: string, data: Buffer): Promise<string> {
  await client.send(`MAIL FROM:<${from}>\r\nRCPT TO:<${to}>\r\nDATA`, 3);
  const dataReply = client.replies.at(-1) ?? '';
  if (!dataReply.startsWith('354')) throw new Error(`DATA refused: ${client.replies.slice(-3).join(' | ')}`);
  await client.send(`${data.toString('latin1')}\r\n.`);
  return client.replies.at(-1) ?? '';
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

const txtOf = (key: KeyObject) => `v=DKIM1; k=rsa; p=${key.export({ type: 'spki', format: 'der' }).toString('base64')}`;

/**
 * A 3,072-bit RSA key pair whose public exponent is the usual private one (3,072 bits) and
 * the other way round: signing stays cheap, each verification costs a 3,072-bit exponentiation.
 */
function bigExponentKeys(): { privateKey: KeyObject; publicKey: KeyObject } {
  const jwk = generateKeyPairSync('rsa', { modulusLength: 3072 }).privateKey.export({ format: 'jwk' });
  const int = (field: string | undefined) => BigInt(`0x${Buffer.from(field!, 'base64url').toString('hex')}`);
  const b64 = (value: bigint) => {
    const hex = value.toString(16);
    return Buffer.from(hex.length % 2 ? `0${hex}` : hex, 'hex').toString('base64url');
  };
  const [e, d, p, q] = [int(jwk.e), int(jwk.d), int(jwk.p), int(jwk.q)];
  const swapped = { ...jwk, e: b64(d), d: b64(e), dp: b64(e % (p - 1n)), dq: b64(e % (q - 1n)) };
  const privateKey = createPrivateKey({ key: swapped, format: 'jwk' });
  const publicKey = createPublicKey({ key: { kty: 'RSA', n: jwk.n, e: swapped.e }, format: 'jwk' });
  return { privateKey, publicKey };
}

/** `count` DKIM-Signature fields over `body`: one real signature, copied with each copy's s= set to selector(i). */
async function signatures(body: string, count: number, privateKey: KeyObject, selector: (i: number) => string): Promise<string> {
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  const signed = await dkimSign(body, { signatureData: [{ signingDomain: 'hostile.test', selector: 'template', privateKey: pem }] } as Parameters<
    typeof dkimSign
  >[1]);
  const template = signed.signatures;
  return Array.from({ length: count }, (_, i) => template.replace('s=template;', `s=${selector(i)};`)).join('');
}

const BODY_LINES = 200;

function plainMessage(from: string, subject: string): string {
  const body = Array.from({ length: BODY_LINES }, (_, i) => `Line ${i} of a message that is as long as a short letter.`).join('\r\n');
  return `From: <${from}>\r\nTo: <alice@d1.example>\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W/g, '')}.${Date.now()}@hostile.test>\r\nDate: ${new Date().toUTCString()}\r\n\r\n${body}\r\n`;
}

interface HostileCase {
  name: string;
  signatures: number;
  /** Config beside the bench's limits (which let one session send NOOPs and messages all along). */
  limits?: string;
  extra?: string;
  build: (dns: TestDnsServer) => Promise<string>;
}

export async function hostileBenchmarks(report: Report): Promise<void> {
  const dns = new TestDnsServer();
  await dns.start();
  dns.zones.set('hostile.test', { txt: ['v=spf1 ip4:127.0.0.0/8 ~all'] });
  dns.zones.set('_dmarc.hostile.test', { txt: ['v=DMARC1; p=none'] });
  dns.zones.set('friendly.test', { txt: ['v=spf1 ip4:127.0.0.0/8 ~all'] });
  const normal = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const big = bigExponentKeys();
  const cases: HostileCase[] = [
    {
      name: '5,000 signatures',
      signatures: 5000,
      limits: 'headerSize: 8000000',
      build: async () => {
        for (let i = 0; i < 5000; i++) dns.zones.set(`k${i}._domainkey.hostile.test`, { txt: [txtOf(normal.publicKey)] });
        const body = plainMessage('news@hostile.test', 'five thousand');
        return (await signatures(body, 5000, normal.privateKey, (i) => `k${i}`)) + body;
      },
    },
    {
      name: 'big exponent',
      signatures: 300,
      build: async () => {
        for (let i = 0; i < 300; i++) dns.zones.set(`e${i}._domainkey.hostile.test`, { txt: [txtOf(big.publicKey)] });
        const body = plainMessage('news@hostile.test', 'big exponent');
        return (await signatures(body, 300, big.privateKey, (i) => `e${i}`)) + body;
      },
    },
    {
      name: 'never-answering keys',
      signatures: 60,
      extra: 'auth: { dnsTimeout: 2 }',
      build: async () => {
        for (let i = 0; i < 60; i++) dns.zones.set(`m${i}._domainkey.hostile.test`, { silent: true });
        const body = plainMessage('news@hostile.test', 'never answering');
        return (await signatures(body, 60, normal.privateKey, (i) => `m${i}`)) + body;
      },
    },
  ];
  const primary = new TestPrimary(await freePort());
  await primary.start();
  try {
    for (const hostile of cases) {
      process.stderr.write(`hostile: ${hostile.name}\n`);
      const data = Buffer.from(await hostile.build(dns));
      const limits = ['junkCommands: 1000000', 'messagesPerConnection: 1000000', ...(hostile.limits ? [hostile.limits] : [])].join(', ');
      const extra = `dns: { servers: ["${dns.server}"] }\nlimits: { ${limits} }\n${hostile.extra ?? ''}`;
      const { dir, file } = writeTestConfig(withPrimary(baseConfig(extra), primary.port));
      removeAfterRun(dir);
      const daemon = await spawnDaemon(file);
      try {
        const attacker = await RawClient.open(daemon.port, '127.0.0.2');
        const noops = await RawClient.open(daemon.port, '127.0.0.3');
        await noops.send('MAIL FROM:<friend@friendly.test>'); // NOOPs in a transaction: limits.commandsBeforeMail counts those before
        const sender = await RawClient.open(daemon.port, '127.0.0.4');
        let running = true;
        const roundTrips: number[] = [];
        const messageTimes: number[] = [];
        const accepted = { count: 0, other: 0 };
        const measuring = (async () => {
          while (running) {
            const started = process.hrtime.bigint();
            await noops.send('NOOP');
            const reply = noops.replies.at(-1) ?? '';
            if (!reply.startsWith('250') || !noops.open) throw new Error(`NOOP: ${reply}`);
            roundTrips.push(Number(process.hrtime.bigint() - started) / 1e6);
            await new Promise((resolve) => setTimeout(resolve, 5));
          }
        })();
        const sending = (async () => {
          for (let i = 0; running; i++) {
            const started = process.hrtime.bigint();
            const reply = await mail(sender, 'friend@friendly.test', 'alice@d1.example', Buffer.from(plainMessage('friend@friendly.test', `friend ${i}`)));
            messageTimes.push(Number(process.hrtime.bigint() - started) / 1e6);
            if (reply.startsWith('250')) accepted.count++;
            else accepted.other++;
          }
        })();
        await new Promise((resolve) => setTimeout(resolve, 200)); // both measurements under way
        const started = Date.now();
        const reply = await mail(attacker, 'news@hostile.test', 'alice@d1.example', data);
        const hostileMs = Date.now() - started;
        await new Promise((resolve) => setTimeout(resolve, 200));
        running = false;
        await Promise.all([measuring, sending]);
        const parameters = { signatures: hostile.signatures, bytes: data.length, reply: reply.slice(0, 60) };
        report({ name: `hostile ${hostile.name}: its reply after`, value: hostileMs, unit: 'ms', parameters });
        report({
          name: `hostile ${hostile.name}: another client's NOOP p50`,
          value: percentile(roundTrips, 50),
          unit: 'ms',
          parameters: { noops: roundTrips.length },
        });
        report({
          name: `hostile ${hostile.name}: another client's NOOP p99`,
          value: percentile(roundTrips, 99),
          unit: 'ms',
          parameters: { noops: roundTrips.length },
        });
        report({
          name: `hostile ${hostile.name}: another client's NOOP max`,
          value: roundTrips.reduce((most, ms) => Math.max(most, ms), 0),
          unit: 'ms',
          parameters: { noops: roundTrips.length },
        });
        report({
          name: `hostile ${hostile.name}: a third client's messages accepted meanwhile`,
          value: accepted.count,
          unit: 'messages',
          parameters: { refused: accepted.other, replyP99Ms: Math.round(percentile(messageTimes, 99)) },
        });
        for (const session of [attacker, noops, sender]) session.close();
      } finally {
        daemon.child.kill('SIGTERM');
        await daemon.exited;
      }
    }
  } finally {
    await primary.stop();
    await dns.stop();
  }
}
