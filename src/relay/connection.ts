import type { Readable } from 'node:stream';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import type { HostPort } from '../config/schema.js';

/** The primary could not be talked to at all: refused, timed out, dropped, 421. */
export class PrimaryUnreachable extends Error {}

export interface RecipientReply {
  address: string;
  /** SMTP reply code; 0 when the primary never answered for this recipient. */
  code: number;
  reply: string;
}

export interface ConnectionOptions {
  /** Our EHLO name. */
  name: string;
  connectTimeout: number;
  commandTimeout: number;
}

export interface MessageToSend {
  sender: string;
  recipients: string[];
  /** RFC 3461 parameters, passed on when the primary offers DSN. */
  dsn: { ret?: string; envid?: string; notify?: string[]; orcpt?: string };
  size: number;
  eightBit: boolean;
  /** The message requires SMTPUTF8 (RFC 6531). */
  smtpUtf8: boolean;
  body: Readable;
}

/**
 * One SMTP session with a primary, through nodemailer's client. It can carry several
 * messages (RSET after a failed one). Any connection-level failure is a
 * PrimaryUnreachable; replies of the primary are returned per recipient.
 */
export class PrimaryConnection {
  private broken: Error | undefined;

  private constructor(
    private readonly connection: SMTPConnection,
    readonly primary: HostPort,
  ) {
    connection.on('error', (error: Error) => {
      this.broken ??= error;
    });
    connection.on('end', () => {
      this.broken ??= new PrimaryUnreachable('connection closed');
    });
  }

  static open(primary: HostPort, options: ConnectionOptions & { servername?: string }): Promise<PrimaryConnection> {
    const connection = new SMTPConnection({
      host: primary.host,
      port: primary.port,
      ...(options.servername ? { servername: options.servername } : {}),
      name: options.name,
      connectionTimeout: options.connectTimeout * 1000,
      greetingTimeout: options.connectTimeout * 1000,
      socketTimeout: options.commandTimeout * 1000,
      opportunisticTLS: true,
      // The primary is ours, and MX hosts are reached opportunistically (RFC 7435): no certificate check.
      tls: { rejectUnauthorized: false },
    });
    return new Promise((resolve, reject) => {
      // nodemailer reports connection failures (refused, timeout, 421 greeting) only as 'error'.
      const failed = (error: Error) => reject(new PrimaryUnreachable(describe(error)));
      connection.once('error', failed);
      connection.connect(() => {
        connection.off('error', failed);
        resolve(new PrimaryConnection(connection, primary));
      });
    });
  }

  get usable(): boolean {
    return !this.broken;
  }

  get offersSmtpUtf8(): boolean {
    // nodemailer keeps the EHLO keywords in a field it does not type.
    return ((this.connection as unknown as { _supportedExtensions?: string[] })._supportedExtensions ?? []).includes('SMTPUTF8');
  }

  /** Sends one message; resolves with one reply per recipient. */
  send(message: MessageToSend): Promise<RecipientReply[]> {
    if (this.broken) return Promise.reject(new PrimaryUnreachable(describe(this.broken)));
    return new Promise((resolve, reject) => {
      this.connection.send(
        {
          from: message.sender || false,
          to: message.recipients,
          size: message.size,
          use8BitMime: message.eightBit,
          dsn: { ret: message.dsn.ret ?? null, envid: message.dsn.envid ?? null, notify: message.dsn.notify ?? null, orcpt: message.dsn.orcpt ?? null },
        },
        message.body,
        (error, info) => {
          if (this.broken || isConnectionError(error)) {
            message.body.destroy();
            return reject(new PrimaryUnreachable(describe(this.broken ?? error!)));
          }
          const rejected = new Map<string, { code: number; reply: string }>();
          const errors = ((error as { rejectedErrors?: unknown[] } | null)?.rejectedErrors ?? info?.rejectedErrors ?? []) as Array<{
            recipient?: string;
            responseCode?: number;
            response?: string;
          }>;
          for (const rejection of errors) {
            if (rejection.recipient) rejected.set(rejection.recipient, { code: rejection.responseCode ?? 0, reply: rejection.response ?? '' });
          }
          const whole = error as { responseCode?: number; response?: string } | null;
          resolve(
            message.recipients.map((address) => {
              const own = rejected.get(address);
              if (own) return { address, ...own };
              if (whole) return { address, code: whole.responseCode ?? 0, reply: whole.response ?? String(error) };
              return { address, code: 250, reply: info?.response ?? '250' };
            }),
          );
        },
      );
    });
  }

  /** Ends a failed transaction so the session can carry the next message. */
  reset(): Promise<void> {
    return new Promise((resolve, reject) => this.connection.reset((error) => (error ? reject(new PrimaryUnreachable(describe(error))) : resolve())));
  }

  quit(): void {
    if (this.broken) this.connection.close();
    else this.connection.quit();
  }
}

/** Errors that mean the session is gone, not that the primary refused something. */
function isConnectionError(error: Error | null | undefined): boolean {
  if (!error) return false;
  const code = (error as { code?: string }).code;
  const responseCode = (error as { responseCode?: number }).responseCode;
  if (responseCode === 421) return true;
  return code === 'ECONNECTION' || code === 'ETIMEDOUT' || code === 'ESOCKET' || code === 'EPROTOCOL' || (code !== 'EENVELOPE' && code !== 'EMESSAGE' && !responseCode);
}

function describe(error: Error): string {
  const { code, response } = error as { code?: string; response?: string };
  return [code, response ?? error.message].filter(Boolean).join(': ');
}
