// identity/pkix.ts: the X.509 plumbing the rest of identity/ shares: loading @peculiar/x509
// (after reflect-metadata, which it needs), PEM splitting and the certificate facts node:crypto
// cannot read (basicConstraints, key usage bits, URI SANs). No I/O and no policy decisions;
// callers decide what a fact means.

import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { X509Certificate, webcrypto } from 'node:crypto';

export { x509 };

/** node's WebCrypto, typed as what @peculiar/x509 expects; passed explicitly, never set globally. */
export const webCrypto = webcrypto as unknown as webcrypto.Crypto;

/** ECDSA P-256 with SHA-256: the key and signature algorithm of every key weft generates. */
export const EC_P256 = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END \1-----/g;

export interface PemBlock {
  readonly label: string;
  /** The whole block, normalised to end with a newline. */
  readonly pem: string;
}

export function pemBlocks(text: string): PemBlock[] {
  const out: PemBlock[] = [];
  for (const m of text.matchAll(PEM_BLOCK)) out.push({ label: m[1]!, pem: `${m[0].trim()}\n` });
  return out;
}

/**
 * Every CERTIFICATE block of `text`, parsed by node:crypto. Throws an Error naming `what` when
 * there is none or one does not parse.
 */
export function parsePemCertificates(text: string, what = 'PEM'): X509Certificate[] {
  const blocks = pemBlocks(text).filter((b) => b.label === 'CERTIFICATE');
  if (blocks.length === 0) throw new Error(`${what} holds no CERTIFICATE block`);
  return blocks.map((b, i) => {
    try {
      return new X509Certificate(b.pem);
    } catch (err) {
      throw new Error(`${what}: certificate ${i + 1} does not parse: ${(err as Error).message}`);
    }
  });
}

export function toPem(der: ArrayBuffer | Uint8Array, label: string): string {
  const b64 = Buffer.from(der instanceof Uint8Array ? der : new Uint8Array(der)).toString('base64');
  return `-----BEGIN ${label}-----\n${b64.replace(/.{1,64}/g, '$&\n')}-----END ${label}-----\n`;
}

export function certPem(cert: X509Certificate): string {
  return toPem(cert.raw, 'CERTIFICATE');
}

/** What weft reads out of a certificate beyond what node:crypto exposes. */
export interface CertFacts {
  /** basicConstraints cA; undefined when the extension is absent. */
  readonly ca: boolean | undefined;
  readonly pathLength: number | undefined;
  /** Key usage bits (x509.KeyUsageFlags); undefined when the extension is absent. */
  readonly keyUsage: number | undefined;
  /** URI subjectAltNames, in order. */
  readonly uris: readonly string[];
  readonly notBefore: Date;
  readonly notAfter: Date;
}

/** Parses the extensions weft checks; throws when the DER or an extension does not parse. */
export function certFacts(cert: X509Certificate): CertFacts {
  const p = new x509.X509Certificate(cert.raw);
  const bc = p.getExtension(x509.BasicConstraintsExtension);
  const ku = p.getExtension(x509.KeyUsagesExtension);
  const uris: string[] = [];
  for (const san of p.getExtensions(x509.SubjectAlternativeNameExtension)) {
    for (const name of san.names.items) if (name.type === 'url') uris.push(name.value);
  }
  return {
    ca: bc === null ? undefined : bc.ca,
    pathLength: bc?.pathLength,
    keyUsage: ku === null ? undefined : ku.usages,
    uris,
    notBefore: p.notBefore,
    notAfter: p.notAfter,
  };
}

export function hasUsage(facts: CertFacts, flag: x509.KeyUsageFlags): boolean {
  return facts.keyUsage !== undefined && (facts.keyUsage & flag) !== 0;
}

/** Same DER bytes. */
export function sameCert(a: X509Certificate, b: X509Certificate): boolean {
  return a.raw.equals(b.raw);
}

/** `a` names `b` as issuer and `b`'s key verifies `a`'s signature. */
export function issuedBy(a: X509Certificate, b: X509Certificate): boolean {
  try {
    return a.checkIssued(b) && a.verify(b.publicKey);
  } catch {
    return false;
  }
}

/** A short human label for a certificate in error messages. */
export function describeCert(cert: X509Certificate): string {
  const subject = cert.subject?.replace(/\n/g, ', ') || '(empty subject)';
  return `"${subject}" serial ${cert.serialNumber.toLowerCase()}`;
}

/** 16 random bytes (128 bits) as hex, first byte non-zero so the DER integer keeps them all. */
export function randomSerial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  if (bytes[0] === 0) bytes[0] = 1;
  return Buffer.from(bytes).toString('hex');
}
