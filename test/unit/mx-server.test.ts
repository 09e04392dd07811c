import assert from 'node:assert/strict';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import { assertSmtpServerVersion, MxConnection } from '../../src/receive/mx-server.js';
import '../../src/receive/server.js';

describe('smtp-server extended by subclasses only', () => {
  it("leaves the library's classes as shipped once the receive side is loaded (the tests' primary, say, is plain smtp-server)", () => {
    const prototype = SMTPConnection.prototype as unknown as Record<string, unknown>;
    assert.equal(Object.hasOwn(prototype, 'handler_ETRN'), false, 'ETRN is ours only');
    for (const name of ['send', '_onCommand', 'init', 'connectionReady', '_createParser']) {
      assert.notEqual(
        prototype[name],
        (MxConnection.prototype as unknown as Record<string, unknown>)[name],
        `${name} is overridden in the subclass, not replaced`,
      );
      assert.doesNotMatch(String(prototype[name]), /greetingPause|sessionLimits|junkCommands/, `${name} is the library's own`);
    }
    assert.doesNotMatch(String((SMTPStream.prototype as unknown as { _write: unknown })._write), /chunkSequence/);
  });

  it('checks at start that the installed smtp-server is the version the overrides were written for', () => {
    assert.doesNotThrow(assertSmtpServerVersion);
  });
});
