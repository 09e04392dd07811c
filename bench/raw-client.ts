import { connect, type Socket } from 'node:net';

/** A raw SMTP session from `localAddress`: writes, and counts the reply lines it got. */
export class RawClient {
  private buffer = '';
  private waiters: Array<{ lines: number; resolve: () => void }> = [];
  replies: string[] = [];

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (text: string) => {
      this.buffer += text;
      for (let end = this.buffer.indexOf('\r\n'); end !== -1; end = this.buffer.indexOf('\r\n')) {
        const line = this.buffer.slice(0, end);
        this.buffer = this.buffer.slice(end + 2);
        if (line[3] !== '-') this.replies.push(line);
      }
      this.waiters = this.waiters.filter((waiter) => (this.replies.length >= waiter.lines ? (waiter.resolve(), false) : true));
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      for (const waiter of this.waiters.splice(0)) waiter.resolve(); // the daemon hung up: nothing more comes
    });
  }

  static async open(port: number, localAddress: string): Promise<RawClient> {
    const socket = connect({ port, host: '127.0.0.1', localAddress });
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const client = new RawClient(socket);
    await client.until(1); // the greeting
    await client.send('EHLO bench.example');
    return client;
  }

  /** Writes `text` and resolves once `replies` more replies came. */
  send(text: string, replies = 1): Promise<void> {
    const lines = this.replies.length + replies;
    this.socket.write(`${text}\r\n`);
    return this.until(lines);
  }

  private until(lines: number): Promise<void> {
    return new Promise((resolve) => (this.replies.length >= lines || this.socket.destroyed ? resolve() : this.waiters.push({ lines, resolve })));
  }

  get open(): boolean {
    return !this.socket.destroyed;
  }

  close(): void {
    this.socket.destroy();
  }
}
