import { createSocket, type Socket } from 'node:dgram';
import { isIPv4 } from 'node:net';

export interface Zone {
  mx?: Array<{ preference: number; exchange: string }>;
  a?: string[];
}

const TYPE = { A: 1, MX: 15, AAAA: 28 } as const;

/**
 * A small authoritative DNS server on loopback UDP for the MX tests: answers A and MX
 * from `zones`, NOERROR with no answer for other types of a known name, NXDOMAIN otherwise.
 */
export class TestDnsServer {
  readonly zones = new Map<string, Zone>();
  private readonly socket: Socket = createSocket('udp4');
  port = 0;

  async start(): Promise<void> {
    this.socket.on('message', (query, peer) => {
      const response = this.answer(query);
      if (response) this.socket.send(response, peer.port, peer.address);
    });
    await new Promise<void>((resolve) => this.socket.bind(0, '127.0.0.1', resolve));
    this.port = this.socket.address().port;
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => this.socket.close(() => resolve()));
  }

  get server(): string {
    return `127.0.0.1:${this.port}`;
  }

  private answer(query: Buffer): Buffer | undefined {
    if (query.length < 12) return undefined;
    let offset = 12;
    const labels: string[] = [];
    while (query[offset] !== 0) {
      const length = query[offset];
      labels.push(query.subarray(offset + 1, offset + 1 + length).toString('latin1'));
      offset += length + 1;
    }
    const questionEnd = offset + 5;
    const type = query.readUInt16BE(offset + 1);
    const zone = this.zones.get(labels.join('.').toLowerCase());
    const answers: Buffer[] = [];
    if (zone && type === TYPE.MX) {
      for (const mx of zone.mx ?? []) {
        const preference = Buffer.alloc(2);
        preference.writeUInt16BE(mx.preference);
        answers.push(record(TYPE.MX, Buffer.concat([preference, encodeName(mx.exchange)])));
      }
    }
    if (zone && type === TYPE.A)
      for (const address of (zone.a ?? []).filter((a) => isIPv4(a))) answers.push(record(TYPE.A, Buffer.from(address.split('.').map(Number))));
    const header = Buffer.alloc(12);
    query.copy(header, 0, 0, 2); // id
    header.writeUInt16BE(zone ? 0x8180 : 0x8183, 2); // response, recursion available; NXDOMAIN for unknown names
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(answers.length, 6);
    return Buffer.concat([header, query.subarray(12, questionEnd), ...answers]);
  }
}

function encodeName(name: string): Buffer {
  const parts = name
    .split('.')
    .filter(Boolean)
    .map((label) => Buffer.concat([Buffer.from([label.length]), Buffer.from(label, 'latin1')]));
  return Buffer.concat([...parts, Buffer.from([0])]);
}

/** An answer for the question's name (compression pointer to offset 12), class IN, TTL 60. */
function record(type: number, data: Buffer): Buffer {
  const head = Buffer.alloc(12);
  head.writeUInt16BE(0xc00c, 0);
  head.writeUInt16BE(type, 2);
  head.writeUInt16BE(1, 4);
  head.writeUInt32BE(60, 6);
  head.writeUInt16BE(data.length, 10);
  return Buffer.concat([head, data]);
}
