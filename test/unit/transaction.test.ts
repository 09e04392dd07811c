import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { SessionLost } from '../../src/relay/session.js';
import { sendMessage, type OutgoingMessage, type OutgoingRecipient } from '../../src/relay/transaction.js';
import { ScriptedPrimary, type ScriptAnswer } from '../helpers/scripted-primary.js';

const BODY = 'Subject: hi\r\n\r\n.leading dot\r\nline\r\n..two dots\r\n';

function outgoing(recipients: Array<string | OutgoingRecipient>, body = BODY, extra: Partial<OutgoingMessage> = {}): OutgoingMessage {
  return {
    sender: 'sender@remote.example',
    recipients: recipients.map((r) => (typeof r === 'string' ? { address: r } : r)),
    size: Buffer.byteLength(body),
    eightBit: false,
    smtpUtf8: false,
    body: () => Readable.from([Buffer.from(body)]),
    ...extra,
  };
}

/** Replies by command prefix ("RCPT TO:<b@"), first match wins. */
function byPrefix(rules: Record<string, ScriptAnswer>): (command: string) => ScriptAnswer {
  return (command) => Object.entries(rules).find(([prefix]) => command.startsWith(prefix))?.[1];
}

const outcomes = (result: { recipients: Array<{ address: string; outcome: string }> }) => result.recipients.map((r) => `${r.address} ${r.outcome}`);
const verbs = (primary: ScriptedPrimary) => primary.commands.map((c) => c.split(/[ :]/)[0]);

