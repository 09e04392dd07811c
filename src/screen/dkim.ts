import { createPublicKey } from 'node:crypto';
import { createRequire } from 'node:module';
import type { Readable } from 'node:stream';
import type { DKIMResult, DNSResolver } from 'mailauth';

/**
 * DKIM verification with the bounds the established verifiers have (OpenDKIM's
 * MaximumSignaturesToVerify, rspamd's and mailauth 8's signature caps), on mailauth's
 * verifier: its dkimVerify() (4.x, the last line for Node 20) verifies every signature
 * one after another, each with a key lookup, an RSA verification and, per distinct
 * canonicalisation and l=, a hash of the whole body. One message with 5,000 signatures
 * held the event loop 26.9 s.
 *
 * Here, before any body byte is hashed: at most `maxSignatures` DKIM-Signature fields are
 * verified, those whose d= aligns with the From domain first; the newest ARC set always is.
 * Their keys are looked up at once (one deadline for all, not one per signature), and a
 * key outside RFC 8301's 1024-4096 bits or with a public exponent above 65537 is refused
 * unverified ("invalid public key").
 */

/** The parts of mailauth's DkimVerifier (lib/dkim/dkim-verifier.js) this extends. */
interface SignatureHeader {
  type: 'DKIM' | 'ARC' | 'AS';
  skip?: boolean;
  signingDomain: string;
  selector: string;
  bodyHashKey?: string;
}
interface MailauthVerifier {
  signatureHeaders: SignatureHeader[];
  headerFrom: string[];
  bodyHashes: Map<string, unknown>;
  sealBodyHashKey?: string;
  results: DKIMResult[];
  arc: unknown;
  messageHeaders(headers: unknown): Promise<void>;
}
type VerifierClass = new (options: { resolver: DNSResolver; sender?: string; minBitLength?: number }) => MailauthVerifier;

const require = createRequire(import.meta.url);
const { DkimVerifier } = require('mailauth/lib/dkim/dkim-verifier.js') as { DkimVerifier: VerifierClass };
const { writeToStream } = require('mailauth/lib/tools.js') as { writeToStream: (stream: unknown, input: Readable | Buffer) => Promise<void> };

/** RFC 8301 §3.2: verifiers must accept 1024-4096 bit RSA keys; we verify nothing bigger (a 16,384-bit key costs ~100 times a 2,048-bit one). */
const MAX_RSA_BITS = 4096;
/** The usual exponent is 65537; a 3,072-bit exponent made one verification cost 11.5 ms instead of 0.05. */
const MAX_RSA_EXPONENT = 65537n;

export interface DkimLimits {
  maxSignatures: number;
}

export interface DkimOutcome {
  results: DKIMResult[];
  headerFrom: string[];
  arc: unknown;
  /** DKIM-Signature fields left unverified past the cap. */
  skipped: number;
}

export async function verifyDkim(message: Readable | Buffer, resolver: DNSResolver, sender: string, limits: DkimLimits): Promise<DkimOutcome> {
  const keys = new Map<string, ReturnType<DNSResolver>>();
  // Each key once, and all of a message's keys at once: the lookups started below are the ones mailauth then awaits.
  const lookup = (name: string) => {
    let answer = keys.get(name);
    if (!answer) keys.set(name, (answer = resolver(name, 'TXT').then(checkedKey)));
    return answer;
  };
  const cachedResolver = ((name: string, type: string) =>
    type === 'TXT' && name.includes('._domainkey.') ? lookup(name) : resolver(name, type)) as DNSResolver;
  let skipped = 0;
  class BoundedVerifier extends DkimVerifier {
    override async messageHeaders(headers: unknown): Promise<void> {
      await super.messageHeaders(headers);
      skipped = bound(this, limits.maxSignatures);
      for (const signature of this.signatureHeaders) {
        if (!signature.skip) void lookup(`${signature.selector}._domainkey.${signature.signingDomain}`).catch(() => undefined); // awaited, and its error read, by mailauth
      }
    }
  }
  const verifier = new BoundedVerifier({ resolver: cachedResolver, sender });
  await writeToStream(verifier, message);
  return { results: verifier.results, headerFrom: verifier.headerFrom, arc: verifier.arc, skipped };
}

/** Marks the DKIM signatures past `max` skipped (From-aligned ones kept first) and drops the body hashes only they needed; returns how many. */
function bound(verifier: MailauthVerifier, max: number): number {
  const fromDomain = (verifier.headerFrom[0] ?? '').split('@').pop()!.toLowerCase();
  const aligned = (domain: string) => {
    const d = domain.toLowerCase();
    return fromDomain !== '' && (d === fromDomain || fromDomain.endsWith(`.${d}`) || d.endsWith(`.${fromDomain}`));
  };
  const dkim = verifier.signatureHeaders.filter((signature) => signature.type === 'DKIM' && !signature.skip);
  const kept = new Set([...dkim.filter((s) => aligned(s.signingDomain)), ...dkim.filter((s) => !aligned(s.signingDomain))].slice(0, max));
  let skipped = 0;
  for (const signature of dkim) {
    if (kept.has(signature)) continue;
    signature.skip = true;
    skipped++;
  }
  const needed = new Set(verifier.signatureHeaders.filter((s) => !s.skip).map((s) => s.bodyHashKey));
  if (verifier.sealBodyHashKey) needed.add(verifier.sealBodyHashKey);
  for (const key of [...verifier.bodyHashes.keys()]) if (!needed.has(key)) verifier.bodyHashes.delete(key);
  return skipped;
}

/** The TXT answer of a DKIM key, or an error mailauth reports as "invalid public key" for a key we will not verify with. */
function checkedKey<T extends string[][] | string[]>(answer: T): T {
  const record = ([] as string[])
    .concat(answer[0] ?? [])
    .join('')
    .replace(/\s+/g, '');
  const p = /(?:^|;)p=([^;]*)/.exec(record)?.[1];
  if (!p) return answer; // mailauth says what is wrong with it
  let details;
  try {
    const key = createPublicKey({ key: Buffer.from(p, 'base64'), format: 'der', type: 'spki' });
    details = key.asymmetricKeyType === 'rsa' ? key.asymmetricKeyDetails : undefined;
  } catch {
    return answer;
  }
  if (details && ((details.modulusLength ?? 0) > MAX_RSA_BITS || (details.publicExponent ?? 0n) > MAX_RSA_EXPONENT)) {
    throw Object.assign(new Error(`RSA key outside the verified sizes (${details.modulusLength} bits, exponent ${details.publicExponent})`), {
      code: 'EINVALIDVAL',
      rr: record,
    });
  }
  return answer;
}
