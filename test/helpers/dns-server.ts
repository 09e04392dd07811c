import { createSocket, type Socket } from 'node:dgram';
import { isIPv4 } from 'node:net';

export interface Zone {
  mx?: Array<{ preference: number; exchange: string }>;
  a?: string[];
  /** TXT records (SPF, DKIM keys, DMARC policies); a long one is split into 255-byte strings. */
  txt?: string[];
  /** Never answered: a server that is dead for this name. */
  silent?: boolean;
}

const TYPE = { A: 1, MX: 15, TXT: 16, AAAA: 28 } as const;

/**
 * A small authoritative DNS server on loopback UDP for the tests: answers A, MX and TXT
 * from `zones`, NOERROR with no answer for other types of a known name, NXDOMAIN otherwise.
 * Every query is counted in `queries` ("TYPE name"), so a test can tell what was asked.
 */
export class TestDnsServer {
  readonly zones = new Map<string, Zone>();
  readonly queries: string[] = [];
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

  /** Lets the process exit while it listens. */
  unref(): void {
    this.socket.unref();
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
    this.queries.push(`${Object.entries(TYPE).find(([, value]) => value === type)?.[0] ?? type} ${labels.join('.').toLowerCase()}`);
    if (zone?.silent) return undefined;
    const answers: Buffer[] = [];
    if (zone && type === TYPE.MX) {
      for (const mx of zone.mx ?? []) {
        const preference = Buffer.alloc(2);
        preference.writeUInt16BE(mx.preference);
        answers.push(record(TYPE.MX, Buffer.concat([preference, encodeName(mx.exchange)])));
      }
    }
    if (zone && type === TYPE.TXT) for (const text of zone.txt ?? []) answers.push(record(TYPE.TXT, characterStrings(text)));
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

/** RFC 1035 <character-string>s of at most 255 bytes each. */
function characterStrings(text: string): Buffer {
  const bytes = Buffer.from(text);
  const parts: Buffer[] = [];
  for (let at = 0; at < bytes.length || at === 0; at += 255) {
    const part = bytes.subarray(at, at + 255);
    parts.push(Buffer.from([part.length]), part);
  }
  return Buffer.concat(parts);
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