describe('relay transaction: one message, one transaction (scripted primary, no sockets)', () => {
  it('sends 100 recipients with 100 distinct ORCPTs as one MAIL, 100 RCPTs with their own parameters, one DATA', async () => {
    const primary = new ScriptedPrimary();
    const session = await primary.session();
    const body = `Subject: big\r\n\r\n${'x'.repeat(76)}\r\n`.repeat(2500); // 190 KB
    const recipients = Array.from({ length: 100 }, (_, i) => ({
      address: `user${i}@d1.example`,
      orcpt: `rfc822;User${i}+tag@D1.example`,
      notify: i % 2 ? ['FAILURE'] : ['SUCCESS', 'DELAY'],
    }));
    const result = await sendMessage(session, outgoing(recipients, body, { ret: 'HDRS', envid: 'env=42' }));
    assert.ok(result.recipients.every((r) => r.outcome === 'delivered'));
    assert.equal(result.reusable, true);
    assert.deepEqual(
      verbs(primary)
        .slice(1)
        .filter((v) => v !== 'RCPT'),
      ['MAIL', 'DATA', '.'],
    );
    assert.equal(primary.delivered.length, 1);
    assert.equal(primary.delivered[0].to.length, 100);
    const rcpts = primary.commands.filter((c) => c.startsWith('RCPT'));
    assert.equal(rcpts[7], 'RCPT TO:<user7@d1.example> NOTIFY=FAILURE ORCPT=rfc822;User7+2Btag@D1.example');
    assert.equal(rcpts[8], 'RCPT TO:<user8@d1.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;User8+2Btag@D1.example');
    assert.match(
      primary.commands.find((c) => c.startsWith('MAIL'))!,
      new RegExp(`^MAIL FROM:<sender@remote.example> SIZE=${Buffer.byteLength(body)} RET=HDRS ENVID=env\\+3D42$`),
    );
    const data = Buffer.byteLength(primary.delivered[0].data) + '.\r\n'.length;
    assert.ok(data <= Buffer.byteLength(body) * 1.01, `${data} bytes of DATA for a ${Buffer.byteLength(body)}-byte message`);
  });

  it('delivers the others exactly once when a recipient in the middle is refused, and fails only that one', async () => {
    const primary = new ScriptedPrimary(byPrefix({ 'RCPT TO:<b@': '550 5.1.1 <b@d1.example>: Recipient address rejected' }));
    const session = await primary.session();
    const result = await sendMessage(
      session,
      outgoing([{ address: 'a@d1.example', orcpt: 'rfc822;a@d1.example' }, { address: 'b@d1.example', orcpt: 'rfc822;b@d1.example' }, 'c@d1.example']),
    );
    assert.deepEqual(outcomes(result), ['a@d1.example delivered', 'b@d1.example failed', 'c@d1.example delivered']);
    assert.equal(result.recipients[1].reply, '550 5.1.1 <b@d1.example>: Recipient address rejected');
    assert.deepEqual(
      primary.delivered.map((d) => d.to),
      [['a@d1.example', 'c@d1.example']],
    );
    assert.equal(result.reusable, true);
    // The session carries the next message without a nested MAIL.
    const next = await sendMessage(session, outgoing(['d@d1.example']));
    assert.deepEqual(outcomes(next), ['d@d1.example delivered']);
    assert.equal(primary.sequenceErrors, 0);
  });

  it('sends RSET and no DATA when every recipient is refused, and the session goes on cleanly', async () => {
    const primary = new ScriptedPrimary(byPrefix({ 'RCPT TO:<gone': '550 5.1.1 no such user', 'RCPT TO:<busy': '450 4.2.1 busy' }));
    const session = await primary.session();
    const result = await sendMessage(session, outgoing(['gone@d1.example', 'busy@d1.example']));
    assert.deepEqual(outcomes(result), ['gone@d1.example failed', 'busy@d1.example deferred']);
    assert.deepEqual(verbs(primary).slice(1), ['MAIL', 'RCPT', 'RCPT', 'RSET']);
    assert.equal(result.reusable, true);
    assert.deepEqual(outcomes(await sendMessage(session, outgoing(['ok@d1.example']))), ['ok@d1.example delivered']);
    assert.equal(primary.sequenceErrors, 0);
  });

  it('applies a refused MAIL to every recipient (4xx deferred, 5xx failed) and resets', async () => {
    for (const [reply, outcome] of [
      ['451 4.3.0 try later', 'deferred'],
      ['552 5.3.4 too big', 'failed'],
    ] as const) {
      const primary = new ScriptedPrimary(byPrefix({ MAIL: reply }));
      const session = await primary.session();
      const result = await sendMessage(session, outgoing(['a@d1.example', 'b@d1.example']));
      assert.deepEqual(outcomes(result), [`a@d1.example ${outcome}`, `b@d1.example ${outcome}`]);
      assert.equal(result.recipients[0].reply, reply);
      assert.equal(primary.commands.at(-1), 'RSET');
      assert.equal(result.reusable, true);
    }
  });

  it('applies the reply to DATA and the final reply to the accepted recipients only', async () => {
    const cases: Array<[Record<string, ScriptAnswer>, string]> = [
      [{ DATA: '554 5.5.1 no valid recipients' }, 'failed'],
      [{ DATA: '451 4.3.0 later' }, 'deferred'],
      [{ '.': '554 5.7.1 spam' }, 'failed'],
      [{ '.': '452 4.3.1 full' }, 'deferred'],
      [{}, 'delivered'],
    ];
    for (const [rules, outcome] of cases) {
      const primary = new ScriptedPrimary(byPrefix({ 'RCPT TO:<x@': '550 5.1.1 no', ...rules }));
      const session = await primary.session();
      const result = await sendMessage(session, outgoing(['a@d1.example', 'x@d1.example']));
      assert.deepEqual(outcomes(result), [`a@d1.example ${outcome}`, 'x@d1.example failed'], JSON.stringify(rules));
      assert.equal(result.reusable, true);
    }
  });

  it('defers (never fails) what was undecided when the session is lost, answers 421 or goes out of sequence; keeps what was decided', async () => {
    const cases: Array<[Record<string, ScriptAnswer>, string[]]> = [
      [{ MAIL: 'drop' }, ['deferred', 'deferred']],
      [{ 'RCPT TO:<b@': 'drop' }, ['deferred', 'deferred']],
      [{ 'RCPT TO:<a@': '550 5.1.1 no', 'RCPT TO:<b@': '421 4.3.2 shutting down' }, ['failed', 'deferred']],
      [{ DATA: 'drop' }, ['deferred', 'deferred']],
      [{ DATA: '421 4.4.2 timeout' }, ['deferred', 'deferred']],
      [{ '.': 'drop' }, ['deferred', 'deferred']],
      [{ '.': '421 4.3.0 bye' }, ['deferred', 'deferred']],
      [{ MAIL: '503 5.5.1 Error: nested MAIL command' }, ['deferred', 'deferred']],
      [{ 'RCPT TO:<b@': '503 5.5.1 Error: need MAIL command' }, ['deferred', 'deferred']],
      [{ DATA: '503 5.5.1 bad sequence' }, ['deferred', 'deferred']],
      [{ '.': '503 5.5.1 bad sequence' }, ['deferred', 'deferred']],
      [{ MAIL: 'garbage without a code' }, ['deferred', 'deferred']],
    ];
    for (const [rules, expected] of cases) {
      const primary = new ScriptedPrimary(byPrefix(rules));
      const session = await primary.session();
      const result = await sendMessage(session, outgoing(['a@d1.example', 'b@d1.example']));
      assert.deepEqual(
        result.recipients.map((r) => r.outcome),
        expected,
        JSON.stringify(rules),
      );
      assert.equal(result.reusable, false, `${JSON.stringify(rules)}: a fresh session next`);
    }
  });

  it('without PIPELINING waits for each reply, and sends no RCPT after a refused MAIL', async () => {
    const primary = new ScriptedPrimary(byPrefix({ MAIL: '450 4.7.1 greylisted' }), ['SIZE 1000']);
    const session = await primary.session();
    const result = await sendMessage(session, outgoing(['a@d1.example', 'b@d1.example']));
    assert.deepEqual(outcomes(result), ['a@d1.example deferred', 'b@d1.example deferred']);
    assert.deepEqual(verbs(primary).slice(1), ['MAIL', 'RSET']);
  });

  it('sends DSN parameters only to a primary that offers DSN, SIZE only with SIZE; without SMTPUTF8 fails only non-ASCII addresses, and sends ASCII ones without the keyword', async () => {
    const primary = new ScriptedPrimary(undefined, ['PIPELINING']);
    const session = await primary.session();
    await sendMessage(session, outgoing([{ address: 'a@d1.example', orcpt: 'rfc822;a@d1.example', notify: ['NEVER'] }], BODY, { ret: 'FULL', eightBit: true }));
    assert.deepEqual(primary.commands.slice(1, 3), ['MAIL FROM:<sender@remote.example>', 'RCPT TO:<a@d1.example>']);
    const count = primary.commands.length;
    const result = await sendMessage(session, outgoing(['jörg@d1.example'], BODY, { smtpUtf8: true }));
    assert.deepEqual(
      result.recipients.map((r) => [r.outcome, r.reply.slice(0, 9)]),
      [['failed', '550 5.6.7']],
    );
    assert.equal(primary.commands.length, count, 'nothing sent');
    // An ASCII envelope goes without the keyword (RFC 6531 §3.2, as Postfix): no bounce for what can be delivered.
    const ascii = await sendMessage(session, outgoing(['a@d1.example'], 'Subject: Gr\u00fc\u00dfe\r\n\r\nhi\r\n', { smtpUtf8: true }));
    assert.deepEqual(
      ascii.recipients.map((r) => r.outcome),
      ['delivered'],
    );
    assert.equal(
      primary.commands.find((c, i) => i >= count && c.startsWith('MAIL')),
      'MAIL FROM:<sender@remote.example>',
    );
  });

  it('dot-stuffs the data on the wire', async () => {
    const primary = new ScriptedPrimary();
    const session = await primary.session();
    await sendMessage(session, outgoing(['a@d1.example']));
    assert.equal(primary.delivered[0].data, 'Subject: hi\r\n\r\n..leading dot\r\nline\r\n...two dots\r\n');
    const split = ['Subject: s\r\n\r\nab\r\n', '.c\r\nno newline at the end'];
    await sendMessage(session, { ...outgoing(['a@d1.example']), body: () => Readable.from(split.map((part) => Buffer.from(part))) });
    assert.equal(primary.delivered[1].data, 'Subject: s\r\n\r\nab\r\n..c\r\nno newline at the end\r\n');
  });

  it('throws a spool read error as it is, without ending the data (the primary never takes a truncated message)', async () => {
    const primary = new ScriptedPrimary();
    const session = await primary.session();
    const failing = () =>
      new Readable({
        read() {
          this.push(Buffer.from('Subject: x\r\n\r\npart one\r\n'));
          this.destroy(Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO', syscall: 'read' }));
        },
      });
    await assert.rejects(sendMessage(session, { ...outgoing(['a@d1.example']), body: failing }), { code: 'EIO' });
    assert.equal(session.usable, false);
    assert.equal(primary.delivered.length, 0);
    assert.ok(!primary.commands.includes('.'));
  });

  it('never delivers twice beyond the transactions whose final reply was lost, whatever mix of replies and drops (hundreds of random transactions)', async () => {
    const answers: ScriptAnswer[] = [
      undefined,
      undefined,
      undefined,
      '250 2.0.0 ok',
      '450 4.2.0 busy',
      '550 5.1.1 no',
      '554 5.7.1 no',
      '503 5.5.1 sequence',
      '421 4.3.2 bye',
      'drop',
    ];
    let seed = 42;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const pick = (): ScriptAnswer => answers[Math.floor(random() * answers.length)];
    const primary = new ScriptedPrimary((command) => {
      if (command.startsWith('EHLO') || command === 'RSET' || command === 'QUIT') return undefined;
      if (random() < 0.6) return undefined;
      return command === '.' && random() < 0.2 ? 'lose' : pick();
    });
    const pendingOf = new Map<string, number>();
    const deliveredTo = new Map<string, number>();
    const all = Array.from({ length: 600 }, (_, i) => `r${i}@d1.example`);
    for (const address of all) pendingOf.set(address, 0);
    let session = await primary.session();
    let transactions = 0;
    while (pendingOf.size > 0 && transactions < 2000) {
      const batch = [...pendingOf.keys()].slice(0, 1 + Math.floor(random() * 5));
      if (!session.usable) session = await primary.session();
      const result = await sendMessage(session, outgoing(batch));
      transactions++;
      for (const r of result.recipients) {
        if (r.outcome === 'delivered') deliveredTo.set(r.address, (deliveredTo.get(r.address) ?? 0) + 1);
        if (r.outcome !== 'deferred') pendingOf.delete(r.address);
      }
      if (!result.reusable) session.close();
    }
    const atPrimary = new Map<string, number>();
    for (const message of primary.delivered) for (const to of message.to) atPrimary.set(to, (atPrimary.get(to) ?? 0) + 1);
    const lostFor = (address: string) => primary.lost.filter((to) => to.includes(address)).length;
    for (const [address, times] of deliveredTo) assert.equal(times, 1, `${address} recorded delivered ${times} times`);
    for (const [address] of deliveredTo) assert.ok(atPrimary.has(address), `${address} recorded delivered but the primary never took it`);
    for (const [address, times] of atPrimary)
      assert.ok(times <= 1 + lostFor(address), `${address} reached the primary ${times} times, ${lostFor(address)} of them unanswered`);
    assert.ok(
      primary.lost.length > 0 && transactions > 300,
      `${transactions} transactions, ${primary.lost.length} final replies lost: the mix covers the case`,
    );
    assert.equal(primary.sequenceErrors, 0, 'never a nested MAIL or a DATA without recipients');
    assert.equal(pendingOf.size, 0, 'every recipient settled');
  });
});

describe('relay session: replies', () => {
  it('reports a lost session as SessionLost with the reason', async () => {
    const primary = new ScriptedPrimary(byPrefix({ NOOP: 'drop' }));
    const session = await primary.session();
    await assert.rejects(session.command('NOOP'), (error: unknown) => error instanceof SessionLost && /closed/.test(error.message));
    assert.equal(session.usable, false);
  });
});
